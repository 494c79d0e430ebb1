# Scenario 7, the BEAM side: ping round trips through a raw Port, PortBridge.Worker and
# PortBridge.Pool, and pool throughput with 1, 4 and 16 callers. Run by
# benchmarks/scenarios/elixir.py inside elixir_client (`mix run`); prints one JSON
# document on its last line. Settings come from the environment:
#
#   BENCH_PYTHON   the interpreter that has portbridge (the venv's)
#   BENCH_ROOT     the checkout (cwd and PYTHONPATH of every worker)
#   BENCH_FLOOR    benchmarks/floor.py
#   BENCH_N        sequential pings per measurement; BENCH_ROUNDS repeats
#   BENCH_CALLS    pool requests per throughput measurement
#
# Every side sends the same frame for a ping: JSON {"id", "command": "ping", "args": {}},
# encoded with jiffy (as PortBridge.Codec does) and decoded on receipt.

Code.require_file("common.exs", __DIR__)

defmodule Bench do
  import Bench.Common

  def raw(args, n, warmup) do
    port = raw_port(args)
    raw_pings(port, warmup)
    result = summary(raw_pings(port, n))
    close_port(port)
    result
  end

  # -- PortBridge.Worker and PortBridge.Pool ----------------------------------------------

  def spawn_opts, do: spawn_opts(["--backends", ""])

  # PortBridge.Worker.request for a worker pid; PortBridge.request (the public entry) for a pool.
  def pings(target, n) when is_pid(target) do
    for _ <- 1..n do
      ns(fn -> {:ok, %{"pong" => true}} = PortBridge.Worker.request(target, "ping", %{}) end)
    end
  end

  def pings(target, n) do
    for _ <- 1..n do
      ns(fn -> {:ok, %{"pong" => true}} = PortBridge.request(target, "ping", %{}) end)
    end
  end

  # `extra`: Worker options (forward_logs: false measures what forwarding the
  # worker's log records to Logger, the default, costs a request).
  def worker(n, warmup, extra \\ []) do
    {:ok, pid} = PortBridge.Worker.start_link(spawn_opts() ++ extra)
    {:ok, _} = PortBridge.Worker.await_ready(pid, 30_000)
    pings(pid, warmup)
    result = summary(pings(pid, n))
    Process.unlink(pid)
    GenServer.stop(pid)
    result
  end

  # The multiplexed pool needs nothing more than the client itself.
  def pool_available?, do: Code.ensure_loaded?(PortBridge.Pool)

  def with_pool(size, fun) do
    name = :"bench_pool_#{System.unique_integer([:positive])}"
    {:ok, sup} = PortBridge.Pool.start_link([name: name, size: size] ++ spawn_opts())
    Process.unlink(sup)
    wait_pool(name, 300)
    result = fun.(name)
    Supervisor.stop(sup)
    result
  end

  # The pool starts its workers in tasks: ping until one answers.
  defp wait_pool(name, tries) do
    case PortBridge.request(name, "ping", %{}, timeout: 30_000, pool_timeout: 30_000) do
      {:ok, _} ->
        :ok

      _ when tries > 0 ->
        Process.sleep(20)
        wait_pool(name, tries - 1)

      other ->
        raise "pool never answered: #{inspect(other)}"
    end
  end

  def pool_latency(n, warmup) do
    with_pool(1, fn name ->
      pings(name, warmup)
      summary(pings(name, n))
    end)
  end

  # Where a Worker ping's BEAM work goes, in counts that do not depend on the machine's
  # load: reductions of the calling process and the Worker per ping, function calls
  # per ping (every process: call_count tracing), against a raw Port doing the same;
  # then :eprof's own-time shares of the Worker path (a profile, so slower than real).
  def hotpath(n) do
    {:ok, pid} = PortBridge.Worker.start_link(spawn_opts())
    {:ok, _} = PortBridge.Worker.await_ready(pid, 30_000)
    ping = fn -> {:ok, %{"pong" => true}} = PortBridge.Worker.request(pid, "ping", %{}) end
    for _ <- 1..200, do: ping.()

    [caller_reds, worker_reds] = reductions(n, [self(), pid], ping)
    worker_calls = calls(n, [self(), pid], ping)
    profile = eprof(n, [self(), pid], ping)
    Process.unlink(pid)
    GenServer.stop(pid)

    port = raw_port(["-m", "bridge", "worker", "--backends", ""])
    raw_ping = fn -> raw_pings(port, 1) end
    for _ <- 1..200, do: raw_ping.()
    [raw_reds] = reductions(n, [self()], raw_ping)
    raw_calls = calls(n, [self()], raw_ping)
    close_port(port)

    %{
      "n" => n,
      "worker" => %{"caller_reductions" => caller_reds, "worker_reductions" => worker_reds,
                    "calls" => worker_calls},
      "raw" => %{"caller_reductions" => raw_reds, "calls" => raw_calls},
      "eprof" => profile
    }
  end

  # Reductions per call of `fun`, for each of `pids`.
  defp reductions(n, pids, fun) do
    before = Enum.map(pids, &reds/1)
    for _ <- 1..n, do: fun.()
    for {pid, b} <- Enum.zip(pids, before), do: (reds(pid) - b) / n
  end

  defp reds(pid), do: elem(Process.info(pid, :reductions), 1)

  # Function calls per ping of `pids` (call_count tracing), by function, less what the
  # same measurement of a function that does nothing counts (the measuring itself).
  defp calls(n, pids, fun) do
    base = count_calls(n, pids, fn -> :ok end)
    counts = count_calls(n, pids, fun)

    counts =
      for {name, c} <- counts,
          c = c - Map.get(base, name, 0),
          c >= 0.99,
          into: %{},
          do: {name, Float.round(c, 2)}

    %{"total" => Float.round(Enum.sum(Map.values(counts)), 1), "by_function" => counts}
  end

  defp count_calls(n, pids, fun) do
    :erlang.trace_pattern({:_, :_, :_}, true, [:call_count])
    for pid <- pids, do: :erlang.trace(pid, true, [:call])
    for _ <- 1..n, do: fun.()
    for pid <- pids, do: :erlang.trace(pid, false, [:call])

    counts =
      for {m, _} <- :code.all_loaded(),
          {f, a} <- m.module_info(:functions),
          {:call_count, c} = :erlang.trace_info({m, f, a}, :call_count),
          is_integer(c) and c > 0,
          into: %{},
          do: {"#{inspect(m)}.#{f}/#{a}", c / n}

    :erlang.trace_pattern({:_, :_, :_}, false, [:call_count])
    counts
  end

  defp eprof(n, pids, fun) do
    :eprof.start()
    :eprof.start_profiling(pids)
    for _ <- 1..n, do: fun.()
    :eprof.stop_profiling()
    :eprof.log(String.to_charlist(Path.join(System.tmp_dir!(), "bench_eprof.txt")))
    :eprof.analyze(:total, sort: :time)
    text = File.read!(Path.join(System.tmp_dir!(), "bench_eprof.txt"))
    :eprof.stop()

    for line <- String.split(text, "\n"),
        [name, calls, pct, us] <- [Regex.run(~r/^(\S+)\s+(\d+)\s+([\d.]+)\s+(\d+)/, line, capture: :all_but_first)],
        do: %{"function" => name, "calls_per_ping" => String.to_integer(calls) / n,
              "percent" => String.to_float(pct), "us_per_ping" => String.to_integer(us) / n}
  end

  def pool_throughput(size, callers, calls) do
    with_pool(size, fn name ->
      pings(name, 200)
      per = div(calls, callers)

      ns =
        ns(fn ->
          1..callers
          |> Task.async_stream(fn _ -> pings(name, per) end,
            max_concurrency: callers,
            timeout: :infinity
          )
          |> Stream.run()
        end)

      %{
        callers: callers,
        size: size,
        requests: per * callers,
        per_s: per * callers / (ns / 1.0e9)
      }
    end)
  end
