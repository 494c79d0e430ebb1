# Scenario "rate_limit", the BEAM side (issue 21): rate limits the client enforces for
# every Python. Run by benchmarks/scenarios/rate_limit.py inside elixir_client (`mix
# run`); prints one JSON document on its last line. BENCH_PART says which part:
#
#   overhead  what admission adds to an LM call under the limit: execute_program on
#             one Worker with the offline LM (no HTTP), sequentially, one phase per
#             side, in which blocks of 50 calls take turns between a session without
#             ("free") and one with a rate_limit it never reaches, answered
#             by the Worker's PortBridge.Limiter, which leases the next calls' starts
#             (protocol 1.3): requests_per_minute ("limited"), or tokens_per_minute
#             ("tokens": what a call did not use of its estimate goes back with
#             the next admission, returned_tokens); or answered by a function the request registers
#             ("callback": a callback round trip per call, no limiter, no lease);
#             p50/p99/mean per side, and of the free calls of its phase
#   limit     the issue's scenario: a pool of two Pythons, BENCH_CALLS calls at once
#             (DSPy.map) against the loopback provider at BENCH_LM_URL, which allows
#             BENCH_LIMIT calls a second and counts its 429s; with the pool told that
#             limit (rate_limit) and without (each Python on its own, DSPy's retries):
#             wall time, calls served and the provider's counts per run
#
# BENCH_N, BENCH_ROUNDS: calls per side in a phase and rounds (overhead), rounds (limit).

Code.require_file("common.exs", __DIR__)

