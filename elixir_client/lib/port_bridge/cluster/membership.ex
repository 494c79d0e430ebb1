defmodule PortBridge.Cluster.Membership do
  @moduledoc false
  # A node's membership in a PortBridge.Cluster: joins the cluster's :pg group once the
  # local pool is up (and, when sessions are recorded, has the global scope of the
  # other members), follows the group, and keeps what callers on this node need to
  # route (the cluster's routes table): the epoch (bumped at each change of members),
  # the other members' Workers and clock offsets, their free slots, and the local
  # Python's capacity. Each change of members is told to the node's
  # PortBridge.Cluster.Replication, which moves session records where they now rank.
  #
  # It never waits on another node: what asks one (node info, the global scope) runs in
  # a task.

  use GenServer
  require Logger

  alias PortBridge.{Call, Courier, Error, Pool, Worker}
  alias PortBridge.Cluster.{Ranking, Replication, Rpc}

  @info_timeout 5_000
  @global_timeout 60_000

  def child_spec(cluster),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [cluster]}}

  @doc false
  @spec start_link(map) :: GenServer.on_start()
  def start_link(cluster),
    do: GenServer.start_link(__MODULE__, cluster, name: cluster.membership)

  @doc false
  # What a caller needs to send to `node`'s Workers: known from this member's reports,
  # else asked now (within the call's deadline).
  @spec node_info(map, node, Call.t()) :: {:ok, map} | {:error, Error.t()}
  def node_info(cluster, node, %Call{} = call) do
    case :ets.lookup(cluster.routes, {:node, node}) do
      [{_, info}] ->
        {:ok, info}

      [] ->
        with {:ok, info} <- fetch_info(cluster, node, call) do
          :ets.insert_new(cluster.routes, {{:node, node}, info})
          {:ok, info}
        end
    end
  end

  # The remote member's info, and the offset of its monotonic clock from ours
  # (measured from the middle of the round trip).
  defp fetch_info(cluster, node, call) do
    t0 = now()

    with {:ok, info} <- Rpc.ask(cluster.membership, node, {:info}, call) do
      {:ok, Map.put(info, :offset, info.mono - div(t0 + now(), 2))}
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  ## Server

  @impl true
  def init(cluster) do
    Logger.metadata(portbridge_cluster: cluster.name, portbridge_pool: cluster.pool)

    state = %{
      cluster: cluster,
      pg: nil,
      nodes: [],
      workers: {},
      monitors: %{},
      capacity: cluster.overflow_at,
      free: nil,
      # task ref => what it does
      tasks: %{}
    }

    {:ok, state, {:continue, :start}}
  end

  @impl true
  def handle_continue(:start, %{cluster: cluster} = state) do
    state = watch_workers(state)
    {ref, pids} = watch_group(cluster.name)
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
        budget = Call.budget(@global_timeout)

        {:noreply,
         task(state, :global, fn -> Replication.take_global(cluster, other, budget) end)}

      _ ->
        {:noreply, join(state)}
    end
  end

  # The group's joins and leaves, as :pg.monitor/2 reports them, from a linked
  # process: on OTP 25 a process that both joins a group and monitors it crashes the
  # :pg scope when it exits (its two monitors are mixed up).
  defp watch_group(group) do
    member = self()
    reply = make_ref()

    spawn_link(fn ->
      {ref, pids} = :pg.monitor(Ranking.scope(), group)
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
    :ok = :pg.join(Ranking.scope(), state.cluster.name, self())
    state
  end

  defp nodes_of(pids), do: pids |> Enum.map(&node/1) |> Enum.uniq() |> Enum.sort()

  @impl true
  def handle_info({:ask, from, {:info, _budget}}, state) do
    info = %{size: tuple_size(state.workers), workers: state.workers, mono: now()}
    Rpc.answer(from, {:ok, info})
    {:noreply, state}
  end

  def handle_info({ref, kind, _group, _pids}, %{pg: ref} = state) when kind in [:join, :leave] do
    nodes = Ranking.nodes(state.cluster.name)

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
      Error.new(:internal, "member_task_failed", "#{inspect(what)} failed: #{inspect(reason)}")

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

  # The Python's --max-concurrency: how many requests a local Worker runs at once.
  defp capacity(cluster) do
    with {:ok, ready} <- Worker.await_ready(hd(Pool.workers(cluster.pool)), @global_timeout),
         %{"max_concurrency" => n} when is_integer(n) and n > 0 <- ready["limits"] do
      {:ok, n}
    else
      other -> {:error, other}
    end
  end

  ## Changes of members

  # The members changed from `old` to `new`: callers re-check their sessions, we
  # learn the newcomers, and the node's replication moves records where sessions
  # now rank.
  defp changed(state, old, new) do
    %{cluster: cluster} = state
    :ets.update_counter(cluster.routes, :epoch, 1)
    :ets.delete_all_objects(cluster.ensured)

    for node <- old -- new do
      :ets.delete(cluster.routes, {:node, node})
      :ets.delete(cluster.routes, {:free, node})
    end

    if cluster.records, do: send(cluster.replication, {:members, old, new})
    state = %{state | nodes: new, free: nil}
    Enum.reduce(new -- [node() | old], state, &learn(&2, &1))
  end

  defp learn(state, node) do
    cluster = state.cluster
    budget = Call.budget(@info_timeout)
    task(state, {:info, node}, fn -> fetch_info(cluster, node, budget) end)
  end

  ## Talking to the other members

  defp broadcast(state, message) do
    for node <- state.nodes,
        node != node(),
        do: Courier.deliver({state.cluster.membership, node}, message)

    :ok
  end

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
