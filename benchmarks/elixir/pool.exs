# Scenario "pool", the BEAM side: PortBridge.Pool's two strategies against one
# PortBridge.Worker and a raw Port. Run by benchmarks/scenarios/pool.py inside
# elixir_client (`mix run`); prints one JSON document on its last line. BENCH_PART
# says which part:
#
#   ping  sequential pings, p50/p99 per target (the caller pins this run to one CPU)
#   lm    N sessions each running one execute_program at once against a loopback LM
#         server that answers after 200 ms (BENCH_LM_URL): wall time per target
#   cpu   BENCH_CPU_REQS requests at once of a handler that computes for 20 ms:
#         wall time per target
#
# Targets: "raw Port" (ping only), "Worker" (one Python), "Pool multiplexed" and
# "Pool exclusive" (BENCH_POOL_SIZE Pythons; exclusive needs NimblePool).

Code.require_file("common.exs", __DIR__)

defmodule Bench do
  import Bench.Common

  def exclusive?, do: PortBridge.Pool.available?()

  def targets do
    ["Worker", "Pool multiplexed"] ++ if(exclusive?(), do: ["Pool exclusive"], else: [])
  end

  # Starts a target, runs fun.(name), stops it. Every Python is ready (and its
  # backends loaded) before fun runs.
  def with_target(kind, worker_args, fun) do
    size = int("BENCH_POOL_SIZE")
    name = :"bench_#{System.unique_integer([:positive])}"

    {:ok, sup} =
      case kind do
        "Worker" ->
          PortBridge.Worker.start_link([name: name] ++ spawn_opts(worker_args))

        "Pool multiplexed" ->
          PortBridge.Pool.start_link([name: name, size: size] ++ spawn_opts(worker_args))

        "Pool exclusive" ->
          PortBridge.Pool.start_link(
            [name: name, size: size, strategy: :exclusive] ++ spawn_opts(worker_args)
          )
      end

    Process.unlink(sup)
    workers = if kind == "Worker", do: [name], else: PortBridge.Pool.workers(name)

    for w <- workers do
      {:ok, _} = PortBridge.Worker.await_ready(w, 60_000)
      settle(w)
    end

    try do
      fun.(name, workers)
    after
      if kind == "Worker", do: GenServer.stop(sup), else: Supervisor.stop(sup)
    end
  end

  ## ping

  def raw_port_pings(n) do
    port = raw_port(["-m", "bridge", "worker", "--backends", ""])
    ns = raw_pings(port, n)
    close_port(port)
    ns
  end

  def pings(name, n) do
    for _ <- 1..n do
      {t, {:ok, %{"pong" => true}}} = timed(fn -> PortBridge.request(name, "ping", %{}) end)
      t
    end
  end

  def ping_part do
    n = int("BENCH_N")
    rounds = int("BENCH_ROUNDS")
    sides = ["raw Port" | targets()]

    for r <- 1..rounds, reduce: %{} do
      acc ->
        order = if rem(r, 2) == 1, do: sides, else: Enum.reverse(sides)

        Enum.reduce(order, acc, fn side, acc ->
          ns =
            if side == "raw Port" do
              raw_port_pings(div(n, 5))
              raw_port_pings(n)
            else
              with_target(side, ["--backends", ""], fn name, _ ->
                pings(name, div(n, 5))
                pings(name, n)
              end)
            end

          Map.update(acc, side, [summary(ns)], &(&1 ++ [summary(ns)]))
        end)
    end
  end

  ## lm

  def lm_part do
    lm = %{
      model: "openai/bench",
      api_base: env!("BENCH_LM_URL"),
      api_key: "bench-key",
      num_retries: 0
    }

    counts = ints("BENCH_SESSIONS")
    max = Enum.max(counts)

    for side <- targets(), into: %{} do
      runs =
        with_target(side, ["--max-queue", "4096"], fn name, workers ->
          sessions = for i <- 1..max, do: "s#{i}"

          # Set-up, not timed: every session its LM and program (each lands on its
          # own Worker); then one call on every Python, so its LM client is warm.
          sessions
          |> Task.async_stream(
            fn s ->
              {:ok, _} =
                PortBridge.DSPy.configure_lm(
                  name,
                  Map.to_list(lm) ++ [session_id: s, timeout: 120_000]
                )

              {:ok, _} =
                PortBridge.DSPy.create_program(name,
                  signature: "question -> answer",
                  program_id: "qa",
                  session_id: s,
                  timeout: 120_000
                )
            end,
            max_concurrency: 16,
            timeout: :infinity
          )
          |> Stream.run()

          warm = for w <- workers, do: Enum.find(sessions, &(owner(name, &1, workers) == w))
          for s <- Enum.reject(warm, &is_nil/1), do: execute(name, s)

          for n <- counts, into: %{} do
            {ns, results} =
              timed(fn ->
                sessions
                |> Enum.take(n)
                |> Task.async_stream(&execute(name, &1), max_concurrency: n, timeout: :infinity)
                |> Enum.map(fn {:ok, r} -> r end)
              end)

            failed = Enum.count(results, &(not match?({:ok, _}, &1)))
            {Integer.to_string(n), %{"wall_ns" => ns, "failed" => failed}}
          end
        end)

      {side, runs}
    end
  end

  defp owner(name, session, workers) do
    case workers do
      [one] -> one
      _ -> Enum.at(workers, PortBridge.Pool.shard_for(name, session) - 1)
    end
  end

  defp execute(name, session) do
    PortBridge.DSPy.execute_program(name, "qa", %{question: "Why #{session}?"},
      session_id: session,
      timeout: 300_000,
      pool_timeout: 300_000
    )
  end

  ## cpu

  def cpu_part do
    reqs = int("BENCH_CPU_REQS")
    args = ["--backends", "", "--backend-module", "benchmarks.cpu_backend:backend"]

    for side <- targets(), into: %{} do
      with_target(side, args, fn name, _workers ->
        {:ok, _} = PortBridge.request(name, "burn", %{ms: 20})

        {ns, results} =
          timed(fn ->
            1..reqs
            |> Task.async_stream(
              fn _ ->
                PortBridge.request(name, "burn", %{ms: 20},
                  timeout: 300_000,
                  pool_timeout: 300_000
                )
              end,
              max_concurrency: reqs,
              timeout: :infinity
            )
            |> Enum.map(fn {:ok, r} -> r end)
          end)

        failed = Enum.count(results, &(not match?({:ok, _}, &1)))
        {side, %{"wall_ns" => ns, "requests" => reqs, "failed" => failed}}
      end)
    end
  end
end

result =
  case System.fetch_env!("BENCH_PART") do
    "ping" -> Bench.ping_part()
    "lm" -> Bench.lm_part()
    "cpu" -> Bench.cpu_part()
  end

Bench.Common.print_result(%{"result" => result, "exclusive" => Bench.exclusive?()})
