# Scenario "dspy_native", the BEAM side: what a program module's run/3 (a signature
# module's struct, inputs checked, outputs cast) costs in BEAM CPU over a plain
# PortBridge.DSPy.execute_program/4 of the same program, on the same worker, in the
# same run. Run by benchmarks/scenarios/dspy_native.py inside elixir_client (`mix
# run`); prints one JSON document on its last line. Settings from the environment:
#
#   BENCH_PYTHON, BENCH_ROOT   the interpreter that has portbridge, the checkout
#   BENCH_N                    calls per block to the worker; BENCH_BLOCKS blocks of
#                              each variant, alternating
#   BENCH_STUB_N               calls per block to a PortBridge.Test stub (no Python: the
#                              client's own work alone, much less noise)
#
# BEAM CPU is the CPU time of the BEAM OS process over a block (:erlang.statistics
# (:runtime): every thread, from the OS's process CPU clock, 1 ms resolution), divided
# by its calls: the caller, the Worker, the port and the JSON both ways; the Python
# worker is another OS process and is not in it. Run with schedulers that do not
# busy-wait (+sbwt none), so that idle spinning is not counted as work. (Microstate
# accounting, :msacc, counts wall time in each state: on a CPU shared with the
# Python worker it counts the time the OS gave Python, so it is not used.)

Code.require_file("common.exs", __DIR__)

defmodule Bench.Triage do
  use PortBridge.DSPy.Signature, instructions: "Classify a support ticket."
  input(:ticket, :string, desc: "the ticket text")
  input(:customer, :string)
  output(:category, {:enum, ["billing", "bug", "other"]})
  output(:urgent, :boolean)
  output(:tags, {:list, :string})
  output(:confidence, :float)
end

defmodule Bench.TriageProgram do
  use PortBridge.DSPy.Program, signature: Bench.Triage
end

defmodule Bench do
  import Bench.Common

  @inputs %{ticket: "The app crashes when I upload a photo", customer: "acme"}

  def variants(target, session) do
    id = Bench.TriageProgram.program_id()

    %{
      "DSPy.execute_program/4" => fn ->
        {:ok, %{"outputs" => %{"category" => _}}} =
          PortBridge.DSPy.execute_program(target, id, @inputs, session_id: session)
      end,
      "TriageProgram.run/3" => fn ->
        {:ok, %Bench.Triage{}} = Bench.TriageProgram.run(target, @inputs, session_id: session)
      end
    }
  end

  # {BEAM CPU us, reductions of every process, [ns per call]} of n calls. Reductions
  # count the BEAM's work exactly (no clock, no other OS process): the check of
  # the CPU figure on a busy machine.
  def block(fun, n) do
    {before, _} = :erlang.statistics(:runtime)
    {reductions, _} = :erlang.statistics(:reductions)
    latencies = for _ <- 1..n, do: ns(fun)
    {later, _} = :erlang.statistics(:runtime)
    {reductions_later, _} = :erlang.statistics(:reductions)
    {(later - before) * 1000, reductions_later - reductions, latencies}
  end

  def measure(variants, n, blocks) do
    # Warm both.
    for _ <- 1..50, {_, fun} <- Enum.sort(variants), do: fun.()

    totals =
      Enum.reduce(1..blocks, %{}, fn i, acc ->
        order = if rem(i, 2) == 0, do: Enum.sort(variants), else: Enum.sort(variants, :desc)

        Enum.reduce(order, acc, fn {name, fun}, acc ->
          {cpu_us, reductions, latencies} = block(fun, n)
          first = %{"cpu_us" => [cpu_us], "reductions" => [reductions], "ns" => latencies}

          Map.update(acc, name, first, fn row ->
            %{
              "cpu_us" => [cpu_us | row["cpu_us"]],
              "reductions" => [reductions | row["reductions"]],
              "ns" => latencies ++ row["ns"]
            }
          end)
        end)
      end)

    for {name, row} <- totals, into: %{} do
      per_call = Enum.map(row["cpu_us"], &(&1 / n))

      {name,
       %{
         "cpu_us_per_call" => per_call,
         "cpu_us_per_call_median" => pct(per_call, 0.5),
         "cpu_us_per_call_mean" => Enum.sum(per_call) / length(per_call),
         "reductions_per_call" => Enum.sum(row["reductions"]) / (n * blocks),
         "latency" => summary(row["ns"]),
         "calls" => n * blocks
       }}
    end
  end

  # The real worker and its offline LM; the program created once, beforehand.
  def worker_part(n, blocks) do
    {:ok, worker} = PortBridge.Worker.start_link(spawn_opts([]))
    settle(worker)
    session = "bench"
    {:ok, _} = PortBridge.DSPy.configure_lm(worker, model: "offline", session_id: session)
    :ok = Bench.TriageProgram.create(worker, session_id: session)
    result = measure(variants(worker, session), n, blocks)
    GenServer.stop(worker)
    result
  end

  # A stub answers what the worker answered: everything but the Port and Python.
  def stub_part(n, blocks) do
    {:ok, _} = Application.ensure_all_started(:port_bridge)

    reply = %{
      "outputs" => %{
        "category" => "bug",
        "urgent" => true,
        "tags" => ["crash", "upload"],
        "confidence" => 0.9
      },
      "usage" => %{
        "offline" => %{"lm_calls" => 1, "prompt_tokens" => 60, "completion_tokens" => 12}
      },
      "program_id" => Bench.TriageProgram.program_id(),
      "model" => "offline"
    }

    PortBridge.Test.stub(:bench_stub, fn "execute_program", _args -> {:ok, reply} end)
    measure(variants(:bench_stub, "bench"), n, blocks)
  end
end

blocks = Bench.Common.int("BENCH_BLOCKS")

result = %{
  "worker" => Bench.worker_part(Bench.Common.int("BENCH_N"), blocks),
  "stub" => Bench.stub_part(Bench.Common.int("BENCH_STUB_N"), blocks)
}

Bench.Common.print_result(result)
