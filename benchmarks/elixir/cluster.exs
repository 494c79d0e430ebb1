# Scenario "cluster", the BEAM side: PortBridge.Cluster on 1, 2 and 3 peer nodes of
# this machine (OTP's :peer), each with its own Python worker. Run by
# benchmarks/scenarios/cluster.py inside elixir_client (`mix run`); prints one JSON
# document on its last line. This node only drives: it starts the peers and
# places the callers on them, and is not a member. BENCH_PART says which part:
#
#   lm    BENCH_SESSIONS sessions, each a caller that runs execute_program again and
#         again for BENCH_SECONDS against a loopback LM answering after 200 ms
#         (BENCH_LM_URL); each node's Python runs BENCH_CONCURRENCY calls at once, so
#         that the nodes, not the CPUs, bound the throughput. The callers are spread
#         over the nodes (a session's requests start on any node, as users' do).
#         For each of BENCH_NODES: completed calls per second.
#   ping  two nodes; sequential pings from one of them: its pool directly, the
#         cluster for sessions it owns, the cluster for sessions the other node
#         owns. p50/p99 per target (the caller pins this run to one CPU).

# Also loaded on the peers (Bench.OnPeer settles their workers with it).
[{Bench.Common, common_bin}] = Code.require_file("common.exs", __DIR__)

defmodule Bench.Nodes do
  @moduledoc false

  import Bench.Common

  # epmd and this node on 127.0.0.1, a cookie of this run only.
  def distribute! do
    System.put_env("ERL_EPMD_ADDRESS", "127.0.0.1")
    {_, 0} = System.cmd(System.find_executable("epmd") || "epmd", ["-daemon"])
    Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1})
    {:ok, _} = Node.start(:"bench_#{System.pid()}", :shortnames)
    Node.set_cookie(:"bench#{:rand.uniform(1_000_000_000)}")
  end

  # `n` peers running this build and the :port_bridge application, connected to
  # each other, with `modules` (defined in this script) loaded.
  def start_peers(n, modules) do
    peers =
      for i <- 1..n do
        {:ok, peer, node} =
          :peer.start(%{
            name: :"bench_#{System.pid()}_#{i}_#{System.unique_integer([:positive])}",
            args: [
              ~c"-setcookie",
              Atom.to_charlist(Node.get_cookie()),
              ~c"-kernel",
              ~c"inet_dist_use_interface",
              ~c"{127,0,0,1}",
              ~c"-kernel",
              ~c"logger_level",
              ~c"error"
            ],
            env: [{~c"ERL_EPMD_ADDRESS", ~c"127.0.0.1"}]
          })

        :ok = :erpc.call(node, :code, :add_paths, [:code.get_path()])
        {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:port_bridge])

        for {mod, bin} <- modules,
            do: {:module, ^mod} = :erpc.call(node, :code, :load_binary, [mod, ~c"nofile", bin])

        {peer, node}
      end

    nodes = Enum.map(peers, &elem(&1, 1))
    for a <- nodes, b <- nodes, a < b, do: true = :erpc.call(a, Node, :connect, [b])
    peers
  end

  def stop_peers(peers), do: Enum.each(peers, fn {peer, _} -> :peer.stop(peer) end)

  def await_members(nodes, name) do
    members = Enum.sort(nodes)

    Enum.find_value(1..1_000, fn _ ->
      if Enum.all?(nodes, &(:erpc.call(&1, PortBridge.Cluster, :members, [name]) == members)),
        do: true,
        else: Process.sleep(20) && nil
    end) || raise "the members never agreed"
  end
end

# Runs on the peers (loaded there as a binary).
{:module, _, on_peer_bin, _} =
  defmodule Bench.OnPeer do
    @moduledoc false

    # The cluster's child, not linked to the (short-lived) caller; every Python ready.
    def start_cluster(opts) do
      {:ok, sup} = Supervisor.start_link([{PortBridge.Cluster, opts}], strategy: :one_for_one)
      Process.unlink(sup)
      {:ok, cluster} = PortBridge.Cluster.lookup(opts[:name])

      for w <- PortBridge.Pool.workers(cluster.pool) do
        {:ok, _} = PortBridge.Worker.await_ready(w, 120_000)
        # No backend still importing in the background (it would steal the CPU).
        Bench.Common.settle(w)
      end

      :ok
    end

    def setup_session(name, lm, session) do
      {:ok, _} = PortBridge.DSPy.configure_lm(name, lm ++ [session_id: session, timeout: 120_000])

      {:ok, _} =
        PortBridge.DSPy.create_program(name,
          signature: "question -> answer",
          program_id: "qa",
          session_id: session,
          timeout: 120_000
        )

      {:ok, _} = execute(name, session)
      :ok
    end

    def execute(name, session) do
      PortBridge.DSPy.execute_program(name, "qa", %{question: "Why #{session}?"},
        session_id: session,
        timeout: 120_000
      )
    end

    # A caller: waits for {:go, until_ms_from_now}, then runs execute_program for its
    # session until then; reports {completed, failed} to `to`.
    def caller(name, session, to) do
      receive do
        {:go, ms} ->
          until = System.monotonic_time(:millisecond) + ms
          send(to, {:done, self(), loop(name, session, until, 0, 0)})
      end
    end

    defp loop(name, session, until, ok, failed) do
      result = execute(name, session)

      {ok, failed} =
        if System.monotonic_time(:millisecond) <= until,
          do: if(match?({:ok, _}, result), do: {ok + 1, failed}, else: {ok, failed + 1}),
          else: {ok, failed}

      if System.monotonic_time(:millisecond) < until,
        do: loop(name, session, until, ok, failed),
        else: {ok, failed}
    end

    # Sequential pings of `target` (a name) with `opts`; ns each.
    def pings(target, opts, n) do
      for _ <- 1..n do
        t0 = System.monotonic_time(:nanosecond)
        {:ok, %{"pong" => true}} = PortBridge.request(target, "ping", %{}, opts)
        System.monotonic_time(:nanosecond) - t0
      end
    end
  end