end

n = Bench.Common.int("BENCH_N")
rounds = Bench.Common.int("BENCH_ROUNDS")
calls = Bench.Common.int("BENCH_CALLS")
warmup = div(n, 5)
worker_args = ["-m", "bridge", "worker", "--backends", ""]
floor_args = [System.fetch_env!("BENCH_FLOOR")]

sides =
  [
    {"raw Port -> floor", fn -> Bench.raw(floor_args, n, warmup) end},
    {"raw Port -> worker", fn -> Bench.raw(worker_args, n, warmup) end},
    {"PortBridge.Worker", fn -> Bench.worker(n, warmup) end},
    {"PortBridge.Worker, forward_logs: false",
     fn -> Bench.worker(n, warmup, forward_logs: false) end}
  ] ++
    if(Bench.pool_available?(),
      do: [{"PortBridge.Pool (size 1)", fn -> Bench.pool_latency(n, warmup) end}],
      else: []
    )

latency =
  for r <- 1..rounds, reduce: %{} do
    acc ->
      order = if rem(r, 2) == 1, do: sides, else: Enum.reverse(sides)

      Enum.reduce(order, acc, fn {name, fun}, acc ->
        value = fun.()
        Map.update(acc, name, [value], &(&1 ++ [value]))
      end)
  end

throughput =
  if Bench.pool_available?() do
    for callers <- [1, 4, 16],
        do: Bench.pool_throughput(System.schedulers_online(), callers, calls)
  else
    []
  end

hotpath = Bench.hotpath(min(n, 2_000))

Bench.Common.print_result(%{
  "hotpath" => hotpath,
  "latency" => latency,
  "throughput" => throughput,
  "pool" => Bench.pool_available?()
})
