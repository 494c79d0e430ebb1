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

Bench.Common.print_result(%{
  "latency" => latency,
  "throughput" => throughput,
  "pool" => Bench.pool_available?()
})
