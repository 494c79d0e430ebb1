# Scenario "callbacks", the Elixir row: a tool call's round trip (worker -> Elixir ->
# worker) against a plain echo, through PortBridge.Worker. Run by
# benchmarks/scenarios/callbacks.py inside elixir_client (`mix run`, offline build);
# prints one JSON document on its last line.
#
#   BENCH_PYTHON, BENCH_ROOT   the interpreter and the checkout
#   BENCH_N, BENCH_ROUNDS      requests per block, fresh workers
#
# echo: as the caller sees it (call to reply). callback: as the worker's handler
# sees it (ctx.callback, call to return; tests/support/callback_backend.py): the
# callback event out, the Worker starting the function in a task, its
# callback_result back. request: the whole call_back request (two round trips).

Code.require_file("common.exs", __DIR__)

defmodule Bench do
  import Bench.Common

  def measure(n) do
    {:ok, worker} =
      PortBridge.Worker.start_link(
        python: env!("BENCH_PYTHON"),
        worker_args: [
          "--backends",
          "",
          "--backend-module",
          "tests.support.callback_backend:backend"
        ],
        cd: env!("BENCH_ROOT"),
        env: [{"PYTHONPATH", env!("BENCH_ROOT")}]
      )

    {:ok, _} = PortBridge.Worker.await_ready(worker, 60_000)
    tool = %{"f" => fn args -> args end}

    echo = fn -> ns(fn -> {:ok, _} = PortBridge.request(worker, "echo", %{x: 1}) end) end

    callback = fn ->
      {:ok, %{"elapsed_ns" => [rt]}} =
        PortBridge.request(worker, "call_back", %{name: "f", args: %{x: 1}}, callbacks: tool)

      rt
    end

    request = fn ->
      ns(fn ->
        {:ok, _} =
          PortBridge.request(worker, "call_back", %{name: "f", args: %{x: 1}}, callbacks: tool)
      end)
    end

    for f <- [echo, callback, request], _ <- 1..div(n, 5), do: f.()

    # Alternating blocks, as the Python rows.
    sides = [{"echo", echo}, {"callback", callback}, {"request", request}]

    result =
      for block <- 1..4, reduce: %{"echo" => [], "callback" => [], "request" => []} do
        acc ->
          order = if rem(block, 2) == 1, do: sides, else: Enum.reverse(sides)

          Enum.reduce(order, acc, fn {name, f}, acc ->
            samples = for _ <- 1..n, do: f.()
            Map.update!(acc, name, &(&1 ++ samples))
          end)
      end

    Process.unlink(worker)
    GenServer.stop(worker)
    Map.new(result, fn {name, samples} -> {name, summary(samples)} end)
  end
end

rounds = Bench.Common.int("BENCH_ROUNDS")
n = Bench.Common.int("BENCH_N")
runs = for _ <- 1..rounds, do: Bench.measure(n)

Bench.Common.print_result(%{"runs" => runs})
