defmodule PortBridge.ClusterTest do
  # PortBridge.Cluster across real BEAM nodes on this machine (OTP's :peer), each
  # with its own Python workers (core commands only: no DSPy import). The test node
  # is a member too.
  use PortBridge.TestCase, async: true

  import PortBridge.ClusterCase
  alias PortBridge.{Cluster, Request}

  if reason = skip_reason(:cluster), do: @moduletag(skip: reason)

  @moduletag timeout: 120_000

  # Two peers shared by the tests that do not stop or kill a node; each test runs
  # its own cluster (its own name, pools and :pg group) on them.
  setup_all do
    peers = for _ <- 1..2, do: start_peer("cl")
    on_exit(fn -> Enum.each(peers, fn {peer, _} -> stop_peer(peer) end) end)
    %{peers: Enum.map(peers, &elem(&1, 1))}
  end

  defp cluster_name, do: :"cluster_#{System.unique_integer([:positive])}"

  # The cluster on this node (supervised by the test) and on each of `nodes`.
  defp start_cluster_on(nodes, name, opts) do
    opts = [name: name] ++ opts
    start_supervised!({Cluster, opts}, id: name)

    connect_all([node() | nodes])

    for node <- nodes do
      sup = start_cluster(node, opts)
      on_exit(fn -> stop_on(node, sup) end)
    end

    await_members([node() | nodes], name, [node() | nodes])
    name
  end

  defp stop_on(node, sup) do
    :erpc.call(node, Supervisor, :stop, [sup])
  catch
    _, _ -> :ok
  end

  defp pool_opts(extra \\ []), do: [pool: worker_opts(Keyword.merge([size: 1], extra))]

  defp ping_from(node, name, opts), do: request_on(node, name, "ping", %{}, opts)

  defp sessions(n), do: for(i <- 1..n, do: "user-#{i}")

  test "every node sends a session to the same node and the same Python", %{peers: peers} do
    name = start_cluster_on(peers, cluster_name(), pool_opts(size: 2))
    nodes = [node() | peers]
    pythons = Map.new(nodes, &{&1, python_pids(&1, name)})
    atoms = fn -> Enum.map(peers, &:erpc.call(&1, :erlang, :system_info, [:atom_count])) end
    atoms_before = atoms.()

    for session <- sessions(60) do
      owner = Cluster.owner(name, session)
      assert Enum.all?(peers, &(:erpc.call(&1, Cluster, :owner, [name, session]) == owner))

      served_by =
        for node <- nodes do
          {:ok, %{"pid" => pid}} = ping_from(node, name, session_id: session)
          pid
        end

      assert [pid] = Enum.uniq(served_by)
      assert pid in pythons[owner], "#{session} was served by #{pid}, not by #{owner}'s Pythons"
    end

    # Routing makes no atom of a session id (nor of anything else from other nodes).
    for {before, now} <- Enum.zip(atoms_before, atoms.()), do: assert(now - before < 20)

    # Rendezvous hashing spreads the sessions over every member.
    assert sessions(60) |> Enum.map(&Cluster.owner(name, &1)) |> Enum.uniq() |> Enum.sort() ==
             Enum.sort(nodes)
  end

  test "the one deadline holds on another node's Worker", %{peers: [peer | _]} do
    name = start_cluster_on([peer], cluster_name(), pool_opts())
    session = Enum.find(sessions(50), &(Cluster.owner(name, &1) == peer))

    # The remote Worker keeps the deadline on its own clock: a 300 ms request with a
    # 2 s budget completes there (a deadline misread across clocks fails it at once
    # or never), and a 30 s one with a 400 ms budget ends at the caller's deadline.
    assert {:ok, %{"slept_ms" => _}} =
             within(1_500, fn ->
               PortBridge.request(name, "sleep", %{ms: 300}, session_id: session, timeout: 2_000)
             end)

    assert {:error, %Error{category: :timeout}} =
             within(900, fn ->
               PortBridge.request(name, "sleep", %{ms: 30_000}, session_id: session, timeout: 400)
             end)

    # Events and replies of an async request come straight from the remote Worker.
    %Request{} = request = PortBridge.async_request(name, "emit", %{n: 3}, session_id: session)

    assert {:ok, _} = PortBridge.await(request, &send(self(), {:event, &1}))
    assert_received {:event, {_, _}}
  end

  test "callbacks run on the node that serves the request, the caller's session callbacks too",
       %{peers: [peer | _]} do
    stand_in = [executable: python(), args: [stand_in("callback_peer.py")]]
    name = start_cluster_on([peer], cluster_name(), pool: [size: 1] ++ stand_in)
    session = Enum.find(sessions(50), &(Cluster.owner(name, &1) == peer))
    # Functions of a module every node has: the test module's own exist only here.
    PortBridge.Callbacks.register(session, %{"registered" => &node_name/1})
    on_exit(fn -> PortBridge.Callbacks.unregister(session) end)

    assert {:ok, [%{"result" => registered}, %{"result" => own}]} =
             PortBridge.request(
               name,
               "ask",
               %{calls: [%{name: "registered"}, %{name: "own"}]},
               session_id: session,
               callbacks: %{"own" => &node_name/1}
             )

    assert {registered, own} == {Atom.to_string(peer), Atom.to_string(peer)}
  end

  test "requests without a session stay on the caller's node until its pool is saturated",
       %{peers: [peer | _]} do
    name = start_cluster_on([peer], cluster_name(), pool_opts() ++ [overflow_at: 2])
    [local] = python_pids(node(), name)
    [remote] = python_pids(peer, name)

    for _ <- 1..20, do: assert(ping_pid(name) == local)

    # Two requests in flight fill the local Worker (overflow_at: 2).
    busy = for _ <- 1..2, do: PortBridge.async_request(name, "sleep", %{ms: 5_000})
    {:ok, cluster} = Cluster.lookup(name)
    wait_until(fn -> match?([%{in_flight: 2}], PortBridge.Pool.info(cluster.pool)) end)
    wait_until(fn -> :ets.member(cluster.routes, {:free, peer}) end)
    assert ping_pid(name) == remote

    Enum.each(busy, &PortBridge.cancel/1)
    wait_until(fn -> ping_pid(name) == local end)
  end

  test "a joining node takes only the sessions it now owns; when it leaves they come back",
       %{peers: [peer | _]} do
    name = start_cluster_on([peer], cluster_name(), pool_opts())
    before = Map.new(sessions(60), &{&1, ping_pid(name, session_id: &1)})

    {joiner_peer, joiner} = start_peer("join")
    connect_all([node(), peer, joiner])
    start_cluster(joiner, [name: name] ++ pool_opts())
    await_members([node(), peer, joiner], name, [node(), peer, joiner])
    [joiner_python] = python_pids(joiner, name)

    moved =
      for session <- sessions(60),
          ping_pid(name, session_id: session) != before[session],
          do: session

    assert moved == Enum.filter(sessions(60), &(Cluster.owner(name, &1) == joiner))
    assert length(moved) in 5..35
    for session <- moved, do: assert(ping_pid(name, session_id: session) == joiner_python)

    stop_peer(joiner_peer)
    await_members([node(), peer], name, [node(), peer])
    assert_os_pid_exited(joiner_python)

    for session <- sessions(60),
        do: assert(ping_pid(name, session_id: session) == before[session])
  end

  test "a node killed under load: every caller gets its result or a categorised error in time" do
    {killed_peer, killed} = start_peer("kill")
    {other_peer, other} = start_peer("kill")
    on_exit(fn -> Enum.each([killed_peer, other_peer], &stop_peer/1) end)

    name = start_cluster_on([killed, other], cluster_name(), pool_opts())
    killed_pythons = python_pids(killed, name)
    killed_os_pid = os_pid(killed)
    timeout = 1_500
    stop_at = System.monotonic_time(:millisecond) + 2_500

    callers =
      for session <- sessions(24) do
        Task.async(fn -> load(name, session, timeout, stop_at, []) end)
      end

    # Let the load run, then kill the node's BEAM outright.
    Process.sleep(700)
    kill9(killed_os_pid)
    outcomes = callers |> Task.await_many(30_000) |> List.flatten()

    categories = PortBridge.Error.categories()

    for {elapsed, result} <- outcomes do
      assert elapsed <= timeout + 300, "a caller waited #{elapsed} ms (timeout #{timeout})"

      case result do
        {:ok, _} -> :ok
        {:error, %Error{category: category}} -> assert category in categories
      end
    end

    by = Enum.frequencies_by(outcomes, fn {_, r} -> elem(r, 0) end)
    assert by[:ok] > 0
    # The requests in flight on the killed node got communication errors.
    assert Enum.any?(outcomes, &match?({_, {:error, %Error{category: :communication}}}, &1))

    # No Python outlives its node.
    for os_pid <- killed_pythons, do: assert_os_pid_exited(os_pid, 10_000)

    # Once the members know, every session is served again, by the survivors.
    await_members([node(), other], name, [node(), other])

    for session <- sessions(24) do
      assert {:ok, _} = PortBridge.request(name, "ping", %{}, session_id: session, retry: true)
    end
  end

  # Requests one after another until `stop_at`: [{elapsed_ms, result}].
  defp load(name, session, timeout, stop_at, acc) do
    if System.monotonic_time(:millisecond) >= stop_at do
      acc
    else
      t0 = System.monotonic_time(:millisecond)

      result = PortBridge.request(name, "sleep", %{ms: 50}, session_id: session, timeout: timeout)

      load(name, session, timeout, stop_at, [
        {System.monotonic_time(:millisecond) - t0, result} | acc
      ])
    end
  end

  test "a suspended node cannot hold callers past their timeout" do
    {peer, stopped} = start_peer("stop")
    on_exit(fn -> stop_peer(peer) end)
    name = start_cluster_on([stopped], cluster_name(), pool_opts())

    [checked, fresh] =
      sessions(80) |> Enum.filter(&(Cluster.owner(name, &1) == stopped)) |> Enum.take(2)

    assert {:ok, _} = PortBridge.request(name, "ping", %{}, session_id: checked)

    while_stopped(stopped, fn ->
      # A session already checked with its owner (the request itself waits), and one
      # not checked yet (asking the owner waits): both end at the caller's deadline.
      for session <- [checked, fresh] do
        assert {:error, %Error{category: :timeout}} =
                 within(1_000, fn ->
                   PortBridge.request(name, "ping", %{}, session_id: session, timeout: 400)
                 end)
      end

      # Requests without a session never leave this node.
      assert {:ok, _} =
               within(1_000, fn -> PortBridge.request(name, "ping", %{}, timeout: 400) end)

      # Large requests fill the connection to the stalled node: sending them, and
      # the cancel and demonitor at each deadline, must not block the caller.
      big = String.duplicate("x", 400_000)

      for _ <- 1..12 do
        assert {:error, %Error{category: :timeout}} =
                 within(1_000, fn ->
                   PortBridge.request(name, "echo", %{data: big},
                     session_id: checked,
                     timeout: 300
                   )
                 end)
      end
    end)
  end

  test "a Worker whose replies to a stalled node fill the connection keeps serving the others" do
    {peer, stalled} = start_peer("stall")
    on_exit(fn -> stop_peer(peer) end)
    name = start_cluster_on([stalled], cluster_name(), pool_opts())

    [ours, other] =
      sessions(80) |> Enum.filter(&(Cluster.owner(name, &1) == node())) |> Enum.take(2)

    # From the other node, to our Worker: a slow request, then large echoes queued
    # behind it in the same session; their replies come once that node is stalled.
    big = String.duplicate("x", 400_000)
    echoes = for _ <- 1..12, do: {"echo", %{data: big}, [session_id: other, timeout: 60_000]}

    send_from(stalled, name, [
      {"sleep", %{ms: 500}, [session_id: other, timeout: 60_000]} | echoes
    ])

    {:ok, cluster} = Cluster.lookup(name)
    wait_until(fn -> match?([%{in_flight: 13}], PortBridge.Pool.info(cluster.pool)) end)

    while_stopped(stalled, fn ->
      stop_at = System.monotonic_time(:millisecond) + 2_000

      Stream.repeatedly(fn ->
        assert {:ok, _} =
                 within(500, fn -> PortBridge.request(name, "ping", %{}, session_id: ours) end)
      end)
      |> Stream.take_while(fn _ -> System.monotonic_time(:millisecond) < stop_at end)
      |> Stream.run()

      # The echoes were answered (their replies wait in the courier for that node).
      assert [%{in_flight: 0}] = PortBridge.Pool.info(cluster.pool)
    end)
  end
end