defmodule Bench do
  import Bench.Common
  alias PortBridge.DSPy

  @measured ["limited", "tokens", "callback"]
  # Calls per block: in a phase, the two sides take turns every @block calls (tens
  # of milliseconds), so that a slow moment of a shared machine falls on both alike.
  @block 50

  def overhead(n, rounds) do
    {:ok, worker} = PortBridge.Worker.start_link(spawn_opts([]))
    Process.unlink(worker)
    {:ok, _} = PortBridge.Worker.await_ready(worker, 60_000)
    settle(worker)

    # Sessions on the same Python, each with the offline LM: "free" without a rate
    # limit; "limited" under a request limit it never reaches (10,000,000 a minute,
    # the most the worker takes); "tokens" under a token limit it never reaches
    # either (1,000,000,000 a minute, the most).
    {:ok, _} = DSPy.configure_lm(worker, model: "offline", session_id: "free")

    {:ok, _} =
      DSPy.configure_lm(worker,
        model: "offline",
        session_id: "limited",
        rate_limit: [requests_per_minute: 10_000_000]
      )

    {:ok, _} =
      DSPy.configure_lm(worker,
        model: "offline",
        session_id: "tokens",
        rate_limit: [tokens_per_minute: 1_000_000_000]
      )

    # "callback": a request limit whose admissions an Elixir function of the request's
    # own answers instead of the limiter (no lease): the callback's round trip alone.
    # Limits of its own, so that it never starts on a lease the limiter gave "limited".
    {:ok, _} =
      DSPy.configure_lm(worker,
        model: "offline",
        session_id: "callback",
        rate_limit: [requests_per_minute: 9_000_000]
      )

    for s <- ["free" | @measured] do
      {:ok, _} = DSPy.create_program(worker, signature: "question -> answer", program_id: "qa", session_id: s)
    end

    admit = %{"portbridge.admit" => fn _args -> %{"admitted" => true} end}

    call = fn s ->
      opts = [session_id: s] ++ if(s == "callback", do: [callbacks: admit], else: [])
      ns(fn -> {:ok, _} = DSPy.execute_program(worker, "qa", %{question: "Is it fast?"}, opts) end)
    end

    for s <- ["free" | @measured], _ <- 1..div(n, 5), do: call.(s)

    # A round is one phase per measured side: n calls of it and n of "free", in
    # blocks that take turns. Phases, not one rotation of all sides: "limited" and
    # "tokens" share the model under different limits, and the limiter keeps one
    # budget per model (its lease would restart with every switch of limits).
    runs =
      for round <- 1..rounds do
        Map.new(@measured, fn s ->
          for _ <- 1..div(n, 10), do: call.(s)
          order = if rem(round, 2) == 1, do: ["free", s], else: [s, "free"]

          {samples, asked} =
            Enum.reduce(1..div(n, @block), {%{"free" => [], s => []}, 0}, fn b, acc ->
              order = if rem(b, 2) == 1, do: order, else: Enum.reverse(order)

              Enum.reduce(order, acc, fn side, {samples, asked} ->
                before = admitted()
                ns = for _ <- 1..@block, do: call.(side)
                {Map.update!(samples, side, &(ns ++ &1)), asked + admitted() - before}
              end)
            end)

          {s, Map.merge(stats(samples[s]), %{"asked" => asked, "free" => stats(samples["free"])})}
        end)
      end

    GenServer.stop(worker)
    %{"runs" => runs, "n" => n}
  end

  defp stats(ns), do: Map.put(summary(ns), "mean", div(Enum.sum(ns), length(ns)))

  # Admissions the Worker's limiter (outside a pool: the application's) answered so far.
  defp admitted do
    case PortBridge.Limiter.info(PortBridge.Limiter) do
      %{"offline" => %{admitted: admitted}} -> admitted
      %{} -> 0
    end
  end

  def limit(url, limit, calls, rounds) do
    runs =
      for _ <- 1..rounds, limited <- [true, false] do
        name = :"bench_limit_#{System.unique_integer([:positive])}"

        {:ok, sup} =
          PortBridge.Pool.start_link(
            [name: name, size: 2] ++ spawn_opts(["--log-level", "critical"])
          )

        Process.unlink(sup)

        for w <- PortBridge.Pool.workers(name) do
          {:ok, _} = PortBridge.Worker.await_ready(w, 60_000)
          settle(w)
        end

        # A model of its own per run: the provider counts per model, and the calls of
        # the run before are still in its window.
        model = "openai/bench-limit-#{System.unique_integer([:positive])}"
        lm = [model: model, api_base: url, api_key: "bench-key", timeout: 60_000]
        lm = if limited, do: lm ++ [rate_limit: [requests_per_minute: limit * 60]], else: lm
        {:ok, _} = DSPy.configure_lm(name, lm)
        {:ok, _} = DSPy.create_program(name, signature: "question -> answer", program_id: "qa")
        _ = stats(url, true)

        inputs = for i <- 1..calls, do: %{question: "ticket #{i}"}

        {wall, results} =
          timed(fn ->
            name |> DSPy.map("qa", inputs, max_concurrency: calls, timeout: 120_000) |> Enum.to_list()
          end)

        served = Enum.count(results, &match?({:ok, _}, &1))
        # What the pool's limiter did: admissions answered, starts leased.
        info = PortBridge.Limiter.info(Module.concat(name, PortBridge.Limiter))[model] || %{}
        Supervisor.stop(sup)

        %{
          "limited" => limited,
          "wall_ns" => wall,
          "served" => served,
          "failed" => calls - served,
          "provider" => stats(url, false),
          "admitted" => Map.get(info, :admitted, 0),
          "leased" => Map.get(info, :leased, 0)
        }
      end

    %{"runs" => runs, "limit" => limit, "calls" => calls}
  end

  # The provider's counts (GET /stats), optionally zeroed.
  defp stats(url, reset) do
    path = String.replace(url, "/v1", "/stats") <> if(reset, do: "?reset=1", else: "")
    {:ok, {{_, 200, _}, _, body}} = :httpc.request(:get, {String.to_charlist(path), []}, [], [])
    :jiffy.decode(body, [:return_maps])
  end
end

{:ok, _} = Application.ensure_all_started(:inets)

doc =
  case System.fetch_env!("BENCH_PART") do
    "overhead" ->
      Bench.overhead(Bench.Common.int("BENCH_N"), Bench.Common.int("BENCH_ROUNDS"))

    "limit" ->
      Bench.limit(
        System.fetch_env!("BENCH_LM_URL"),
        Bench.Common.int("BENCH_LIMIT"),
        Bench.Common.int("BENCH_CALLS"),
        Bench.Common.int("BENCH_ROUNDS")
      )
  end

Bench.Common.print_result(doc)
