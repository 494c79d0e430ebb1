defmodule PortBridge.Cluster.Replication do
  @moduledoc false
  # Where a PortBridge.Cluster's session records live, on one node: this process keeps
  # the node's copies current and rebuilds a session on the local pool when the session
  # comes to this node (see the moduledoc of PortBridge.Cluster).
  #
  # Records of the node, two PortBridge.Records tables:
  #   primary   the local pool's: the global scope and the sessions this node owns and
  #             has rebuilt or built on its Python (it is "present" here); the pool
  #             replays it on every fresh Python.
  #   replicas  the sessions this node holds for others (it is next in their ranking),
  #             or held before they moved away; never replayed.
  # A session's version grows with each change its owner applies; a copy only ever
  # replaces an older one.
  #
  # It never waits on another node: what asks one (snapshots of a session, rebuilding
  # one on the local pool) runs in a task, which answers the callers when done.
  # PortBridge.Cluster.Membership tells it each change of members.

  use GenServer
  require Logger

  alias PortBridge.{Call, Courier, Error, Journal, Pool, Records}
  alias PortBridge.Cluster.{Ranking, Rpc}

  # How long an owner waits for other members' copies of a session it has no record
  # of (within the caller's deadline); a member that does not answer counts as having
  # none.
  @gather_ms 1_000

  def child_spec(cluster),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [cluster]}}

  @doc false
  @spec start_link(map) :: GenServer.on_start()
  def start_link(cluster),
    do: GenServer.start_link(__MODULE__, cluster, name: cluster.replication)

  @doc false
  # The global scope of the member on `node`, recorded here and sent to every local
  # Worker (a node joining takes it before it joins).
  @spec take_global(map, node, Call.t()) :: {:ok, non_neg_integer} | {:error, Error.t()}
  def take_global(cluster, node, %Call{} = budget) do
    with {:ok, rows} <- Rpc.ask(cluster.replication, node, {:global_rows}, budget) do
      Records.install(cluster.records, nil, 0, rows)
      Journal.replicate(Pool.workers(cluster.pool), Records.steps_of(rows), budget)
      {:ok, length(rows)}
    end
  end

  ## Server

  @impl true
  def init(cluster) do
    Logger.metadata(portbridge_cluster: cluster.name, portbridge_pool: cluster.pool)

    state = %{
      cluster: cluster,
      nodes: [],
      # the members before the last change
      was: [],
      changed_at: now(),
      # session => %{waiters: [from], ops: [{from, op}]} while a task ensures it
      ensuring: %{},
      # task ref => session
      tasks: %{},
      # session => timer of its end on the local Python after it moved away
      drops: %{}
    }

    {:ok, state}
  end

  defp now, do: System.monotonic_time(:millisecond)

  # Questions (Rpc): answered at once ({:reply, ...}) or when a task is done.
  defp ask({:ensure, session_id, force, budget}, from, state) do
    cond do
      Map.has_key?(state.ensuring, session_id) ->
        {:noreply, wait_ensure(state, session_id, from, nil)}

      not force and present?(state, session_id) ->
        {:reply, {:ok, :present}, state}

      true ->
        {:noreply, start_ensure(state, session_id, force, budget, from, nil)}
    end
  end

  defp ask({:record, session_id, op, budget}, from, state) do
    cond do
      Map.has_key?(state.ensuring, session_id) ->
        {:noreply, wait_ensure(state, session_id, from, op)}

      present?(state, session_id) ->
        {:reply, {:ok, apply_op(state, session_id, op)}, state}

      true ->
        {:noreply, start_ensure(state, session_id, false, budget, from, op)}
    end
  end

  defp ask({:snapshot, session_id, _budget}, _from, state),
    do: {:reply, {:ok, local_snapshot(state, session_id)}, state}

  defp ask({:global_rows, _budget}, _from, state),
    do: {:reply, {:ok, Records.rows(state.cluster.records, nil)}, state}

  defp ask({:global, op, ran_locally, budget}, from, state) do
    %{cluster: cluster} = state
    Records.change(cluster.records, nil, op)
    workers = Pool.workers(cluster.pool)
    workers = if ran_locally, do: tl(workers), else: workers

    case Journal.step(op) do
      nil ->
        {:reply, {:ok, :recorded}, state}

      step ->
        # Answered by the task, once every Worker has it.
        Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
          Journal.replicate(workers, [step], Call.budget(budget))
          Rpc.answer(from, {:ok, :recorded})
        end)

        {:noreply, state}
    end
  end

  @impl true
  def handle_info({:ask, from, request}, state) do
    case ask(request, from, state) do
      {:reply, answer, state} ->
        Rpc.answer(from, answer)
        {:noreply, state}

      {:noreply, state} ->
        {:noreply, state}
    end
  end

  def handle_info({:members, old, new}, state) do
    state = %{state | nodes: new, was: old, changed_at: now()}
    if node() in new, do: {:noreply, reconcile(state, old, new)}, else: {:noreply, state}
  end

  def handle_info({ref, result}, state) when is_map_key(state.tasks, ref) do
    Process.demonitor(ref, [:flush])
    {session_id, tasks} = Map.pop(state.tasks, ref)
    {:noreply, ensured(%{state | tasks: tasks}, session_id, result)}
  end

  def handle_info({:DOWN, ref, :process, _, reason}, state) when is_map_key(state.tasks, ref) do
    {session_id, tasks} = Map.pop(state.tasks, ref)

    error =
      Error.new(
        :internal,
        "member_task_failed",
        "rebuilding session #{inspect(session_id)} failed: #{inspect(reason)}"
      )

    {:noreply, ensured(%{state | tasks: tasks}, session_id, {:error, error})}
  end

  def handle_info({:replica, session_id, version, rows}, state) do
    %{cluster: cluster} = state

    if present?(state, session_id) do
      if version > Records.version(cluster.records, session_id) do
        Logger.warning(
          "portbridge: cluster #{inspect(cluster.name)}: a newer copy of session #{inspect(session_id)} " <>
            "came from another node while this one serves it; keeping this node's"
        )
      end
    else
      if version > Records.version(cluster.replica_table, session_id),
        do: Records.install(cluster.replica_table, session_id, version, rows)
    end

    {:noreply, state}
  end

  def handle_info({:forget, session_id}, state) do
    Records.forget(state.cluster.replica_table, session_id)

    unless present?(state, session_id),
      do: Records.forget(state.cluster.records, session_id)

    {:noreply, state}
  end

  def handle_info({:drop, session_id}, state) do
    {_, drops} = Map.pop(state.drops, session_id)
    state = %{state | drops: drops}

    unless present?(state, session_id) or Map.has_key?(state.ensuring, session_id) do
      pool = state.cluster.pool

      Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
        Pool.request(pool, "end_session", %{"session_id" => session_id},
          session_id: session_id,
          timeout: 10_000
        )
      end)
    end

    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Members changed

  # For every session this node knows: the nodes that now rank first for it get this
  # node's copy (a node only keeps the newest), a session it no longer owns moves out,
  # and a copy this node should no longer hold goes.
  defp reconcile(state, old, new) do
    %{cluster: cluster} = state
    held = Records.sessions(cluster.records) ++ Records.sessions(cluster.replica_table)

    held
    |> Enum.uniq()
    |> Enum.reject(&Map.has_key?(state.ensuring, &1))
    |> Enum.reduce(state, fn session_id, state ->
      now_top = Ranking.top(session_id, new, cluster.replicas)
      was_top = Ranking.top(session_id, old, cluster.replicas)
      snapshot = local_snapshot(state, session_id)
      keep = node() in now_top
      to = if keep, do: now_top -- was_top, else: now_top
      if snapshot, do: push(state, to, replica(session_id, snapshot))

      state =
        if hd(now_top) != node() and present?(state, session_id),
          do: move_out(state, session_id),
          else: state

      unless keep do
        Records.forget(cluster.replica_table, session_id)
        Records.forget(cluster.records, session_id)
      end

      state
    end)
  end

  # The session is owned elsewhere now: its records become a copy, and its state on
  # the local Python ends after :drop_after (requests in flight there finish).
  defp move_out(state, session_id) do
    %{cluster: cluster} = state

    case Records.snapshot(cluster.records, session_id) do
      {version, rows} ->
        Records.install(cluster.replica_table, session_id, version, rows)
        Records.forget(cluster.records, session_id)

      nil ->
        :ok
    end

    timer = Process.send_after(self(), {:drop, session_id}, cluster.drop_after)
    %{state | drops: Map.put(state.drops, session_id, timer)}
  end

  ## Ensuring a session is here

  defp wait_ensure(state, session_id, from, op) do
    update_in(state.ensuring[session_id], fn ensuring ->
      if op,
        do: %{ensuring | ops: ensuring.ops ++ [{from, op}]},
        else: %{ensuring | waiters: [from | ensuring.waiters]}
    end)
  end

  defp start_ensure(state, session_id, force, budget, from, op) do
    %{cluster: cluster} = state
    local = local_snapshot(state, session_id)
    # Right after a change of members that moved the session here, a copy may still
    # be on its way (or only elsewhere): ask the others. Otherwise what this node has
    # is all there is.
    others =
      if now() - state.changed_at < cluster.settle and
           Ranking.owner_of(session_id, state.was) != node(),
         do: List.delete(state.nodes, node()),
         else: []

    %Task{ref: ref} =
      Task.Supervisor.async_nolink(PortBridge.TaskSupervisor, fn ->
        rebuild(cluster, session_id, local, others, force, Call.budget(budget))
      end)

    ensuring = if op, do: %{waiters: [], ops: [{from, op}]}, else: %{waiters: [from], ops: []}

    %{
      state
      | ensuring: Map.put(state.ensuring, session_id, ensuring),
        tasks: Map.put(state.tasks, ref, session_id)
    }
  end

  # In a task: the newest copy of the session (ours, or another member's), sent to its
  # Worker in the local pool after ending what that Python had of it.
  defp rebuild(cluster, session_id, local, others, force, budget) do
    gather = Call.budget(min_timeout(@gather_ms, Call.remaining(budget)))

    copies =
      others
      |> Enum.map(fn node ->
        Task.async(fn -> Rpc.ask(cluster.replication, node, {:snapshot, session_id}, gather) end)
      end)
      |> Task.await_many(:infinity)
      |> Enum.flat_map(fn
        {:ok, {_version, _rows} = copy} -> [copy]
        _none_or_error -> []
      end)

    case Enum.max_by(Enum.reject([local | copies], &is_nil/1), &elem(&1, 0), fn -> nil end) do
      nil ->
        {:ok, :none}

      {version, rows} ->
        unless force do
          opts = [session_id: session_id, timeout: budget.timeout, deadline: budget.deadline]
          Call.run(Call.new(cluster.pool, "end_session", %{"session_id" => session_id}, opts))
        end

        with :ok <- Journal.resend(cluster.pool, session_id, Records.steps_of(rows), budget),
             do: {:ok, {:rebuilt, version, rows}}
    end
  end

  defp min_timeout(a, :infinity), do: a
  defp min_timeout(a, b), do: min(a, b)

  defp ensured(state, session_id, result) do
    %{cluster: cluster} = state
    {%{waiters: waiters, ops: ops}, ensuring} = Map.pop(state.ensuring, session_id)
    state = %{state | ensuring: ensuring}

    case result do
      {:ok, outcome} ->
        answer =
          case outcome do
            {:rebuilt, version, rows} ->
              Records.install(cluster.records, session_id, max(version, 1), rows)
              Records.forget(cluster.replica_table, session_id)
              :rebuilt

            :none ->
              :none
          end

        {timer, drops} = Map.pop(state.drops, session_id)
        if timer, do: Process.cancel_timer(timer)
        state = %{state | drops: drops}
        # The copies this node's ranking asks for (a move may have left one short).
        if answer == :rebuilt, do: push_session(state, session_id)
        for from <- waiters, do: Rpc.answer(from, {:ok, answer})
        for {from, op} <- ops, do: Rpc.answer(from, {:ok, apply_op(state, session_id, op)})
        state

      {:error, _} = error ->
        for from <- waiters, do: Rpc.answer(from, error)
        for {from, _op} <- ops, do: Rpc.answer(from, error)
        state
    end
  end

  ## Changes to a session's records (at its owner)

  defp apply_op(state, session_id, :delete_scope) do
    Records.forget(state.cluster.records, session_id)
    push(state, state.nodes, {:forget, session_id})
    :forgotten
  end

  defp apply_op(state, session_id, op) do
    table = state.cluster.records
    Records.change(table, session_id, op)
    version = Records.version(table, session_id) + 1
    Records.set_version(table, session_id, version)
    push_session(state, session_id)
    version
  end

  defp push_session(state, session_id) do
    case Records.snapshot(state.cluster.records, session_id) do
      nil ->
        :ok

      snapshot ->
        to = Ranking.top(session_id, state.nodes, state.cluster.replicas)
        push(state, to, replica(session_id, snapshot))
    end
  end

  # A session is present on this node when its primary records have it: this node
  # rebuilt it (or built it) on its Python, and replays it on every fresh one.
  # Sessions without records are never present: asking for one costs a lookup.
  defp present?(state, session_id), do: Records.version(state.cluster.records, session_id) > 0

  defp replica(session_id, {version, rows}), do: {:replica, session_id, version, rows}

  defp local_snapshot(state, session_id) do
    Records.snapshot(state.cluster.records, session_id) ||
      Records.snapshot(state.cluster.replica_table, session_id)
  end

  # Never blocks this process, whatever the connection to the other member does.
  defp push(state, nodes, message) do
    for node <- nodes,
        node != node(),
        do: Courier.deliver({state.cluster.replication, node}, message)

    :ok
  end
end
