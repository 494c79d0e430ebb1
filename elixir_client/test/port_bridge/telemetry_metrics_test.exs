defmodule PortBridge.TelemetryMetricsTest do
  # PortBridge.Telemetry.metrics/0 against the real Telemetry.Metrics
  # (TELEMETRY_METRICS_PATH with TELEMETRY_PATH): every metric's measurement and tags
  # are read, with Telemetry.Metrics' own functions, from events the client really
  # emits.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Limiter, Pool}
  alias PortBridge.Telemetry, as: PBTelemetry

  @compile {:no_warn_undefined, :telemetry}

  unless Code.ensure_loaded?(Telemetry.Metrics) and PBTelemetry.available?(),
    do:
      @moduletag(
        skip:
          "Telemetry.Metrics is not compiled in: run with TELEMETRY_PATH=/path/to/telemetry " <>
            "TELEMETRY_METRICS_PATH=/path/to/telemetry_metrics"
      )

  setup_all do
    if PBTelemetry.available?(), do: {:ok, _} = Application.ensure_all_started(:telemetry)
    :ok
  end

  # Each metric as a reporter reads it (other tests' events come too: they only
  # add to what is checked): {metric name, measurement, tags, the metric's tags}.
  defp report(metrics) do
    id = "metrics-#{inspect(self())}"
    events = metrics |> Enum.map(& &1.event_name) |> Enum.uniq()
    :ok = apply(:telemetry, :attach_many, [id, events, &__MODULE__.handle/4, {self(), metrics}])
    on_exit(fn -> apply(:telemetry, :detach, [id]) end)
  end

  @doc false
  def handle(event, measurements, metadata, {test, metrics}) do
    for %{event_name: ^event} = metric <- metrics,
        metric.keep == nil or metric.keep.(metadata) do
      measurement =
        case metric.measurement do
          fun when is_function(fun, 1) -> fun.(measurements)
          fun when is_function(fun, 2) -> fun.(measurements, metadata)
          key -> measurements[key]
        end

      tags = metric.tag_values.(metadata)
      send(test, {:metric, metric.name, measurement, Map.take(tags, metric.tags), metric.tags})
    end
  end

  @repo_support Path.expand("../../../tests/support", __DIR__)

  defp callback_worker_opts(extra) do
    pythonpath = Enum.join([Path.expand("../support/python", __DIR__), @repo_support], ":")

    worker_opts(worker_args: ["--backend-module", "callback_backend:backend"])
    |> Keyword.merge([env: %{"PYTHONPATH" => pythonpath}] ++ extra)
  end

  test "every metric is about an event the client documents" do
    for metric <- PBTelemetry.metrics() do
      assert metric.__struct__ in [
               Telemetry.Metrics.Counter,
               Telemetry.Metrics.Sum,
               Telemetry.Metrics.Summary
             ]

      assert metric.event_name in PBTelemetry.events(), inspect(metric.name)
    end
  end

  test "measurements and tags are there when the events come" do
    metrics = PBTelemetry.metrics()
    report(metrics)
    # Requests, Pythons and a batch (of commands the worker has no backend for: each
    # item an error, which is what this needs).
    pool = :"metrics_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, callback_worker_opts(name: pool, size: 1)}, id: :pool)
    {:ok, _} = PortBridge.request(pool, "ping")

    # A callback (tests/support/callback_backend.py calls back the function named).
    {:ok, _} =
      PortBridge.request(pool, "call_back", %{name: "f", args: %{x: 1}}, callbacks: %{"f" => & &1})

    [{:error, _}] = pool |> DSPy.map("p", [%{q: 1}]) |> Enum.to_list()
    stop_supervised!(:pool)

    # Admission and a pause, by the limiter; an LM call as a worker reports it.
    limiter = start_supervised!(Limiter)
    args = %{"model" => "m", "limits" => %{"requests_per_minute" => 60_000}}
    {:ok, _} = Limiter.admit(limiter, args, :infinity)
    Limiter.report(limiter, %{"model" => "m", "error" => %{"retry_after_s" => 0.01}})

    lm_call = %{
      "model" => "openai/gpt-4o-mini",
      "prompt_tokens" => 12,
      "completion_tokens" => 5,
      "cost_usd" => 0.00002,
      "duration_us" => 81_000,
      "cached" => false,
      "program_id" => "qa",
      "error" => nil
    }

    PBTelemetry.lm_call(lm_call, %{session_id: "s", command: "execute_program"})

    PBTelemetry.lm_call(
      %{lm_call | "cost_usd" => nil, "error" => %{"category" => "lm_rate_limit"}},
      %{session_id: nil, command: "execute_program"}
    )

    reported = collect([])
    # Those only a session rebuild emits are covered by the rebuild tests' event shapes.
    expected = Enum.map(metrics, & &1.name) -- [[:port_bridge, :session, :rebuild, :duration]]

    for name <- expected do
      assert Enum.any?(reported, &match?({^name, _, _, _}, &1)), "no #{inspect(name)} reported"
    end

    for {name, measurement, tags, wanted} <- reported do
      assert Map.keys(tags) |> Enum.sort() == Enum.sort(wanted), inspect(name)
      # Only a cost the provider has no price for is missing (a reporter skips it).
      unless name == [:port_bridge, :lm, :call, :cost_usd] or
               List.last(name) in [:count, :errors],
             do: assert(is_number(measurement), "#{inspect(name)}: #{inspect(measurement)}")
    end
  end

  defp collect(acc) do
    receive do
      {:metric, name, measurement, tags, wanted} ->
        collect([{name, measurement, tags, wanted} | acc])
    after
      # Every event above was emitted before the call that caused it returned.
      0 -> acc
    end
  end
end