defmodule Bench do
  import Bench.Common
  import Bench.Nodes

  @modules [{Bench.Common, common_bin}, {Bench.OnPeer, on_peer_bin}]
  def modules, do: @modules

  def with_cluster(k, worker_args, fun) do
    peers = start_peers(k, modules())
    nodes = Enum.map(peers, &elem(&1, 1))
    name = :"bench_cluster_#{System.unique_integer([:positive])}"
    opts = [name: name, pool: [size: 1] ++ spawn_opts(worker_args)]

    try do
      # One after another: k DSPy imports at once would only thrash.
      for node <- nodes,
          do: :ok = :erpc.call(node, Bench.OnPeer, :start_cluster, [opts], :infinity)

      await_members(nodes, name)
      fun.(name, nodes)
    after
      stop_peers(peers)
    end
  end

  def lm_part do
    lm = [
      model: "openai/bench",
      api_base: env!("BENCH_LM_URL"),
      api_key: "bench-key",
      num_retries: 0
    ]

    sessions = for i <- 1..int("BENCH_SESSIONS"), do: "s#{i}"
    seconds = int("BENCH_SECONDS")
    concurrency = env!("BENCH_CONCURRENCY")
    args = ["--max-concurrency", concurrency, "--max-queue", "4096"]

    for k <- ints("BENCH_NODES"), into: %{} do
      row =
        with_cluster(k, args, fn name, nodes ->
          # Each session's caller lives on one node (round robin): set up from there.
          placed =
            sessions
            |> Enum.with_index()
            |> Enum.map(fn {s, i} -> {s, Enum.at(nodes, rem(i, k))} end)

          placed
          |> Task.async_stream(
            fn {s, node} ->
              :erpc.call(node, Bench.OnPeer, :setup_session, [name, lm, s], :infinity)
            end,
            max_concurrency: 16,
            timeout: :infinity
          )
          |> Stream.run()

          owners =
            Enum.frequencies(
              for s <- sessions, do: :erpc.call(hd(nodes), PortBridge.Cluster, :owner, [name, s])
            )

          me = self()

          callers =
            for {s, node} <- placed,
                do: Node.spawn_link(node, Bench.OnPeer, :caller, [name, s, me])

          t0 = System.monotonic_time(:nanosecond)
          for pid <- callers, do: send(pid, {:go, seconds * 1_000})

          {ok, failed} =
            Enum.reduce(callers, {0, 0}, fn pid, {ok, failed} ->
              receive do
                {:done, ^pid, {o, f}} -> {ok + o, failed + f}
              end
            end)

          wall = System.monotonic_time(:nanosecond) - t0

          %{
            "completed" => ok,
            "failed" => failed,
            "seconds" => seconds,
            "wall_ns" => wall,
            "per_second" => ok / seconds,
            "sessions_per_node" => Map.new(owners, fn {n, c} -> {Atom.to_string(n), c} end)
          }
        end)

      {Integer.to_string(k), row}
    end
  end

  def ping_part do
    n = int("BENCH_N")
    rounds = int("BENCH_ROUNDS")

    with_cluster(2, ["--backends", ""], fn name, [a, b] = nodes ->
      owned_by = fn node ->
        Enum.find(
          for(i <- 1..1_000, do: "p#{i}"),
          &(:erpc.call(a, PortBridge.Cluster, :owner, [name, &1]) == node)
        )
      end

      local = owned_by.(a)
      remote = owned_by.(b)
      {:ok, cluster} = :erpc.call(a, PortBridge.Cluster, :lookup, [name])

      targets = [
        {"Pool on the node (no cluster)", cluster.pool, []},
        {"Cluster, session owned by the caller's node", name, [session_id: local]},
        {"Cluster, session owned by the other node", name, [session_id: remote]}
      ]

      _ = nodes

      for r <- 1..rounds, reduce: %{} do
        acc ->
          order = if rem(r, 2) == 1, do: targets, else: Enum.reverse(targets)

          Enum.reduce(order, acc, fn {label, target, opts}, acc ->
            _warm = :erpc.call(a, Bench.OnPeer, :pings, [target, opts, div(n, 5)], :infinity)
            ns = :erpc.call(a, Bench.OnPeer, :pings, [target, opts, n], :infinity)
            summary = summary(ns)
            Map.update(acc, label, [summary], &(&1 ++ [summary]))
          end)
      end
    end)
  end
end

Bench.Nodes.distribute!()

result =
  case System.fetch_env!("BENCH_PART") do
    "lm" -> Bench.lm_part()
    "ping" -> Bench.ping_part()
  end

Bench.Common.print_result(%{"result" => result})
