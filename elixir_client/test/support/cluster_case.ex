defmodule PortBridge.ClusterCase do
  @moduledoc """
  Real BEAM nodes on this machine for the cluster suites: distribution for the test
  node itself (epmd and the node both on 127.0.0.1), and peers started with OTP's
  `:peer`, each running the code of this build and its own Python workers.
  """

  import ExUnit.Assertions

  @loopback ~c"{127,0,0,1}"

  @doc """
  Makes this node distributed, once: nil when it is (or already was), else why it
  cannot be (the cluster suites are then skipped with that reason).
  """
  def start_distribution do
    if Node.alive?() do
      nil
    else
      System.put_env("ERL_EPMD_ADDRESS", "127.0.0.1")

      with :ok <- start_epmd(),
           :ok <- start_node() do
        # A cookie of this run only: no other BEAM on the machine can join.
        Node.set_cookie(
          :"pbtest#{:erlang.unique_integer([:positive])}#{:rand.uniform(1_000_000_000)}"
        )

        nil
      end
    end
  end

  defp start_epmd do
    epmd =
      System.find_executable("epmd") ||
        Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "bin", "epmd"])

    cond do
      not File.exists?(epmd) ->
        "no epmd executable (looked in PATH and #{epmd})"

      true ->
        case System.cmd(epmd, ["-daemon"], stderr_to_stdout: true) do
          {_, 0} -> :ok
          {out, status} -> "epmd -daemon exited #{status}: #{String.trim(out)}"
        end
    end
  end

  defp start_node do
    Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1})
    # As on the peers: no full mesh kept by :global, which would otherwise disconnect
    # a node that one test suspends when another test kills a node ("overlapping
    # partitions"). :global reads these when it starts: restart it, before this
    # node is distributed (nothing is registered in it yet).
    Application.put_env(:kernel, :connect_all, false)
    Application.put_env(:kernel, :prevent_overlapping_partitions, false)
    :ok = :supervisor.terminate_child(:kernel_sup, :global_name_server)
    {:ok, _} = :supervisor.restart_child(:kernel_sup, :global_name_server)
    name = :"pb_test_#{System.pid()}"

    case Node.start(name, :shortnames) do
      {:ok, _} -> :ok
      {:error, reason} -> "distribution did not start: #{inspect(reason, limit: 8)}"
    end
  end

  @doc """
  Starts a peer node running this build's code and the :port_bridge application;
  returns `{peer, node}`. Not linked: stop it with `stop_peer/1` (or kill it).
  """
  def start_peer(prefix \\ "peer") do
    name = :"#{prefix}_#{System.pid()}_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(%{
        name: name,
        # No full mesh kept by :global: a peer connects to the nodes a test connects
        # it to (connect_all/1), and :global never disconnects a node that one test
        # suspends because another test killed one ("overlapping partitions").
        args: [
          ~c"-connect_all",
          ~c"false",
          ~c"-kernel",
          ~c"prevent_overlapping_partitions",
          ~c"false",
          ~c"-setcookie",
          Atom.to_charlist(Node.get_cookie()),
          ~c"-kernel",
          ~c"inet_dist_use_interface",
          @loopback,
          ~c"-kernel",
          ~c"logger_level",
          ~c"error"
        ],
        env: [{~c"ERL_EPMD_ADDRESS", ~c"127.0.0.1"}]
      })

    :ok = :erpc.call(node, :code, :add_paths, [:code.get_path()])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:port_bridge])
    {peer, node}
  end

  @doc "Connects every two of `nodes` (the members of one test's cluster)."
  def connect_all(nodes) do
    for a <- nodes, b <- nodes, a < b, do: true = :erpc.call(a, Node, :connect, [b])
    :ok
  end

  @doc "Stops a peer if it still runs (its pools stop their Pythons on the way down)."
  def stop_peer(peer) do
    if Process.alive?(peer), do: :peer.stop(peer)
    :ok
  catch
    :exit, _ -> :ok
  end

  @doc "Runs `fun` while `node`'s BEAM is stopped (SIGSTOP): it still looks connected."
  def while_stopped(node, fun) do
    os_pid = Integer.to_string(os_pid(node))
    {_, 0} = System.cmd("kill", ["-STOP", os_pid])

    try do
      fun.()
    after
      System.cmd("kill", ["-CONT", os_pid])
    end
  end

  @doc "The OS pid of a node's BEAM."
  def os_pid(node), do: :erpc.call(node, System, :pid, []) |> String.to_integer()

  @doc """
  From a test: a peer node connected to this one, and cluster `name` with the pool
  options `pool` on both (this node's supervised by the test, the peer stopped when
  the test ends); returns the peer's node once both are members.
  """
  def two_node_cluster(prefix, name, pool) do
    {peer_pid, peer} = start_peer(prefix)
    ExUnit.Callbacks.on_exit(fn -> stop_peer(peer_pid) end)
    connect_all([node(), peer])
    opts = [name: name, pool: pool]
    ExUnit.Callbacks.start_supervised!({PortBridge.Cluster, opts}, id: name)
    start_cluster(peer, opts)
    await_members([node(), peer], name, [node(), peer])
    peer
  end

  @doc "Starts `PortBridge.Cluster` with `opts` on `node`, not linked to the caller."
  def start_cluster(node, opts), do: :erpc.call(node, __MODULE__, :start_cluster_here, [opts])

  @doc false
  def start_cluster_here(opts) do
    {:ok, sup} = Supervisor.start_link([{PortBridge.Cluster, opts}], strategy: :one_for_one)
    Process.unlink(sup)
    # Every Python ready before the caller goes on.
    name = Keyword.fetch!(opts, :name)
    {:ok, cluster} = PortBridge.Cluster.lookup(name)

    for worker <- PortBridge.Pool.workers(cluster.pool),
        do: {:ok, _} = PortBridge.Worker.await_ready(worker, 60_000)

    sup
  end

  @doc "The OS pids of the Pythons of a cluster's pool on `node`."
  def python_pids(node, name) do
    :erpc.call(node, __MODULE__, :python_pids_here, [name])
  end

  @doc false
  def python_pids_here(name) do
    {:ok, cluster} = PortBridge.Cluster.lookup(name)
    for %{os_pid: os_pid} <- PortBridge.Pool.info(cluster.pool), os_pid != nil, do: os_pid
  end

  @doc "Waits until every node in `nodes` sees exactly `members` in cluster `name`."
  def await_members(nodes, name, members) do
    members = Enum.sort(members)

    PortBridge.TestCase.wait_until(
      fn ->
        Enum.all?(nodes, &(:erpc.call(&1, PortBridge.Cluster, :members, [name]) == members))
      end,
      15_000,
      "members #{inspect(members)} on #{inspect(nodes)}"
    )
  end

  @doc "Calls `PortBridge.request/4` on `node`."
  def request_on(node, name, command, args \\ %{}, opts \\ []) do
    :erpc.call(node, PortBridge, :request, [name, command, args, opts], :infinity)
  end

  @doc """
  Starts a process on `node` that sends `requests` (`{command, args, opts}`) through
  `name` one after another without waiting, then stays (so that they keep their
  caller); returns its pid.
  """
  def send_from(node, name, requests),
    do: :erpc.call(node, __MODULE__, :send_here, [name, requests])

  @doc false
  def send_here(name, requests) do
    spawn(fn ->
      for {command, args, opts} <- requests,
          do: PortBridge.async_request(name, command, args, opts)

      Process.sleep(:infinity)
    end)
  end

  @doc "A callback that says where it runs: the name of its node."
  def node_name(_args), do: Atom.to_string(node())

  @doc """
  Asserts `fun` finished within `limit_ms` (on an idle machine; see
  `PortBridge.TestCase.tolerance/1`), returns its result.
  """
  def within(limit_ms, fun) do
    {elapsed, result} = PortBridge.TestCase.elapsed_ms(fun)
    limit = PortBridge.TestCase.tolerance(limit_ms)

    assert elapsed <= limit,
           "took #{elapsed} ms, more than #{limit} ms (#{limit_ms} ms on an idle machine)"

    result
  end
end
