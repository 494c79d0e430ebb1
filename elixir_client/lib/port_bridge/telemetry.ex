defmodule PortBridge.Telemetry do
  @moduledoc """
  `:telemetry` events, for dashboards and metrics (as Finch, Ecto and Req emit them).

  Every request is a span (each attempt of a retried one is a span of its own):

    * `[:port_bridge, :request, :start]` - measurements `%{system_time,
      monotonic_time}`; metadata `%{command, session_id, program_id, worker, os_pid,
      pool, telemetry_span_context}` (`program_id`: the request's `"program_id"`
      argument, or nil; `worker`: the `PortBridge.Worker` pid; `os_pid`: its Python
      process at the start; `pool`: the pool's name, or nil).
    * `[:port_bridge, :request, :stop]` - measurements `%{duration,
      monotonic_time}` (native time units); the start metadata plus `result: :ok |
      :error | :cancelled`, `error_category` / `error_code` (nil on success), and
      for a reply that reports what its LM calls used (`execute_program`...)
      `model` and `usage` (`%{model => %{"lm_calls", "prompt_tokens",
      "completion_tokens", "total_tokens", "cost_usd"}}`), else nil.
    * `[:port_bridge, :request, :exception]` - when the caller's code raises while
      waiting (an `on_event` function): measurements `%{duration}`; metadata plus
      `kind`, `reason`, `stacktrace`.

  And of the Python processes:

    * `[:port_bridge, :worker, :start]` - a Python process is ready: measurements
      `%{duration}` (spawn to `ready`, native units); metadata `%{worker, os_pid,
      pool}`.
    * `[:port_bridge, :worker, :exit]` - a Python process is gone: metadata
      `%{worker, os_pid, pool, reason}` (`{:worker_exited, status}`, `{:port_closed, r}`,
      `:start_failed`, `:recycled`, `:stopped`).
    * `[:port_bridge, :session, :rebuild]` - a fresh Python got its recorded state
      back (`PortBridge.Records`): measurements `%{duration, steps, failed}`;
      metadata `%{worker, os_pid, pool}`.

  LLM work:

    * `[:port_bridge, :lm, :call]` - one LM call made by a worker (from its
      `lm_call` event), emitted on the caller's node, in the caller's process:
      measurements `%{prompt_tokens, completion_tokens, cost_usd, duration}`
      (`cost_usd` nil when DSPy has no price for the model; `duration` native
      units); metadata `%{model, cached, session_id, program_id, command,
      error_category}` (`error_category` nil for a call that succeeded). A
      request asks its worker for these only while a handler is attached on the
      caller's node (under a rate limit a worker sends those of failed calls
      anyway, and of every call when the limit counts tokens);
      `PortBridge.DSPy` never shows them as stream items or `on_event` events.
    * `[:port_bridge, :lm, :admit]` - an LM call's admission under a rate limit
      (`PortBridge.Limiter`): measurements `%{duration}` (the time it waited, native
      units); metadata `%{model, result: :admitted | :timeout | :invalid | :error,
      limiter, leased}` (`leased`: the starts the admission leased the worker, 0 for
      none; a call started on a lease asks nothing and emits no event).
    * `[:port_bridge, :lm, :pause]` - a provider answered 429 with Retry-After:
      measurements `%{retry_after}` (ms); metadata `%{model, limiter}`.
    * `[:port_bridge, :callback, :start | :stop]` - an Elixir function the worker
      called back (`PortBridge.Callbacks`), in the task that runs it: measurements
      `%{system_time, monotonic_time}`, then `%{duration, monotonic_time}`; metadata
      `%{name, session_id, command}` (the request that asked), plus on stop
      `result: :ok | :error` and `error_category`.
    * `[:port_bridge, :batch, :start | :item | :stop]` - `PortBridge.DSPy.map/4`'s
      progress (`PortBridge.DSPy.Batch` lists their keys).

  `metrics/0` turns them into `Telemetry.Metrics` definitions for a reporter or
  Phoenix LiveDashboard.

  `:telemetry` is an optional dependency: without it these are no-ops and nothing
  else changes.
  """

  @compile {:no_warn_undefined, [:telemetry, Telemetry.Metrics]}
  @available Code.ensure_loaded?(:telemetry)
  @metrics Code.ensure_loaded?(Telemetry.Metrics)

  @doc false
  def __mix_recompile__?,
    do:
      Code.ensure_loaded?(:telemetry) != @available or
        Code.ensure_loaded?(Telemetry.Metrics) != @metrics

  @events [
    [:port_bridge, :request, :start],
    [:port_bridge, :request, :stop],
    [:port_bridge, :request, :exception],
    [:port_bridge, :worker, :start],
    [:port_bridge, :worker, :exit],
    [:port_bridge, :session, :rebuild],
    [:port_bridge, :lm, :call],
    [:port_bridge, :lm, :admit],
    [:port_bridge, :lm, :pause],
    [:port_bridge, :callback, :start],
    [:port_bridge, :callback, :stop],
    [:port_bridge, :batch, :start],
    [:port_bridge, :batch, :item],
    [:port_bridge, :batch, :stop]
  ]

  @doc "Every event the client emits (for `:telemetry.attach_many/4`)."
  @spec events() :: [[atom]]
  def events, do: @events

  @doc "True when this build emits events (`:telemetry` was compiled in)."
  @spec available?() :: boolean
  def available?, do: @available

  @doc false
  # True when a handler is attached to `event` (something to emit it for): one
  # look in telemetry's handler table, keyed by event name in every telemetry 1.x,
  # as :telemetry.execute/3 itself looks (nothing copied: this runs for every
  # request). Before the :telemetry application runs (compiled in but not started)
  # the table does not exist, and nothing is attached.
  @spec wanted?([atom]) :: boolean
  if @available do
    def wanted?(event) do
      :ets.member(:telemetry_handler_table, event)
    rescue
      ArgumentError -> false
    end
  else
    def wanted?(_event), do: false
  end

  # Whether any handler is attached to an event a request span serves (its own
  # events, and the LM calls it gives their context: session, command; see
  # lm_call/2): a request whose span nobody listens to builds no metadata.
  if @available do
    defp span_wanted? do
      wanted?([:port_bridge, :request, :start]) or wanted?([:port_bridge, :request, :stop]) or
        wanted?([:port_bridge, :request, :exception]) or wanted?([:port_bridge, :lm, :call])
    end
  end

  @doc false
  @spec execute([atom], map, map) :: :ok
  if @available do
    def execute(event, measurements, metadata),
      do: :telemetry.execute(event, measurements, metadata)
  else
    def execute(_event, _measurements, _metadata), do: :ok
  end

  @doc false
  # Starts a request span: the state `stop/2` and `exception/4` need, or nil.
  # `metadata` is a map, or a function that builds it (only called when events are
  # emitted: nothing is looked up for a build without telemetry).
  @spec start(map | (() -> map)) :: map | nil
  if @available do
    def start(metadata) when is_function(metadata, 0) do
      if span_wanted?(), do: start(metadata.()), else: nil
    end

    def start(metadata) do
      metadata = Map.put(metadata, :telemetry_span_context, make_ref())
      start = System.monotonic_time()

      :telemetry.execute(
        [:port_bridge, :request, :start],
        %{system_time: System.system_time(), monotonic_time: start},
        metadata
      )

      %{start: start, metadata: metadata}
    end
  else
    def start(_metadata), do: nil
  end

  @doc false
  @spec stop(map | nil, term) :: :ok
  def stop(nil, _result), do: :ok

  def stop(%{start: start, metadata: metadata}, result) do
    now = System.monotonic_time()

    {outcome, category, code} =
      case result do
        {:ok, _} -> {:ok, nil, nil}
        {:error, %{category: category, code: code}} -> {:error, category, code}
        :cancelled -> {:cancelled, nil, nil}
      end

    # What a program's run used (execute_program and the commands that report usage).
    {model, usage} =
      case result do
        {:ok, %{"usage" => usage} = reply} when is_map(usage) -> {reply["model"], usage}
        _ -> {nil, nil}
      end

    execute(
      [:port_bridge, :request, :stop],
      %{duration: now - start, monotonic_time: now},
      Map.merge(metadata, %{
        result: outcome,
        error_category: category,
        error_code: code,
        model: model,
        usage: usage
      })
    )
  end

  @doc false
  @spec exception(map | nil, atom, term, list) :: :ok
  def exception(nil, _kind, _reason, _stacktrace), do: :ok

  def exception(%{start: start, metadata: metadata}, kind, reason, stacktrace) do
    now = System.monotonic_time()

    execute(
      [:port_bridge, :request, :exception],
      %{duration: now - start, monotonic_time: now},
      Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: stacktrace})
    )
  end

  @doc """
  The `Telemetry.Metrics` definitions of these events, for a reporter or Phoenix
  LiveDashboard (`telemetry_metrics` in your dependencies):

      children = [
        {Telemetry.Metrics.ConsoleReporter, metrics: PortBridge.Telemetry.metrics()}
      ]

  Durations in milliseconds; LM calls by model: calls, tokens, cost and latency;
  admission waits and pauses by model; requests by command and outcome; batch
  items by program and outcome. Raises without `telemetry_metrics`.
  """
  @spec metrics() :: [struct]
  if @metrics do
    def metrics do
      import Telemetry.Metrics
      ms = {:native, :millisecond}

      [
        counter("port_bridge.request.stop.count", tags: [:command, :result]),
        summary("port_bridge.request.stop.duration", unit: ms, tags: [:command]),
        counter("port_bridge.lm.call.count", tags: [:model, :cached]),
        summary("port_bridge.lm.call.duration", unit: ms, tags: [:model]),
        sum("port_bridge.lm.call.prompt_tokens", tags: [:model]),
        sum("port_bridge.lm.call.completion_tokens", tags: [:model]),
        sum("port_bridge.lm.call.cost_usd", tags: [:model]),
        counter("port_bridge.lm.call.errors",
          event_name: [:port_bridge, :lm, :call],
          keep: &(&1.error_category != nil),
          tags: [:model, :error_category]
        ),
        summary("port_bridge.lm.admit.duration", unit: ms, tags: [:model, :result]),
        counter("port_bridge.lm.pause.count", tags: [:model]),
        summary("port_bridge.callback.stop.duration", unit: ms, tags: [:name, :result]),
        counter("port_bridge.batch.item.count", tags: [:program_id, :result]),
        summary("port_bridge.batch.item.duration", unit: ms, tags: [:program_id]),
        summary("port_bridge.worker.start.duration", unit: ms, tags: [:pool]),
        counter("port_bridge.worker.exit.count", tags: [:pool]),
        summary("port_bridge.session.rebuild.duration", unit: ms, tags: [:pool])
      ]
    end
  else
    def metrics do
      raise ArgumentError,
            "PortBridge.Telemetry.metrics/0 needs Telemetry.Metrics: add " <>
              "{:telemetry_metrics, \"~> 1.0\"} to your dependencies"
    end
  end

  @doc false
  # An `lm_call` event's data (from the worker: untrusted) as the measurements and
  # metadata of [:port_bridge, :lm, :call]; `context` adds session_id and command.
  @spec lm_call(map, map) :: :ok
  def lm_call(data, context) when is_map(data) do
    error = data["error"]

    execute(
      [:port_bridge, :lm, :call],
      %{
        prompt_tokens: count(data["prompt_tokens"]),
        completion_tokens: count(data["completion_tokens"]),
        cost_usd: if(is_number(data["cost_usd"]), do: data["cost_usd"]),
        duration: System.convert_time_unit(count(data["duration_us"]), :microsecond, :native)
      },
      Map.merge(context, %{
        model: string(data["model"]),
        cached: data["cached"] == true,
        program_id: string(data["program_id"]),
        error_category: (is_map(error) && string(error["category"])) || nil
      })
    )
  end

  def lm_call(_data, _context), do: :ok

  defp count(n) when is_integer(n) and n >= 0, do: n
  defp count(_), do: 0

  defp string(s) when is_binary(s), do: s
  defp string(_), do: nil
end
