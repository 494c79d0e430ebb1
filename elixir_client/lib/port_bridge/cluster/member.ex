defmodule PortBridge.Cluster.Member do
  @moduledoc false
  # A node's member of a PortBridge.Cluster: joins the cluster's :pg group once the
  # local pool is up (and has the global scope), follows the group, and keeps the
  # session records of the node (see the moduledoc of PortBridge.Cluster).
  #
  # It never waits on another node: whatever asks another node (node info, the
  # global scope, snapshots of a session, rebuilding one on the local pool) runs in
  # a task, and answers its callers when the task is done. Callers wait for it
  # within their own deadline (call/4).
  #
  # Records of the node, two PortBridge.Records tables:
  #   primary   the local pool's: the global scope and the sessions this node owns
  #             and has rebuilt or built on its Python (it is "present" here); the
  #             pool replays it on every fresh Python.
  #   replicas  the sessions this node holds for others (it is next in their
  #             ranking), or held before they moved away; never replayed.
  # A session's version grows with each change its owner applies; a copy only ever
  # replaces an older one.

  use GenServer
  require Logger

  alias PortBridge.{Call, Cluster, Courier, Error, Pool, Records, Request, Worker}

  # How long an owner waits for other members' copies of a session it has no record
  # of (within the caller's deadline); a member that does not answer counts as
  # having none.
  @gather_ms 1_000
  @info_timeout 5_000
  @global_timeout 60_000

  def child_spec(cluster),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [cluster]}}

  @doc false
  @spec start_link(map) :: GenServer.on_start()
  def start_link(cluster), do: GenServer.start_link(__MODULE__, cluster, name: cluster.member)

  ## Asking a member (any process, any node)

  @doc false
  # Asks the member on `node`, within the deadline of `opts`: {:ok, value} or
  # {:error, %Error{}} (timeout, or communication when it is not there). Neither
  # side ever blocks on the other (questions and answers go by PortBridge.Courier),
  # and the asker keeps its deadline.
  @spec call(map, node, tuple, Call.t() | keyword) :: term | {:error, Error.t()}
  def call(cluster, node, request, budget_of) do
    {timeout, deadline} = budget(budget_of)
    budget = Request.remaining(deadline)
    dest = {cluster.member, node}
    ref = :erlang.monitor(:process, dest, alias: :demonitor)

    Courier.deliver(dest, {:ask, ref, Tuple.append(request, budget)})

    receive do
      {^ref, answer} ->
        Process.demonitor(ref, [:flush])
        answer

      {:DOWN, ^ref, _, _, reason} ->
        {:error, unreachable(cluster, node, reason)}
    after
      budget ->
        Process.demonitor(ref, [:flush])
        {:error, Request.timeout_error(timeout)}
    end
  end

  # {timeout, deadline} of a call, or of trusted options.
  defp budget(%Call{timeout: timeout, deadline: deadline}), do: {timeout, deadline}
  defp budget(opts) when is_list(opts), do: {opts[:timeout], opts[:deadline]}

  defp unreachable(cluster, node, reason) do
    Error.new(
      :communication,
      "member_unreachable",
      "the member of cluster #{inspect(cluster.name)} on #{node} did not answer: #{inspect(reason)}",
      %{"node" => Atom.to_string(node), "reason" => inspect(reason)}
    )
  end

  defp answer(ref, answer), do: Courier.deliver(ref, {ref, answer})

  @doc false
  # What a caller needs to send to `node`'s Workers: known from the member's reports,
  # else asked now (and the member is told to learn it).
  @spec node_info(map, node, Call.t() | keyword) :: {:ok, map} | {:error, Error.t()}
  def node_info(cluster, node, opts) do
    case :ets.lookup(cluster.routes, {:node, node}) do
      [{_, info}] ->
        {:ok, info}

      [] ->
        with {:ok, info} <- fetch_info(cluster, node, opts) do
          :ets.insert_new(cluster.routes, {{:node, node}, info})
          {:ok, info}
        end
    end
  end

  # The remote member's info, and the offset of its monotonic clock from ours
  # (measured from the middle of the round trip).
  defp fetch_info(cluster, node, opts) do
    t0 = now()

    with {:ok, info} <- call(cluster, node, {:info}, opts) do
      {:ok, Map.put(info, :offset, info.mono - div(t0 + now(), 2))}
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  ## Server

  @impl true
  def init(cluster) do
    state = %{
      cluster: cluster,
      scope: Cluster.scope(),
      pg: nil,
      nodes: [],
      # the members before the last change
      was: [],
      joined: false,
      changed_at: now(),
      workers: {},
      monitors: %{},
      capacity: cluster.overflow_at,
      free: nil,
      # session => %{waiters: [from], ops: [{from, op}]} while a task ensures it
      ensuring: %{},
      # task ref => what it does
      tasks: %{},
      # session => timer of its end on the local Python after it moved away
      drops: %{}
    }

    {:ok, state, {:continue, :start}}
  end

  @impl true
  def handle_continue(:start, state) do
    %{cluster: cluster} = state
    state = watch_workers(state)

    {ref, pids} = watch_group(state.scope, cluster.name)
    nodes = nodes_of(pids)
    state = %{state | pg: ref}

    state =
      if cluster.overflow_at do
        :ets.insert(cluster.routes, {:capacity, cluster.overflow_at})
        state
      else
        task(state, :capacity, fn -> capacity(cluster) end)
      end

    state = changed(state, [], nodes)
    Process.send_after(self(), :gossip, cluster.gossip_interval)

    # The global scope first: sessions without an LM of their own use it.
    case List.delete(nodes, node()) do
      [other | _] when cluster.records != nil ->
        {:noreply, task(state, :global, fn -> take_global(cluster, other) end)}

      _ ->
        {:noreply, join(state)}
    end
  end

  # The group's joins and leaves, as :pg.monitor/2 reports them, from a linked
  # process: on OTP 25 a process that both joins a group and monitors it crashes the
  # :pg scope when it exits (its two monitors are mixed up).
  defp watch_group(scope, group) do
    member = self()
    reply = make_ref()

    spawn_link(fn ->
      {ref, pids} = :pg.monitor(scope, group)
      send(member, {reply, ref, pids})
      forward_group(ref, member, Process.monitor(member))
    end)

    receive do
      {^reply, ref, pids} -> {ref, pids}
    end
  end

  defp forward_group(ref, member, down) do
    receive do
      {^ref, _kind, _group, _pids} = change ->
        send(member, change)
        forward_group(ref, member, down)

      # Gone with the member, however it ended.
      {:DOWN, ^down, _, _, _} ->
        :ok
    end
  end

  defp join(state) do
    :ok = :pg.join(state.scope, state.cluster.name, self())
    %{state | joined: true}
  end

  defp nodes_of(pids), do: pids |> Enum.map(&node/1) |> Enum.uniq() |> Enum.sort()

  # Questions from call/4: answered at once ({:reply, ...}) or when a task is done.
  defp ask({:info, _budget}, _from, state) do
    {:reply, {:ok, %{size: tuple_size(state.workers), workers: state.workers, mono: now()}},
     state}
  end

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
    if cluster.records, do: Records.change(cluster.records, nil, op)
    workers = Pool.workers(cluster.pool)
    workers = if ran_locally, do: tl(workers), else: workers

    case Records.step(op) do
      nil ->
        {:reply, {:ok, :recorded}, state}

      step ->
        # Answered by the task, once every Worker has it.
        Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
          Records.replicate(workers, [step], timeout: budget, deadline: Request.deadline(budget))
          answer(from, {:ok, :recorded})
        end)

        {:noreply, state}
    end
  end

  @impl true
  def handle_info({:ask, from, request}, state) do
    case ask(request, from, state) do
      {:reply, answer, state} ->
        answer(from, answer)
        {:noreply, state}

      {:noreply, state} ->
        {:noreply, state}
    end
  end

  def handle_info({ref, kind, _group, _pids}, %{pg: ref} = state) when kind in [:join, :leave] do
    nodes = Cluster.nodes(state.cluster)

    if nodes == state.nodes,
      do: {:noreply, state},
      else: {:noreply, changed(state, state.nodes, nodes)}
  end

  def handle_info({ref, result}, state) when is_map_key(state.tasks, ref) do
    Process.demonitor(ref, [:flush])
    {what, tasks} = Map.pop(state.tasks, ref)
    {:noreply, done(%{state | tasks: tasks}, what, result)}
  end

  def handle_info({:DOWN, ref, :process, _, reason}, state) when is_map_key(state.tasks, ref) do
    {what, tasks} = Map.pop(state.tasks, ref)

    error =
      Error.new(
        :internal,
        "member_task_failed",
        "#{inspect(elem(what, 0))} failed: #{inspect(reason)}"
      )

    {:noreply, done(%{state | tasks: tasks}, what, {:error, error})}
  end

  def handle_info({:DOWN, ref, :process, _, _}, state) when is_map_key(state.monitors, ref) do
    {index, monitors} = Map.pop(state.monitors, ref)
    Process.send_after(self(), :workers, 50)
    {:noreply, %{state | monitors: monitors, workers: put_elem(state.workers, index, nil)}}
  end

  def handle_info(:workers, state) do
    old = state.workers
    state = watch_workers(state)

    if Enum.any?(Tuple.to_list(state.workers), &is_nil/1),
      do: Process.send_after(self(), :workers, 50)

    if state.workers != old, do: broadcast(state, {:changed, node()})
    {:noreply, state}
  end

  def handle_info({:changed, node}, state) do
    if node in state.nodes, do: {:noreply, learn(state, node)}, else: {:noreply, state}
  end

  def handle_info({:load, node, slots}, state) do
    if node in state.nodes,
      do:
        :ets.insert(state.cluster.routes, {{:free, node}, Enum.sum(Tuple.to_list(slots)), slots})

    {:noreply, state}
  end

  def handle_info(:gossip, state) do
    Process.send_after(self(), :gossip, state.cluster.gossip_interval)
    {:noreply, gossip(state)}
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

    if present?(state, session_id) or Map.has_key?(state.ensuring, session_id) do
      {:noreply, state}
    else
      pool = state.cluster.pool

      Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
        Pool.request(pool, "end_session", %{"session_id" => session_id},
          session_id: session_id,
          timeout: 10_000
        )
      end)

      {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Tasks

  defp task(state, what, fun) do
    %Task{ref: ref} = Task.Supervisor.async_nolink(PortBridge.TaskSupervisor, fun)
    %{state | tasks: Map.put(state.tasks, ref, what)}
  end

  defp done(state, :capacity, {:ok, capacity}) do
    :ets.insert(state.cluster.routes, {:capacity, capacity})
    %{state | capacity: capacity}
  end

  defp done(state, :capacity, _failed), do: state

  defp done(state, :global, result) do
    with {:error, error} <- result do
      Logger.warning(
        "portbridge: cluster #{inspect(state.cluster.name)}: joining without the global scope " <>
          "of the other members: #{Exception.message(error)}"
      )
    end

    join(state)
  end

  defp done(state, {:info, node}, {:ok, info}) do
    if node in state.nodes, do: :ets.insert(state.cluster.routes, {{:node, node}, info})
    state
  end

  defp done(state, {:info, _node}, _failed), do: state

  defp done(state, {:ensure, session_id}, result), do: ensured(state, session_id, result)

  # The Python's --max-concurrency: how many requests a local Worker runs at once.
  defp capacity(cluster) do
    with {:ok, ready} <- Worker.await_ready(hd(Pool.workers(cluster.pool)), @global_timeout),
         %{"max_concurrency" => n} when is_integer(n) and n > 0 <- ready["limits"] do
      {:ok, n}
    else
      other -> {:error, other}
    end
  end

  # The global scope of a member, recorded here and sent to every local Worker.
  defp take_global(cluster, node) do
    opts = [timeout: @global_timeout, deadline: Request.deadline(@global_timeout)]

    with {:ok, rows} <- call(cluster, node, {:global_rows}, opts) do
      Records.install(cluster.records, nil, 0, rows)
      Records.replicate(Pool.workers(cluster.pool), Records.steps_of(rows), opts)
      {:ok, length(rows)}
    end
  end

  ## Membership

  # The members changed from `old` to `new`: callers re-check their sessions, we
  # learn the newcomers, and the records move where the sessions now rank.
  defp changed(state, old, new) do
    %{cluster: cluster} = state
    :ets.update_counter(cluster.routes, :epoch, 1)
    :ets.delete_all_objects(cluster.ensured)

    for node <- old -- new do
      :ets.delete(cluster.routes, {:node, node})
      :ets.delete(cluster.routes, {:free, node})
    end

    state = %{state | nodes: new, was: old, changed_at: now(), free: nil}
    state = Enum.reduce(new -- [node() | old], state, &learn(&2, &1))

    if cluster.records && node() in new, do: reconcile(state, old, new), else: state
  end

  defp learn(state, node) do
    cluster = state.cluster
    opts = [timeout: @info_timeout, deadline: Request.deadline(@info_timeout)]
    task(state, {:info, node}, fn -> fetch_info(cluster, node, opts) end)
  end

  # For every session this node knows: the nodes that now rank first for it get
  # this node's copy (a node only keeps the newest), a session it no longer owns
  # moves out, and a copy this node should no longer hold goes.
  defp reconcile(state, old, new) do
    %{cluster: cluster} = state
    held = Records.sessions(cluster.records) ++ Records.sessions(cluster.replica_table)

    held
    |> Enum.uniq()
    |> Enum.reject(&Map.has_key?(state.ensuring, &1))
    |> Enum.reduce(state, fn session_id, state ->
      now_top = Cluster.top(session_id, new, cluster.replicas)
      was_top = Cluster.top(session_id, old, cluster.replicas)
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
    # Right after a change of members that moved the session here, a copy may
    # still be on its way (or only elsewhere): ask the others. Otherwise what this
    # node has is all there is.
    others =
      if now() - state.changed_at < cluster.settle and
           Cluster.owner_of(session_id, state.was) != node(),
         do: List.delete(state.nodes, node()),
         else: []

    state =
      task(state, {:ensure, session_id}, fn ->
        rebuild(cluster, session_id, local, others, force, budget)
      end)

    ensuring = if op, do: %{waiters: [], ops: [{from, op}]}, else: %{waiters: [from], ops: []}

    %{state | ensuring: Map.put(state.ensuring, session_id, ensuring)}
  end

  # In a task: the newest copy of the session (ours, or another member's), sent to
  # its Worker in the local pool after ending what that Python had of it.
  defp rebuild(cluster, session_id, local, others, force, budget) do
    deadline = Request.deadline(budget)
    opts = [timeout: budget, deadline: deadline]
    gather = min_timeout(@gather_ms, Request.remaining(deadline))

    copies =
      others
      |> Enum.map(fn node ->
        Task.async(fn ->
          call(cluster, node, {:snapshot, session_id}, deadline: Request.deadline(gather))
        end)
      end)
      |> Task.await_many(:infinity)
      |> Enum.flat_map(fn
        {:ok, {_version, _rows} = copy} -> [copy]
        _none_or_error -> []
      end)

    case Enum.max_by([local | copies] |> Enum.reject(&is_nil/1), &elem(&1, 0), fn -> nil end) do
      nil ->
        {:ok, :none}

      {version, rows} ->
        unless force do
          Call.run(
            Call.new(
              cluster.pool,
              "end_session",
              %{"session_id" => session_id},
              [session_id: session_id] ++ opts
            )
          )
        end

        with :ok <- Records.rebuild(cluster.pool, session_id, Records.steps_of(rows), opts),
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
        for from <- waiters, do: answer(from, {:ok, answer})
        for {from, op} <- ops, do: answer(from, {:ok, apply_op(state, session_id, op)})
        state

      {:error, _} = error ->
        for from <- waiters, do: answer(from, error)
        for {from, _op} <- ops, do: answer(from, error)
        state
    end
  end

  ## Changes to a session's records (at its owner)

  defp apply_op(state, session_id, :delete_scope) do
    Records.forget(state.cluster.records, session_id)
    broadcast(state, {:forget, session_id})
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
        to = Cluster.top(session_id, state.nodes, state.cluster.replicas)
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

  ## Talking to the other members

  defp push(state, nodes, message) do
    for node <- nodes, node != node(), do: send_member(state, node, message)
    :ok
  end

  defp broadcast(state, message), do: push(state, state.nodes, message)

  # Never blocks this process, whatever the connection to the other member does.
  defp send_member(state, node, message),
    do: Courier.deliver({state.cluster.member, node}, message)

  # Free slots per local Worker, to the other members, when they changed.
  defp gossip(%{capacity: nil} = state), do: state

  defp gossip(state) do
    case Pool.lookup(state.cluster.pool) do
      {:ok, pool} ->
        slots =
          List.to_tuple(
            for i <- 1..pool.size, do: max(state.capacity - :atomics.get(pool.load, i), 0)
          )

        if slots != state.free, do: broadcast(state, {:load, node(), slots})
        %{state | free: slots}

      :error ->
        state
    end
  end

  # The local Workers' pids, monitored; nil for one that is restarting.
  defp watch_workers(state) do
    names = Pool.workers(state.cluster.pool)

    old =
      if tuple_size(state.workers) == length(names),
        do: state.workers,
        else: List.to_tuple(Enum.map(names, fn _ -> nil end))

    {workers, monitors} =
      names
      |> Enum.with_index()
      |> Enum.map_reduce(state.monitors, fn {name, index}, monitors ->
        case elem(old, index) do
          pid when is_pid(pid) ->
            {pid, monitors}

          nil ->
            case Process.whereis(name) do
              nil -> {nil, monitors}
              pid -> {pid, Map.put(monitors, Process.monitor(pid), index)}
            end
        end
      end)

    %{state | workers: List.to_tuple(workers), monitors: monitors}
  end
end
