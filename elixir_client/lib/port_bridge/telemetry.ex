defmodule PortBridge.Telemetry do
  @moduledoc """
  `:telemetry` events, for dashboards and metrics (as Finch, Ecto and Req emit them).

  Every request is a span (each attempt of a retried one is a span of its own):

    * `[:port_bridge, :request, :start]` - measurements `%{system_time,
      monotonic_time}`; metadata `%{command, session_id, worker, os_pid, pool,
      telemetry_span_context}` (`worker`: the `PortBridge.Worker` pid; `os_pid`: its
      Python process at the start; `pool`: the pool's name, or nil).
    * `[:port_bridge, :request, :stop]` - measurements `%{duration,
      monotonic_time}` (native time units); the start metadata plus `result: :ok |
      :error | :cancelled` and `error_category` / `error_code` (nil on success).
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

  `:telemetry` is an optional dependency: without it these are no-ops and nothing
  else changes.
  """

  @compile {:no_warn_undefined, :telemetry}
  @available Code.ensure_loaded?(:telemetry)

  @doc false
  def __mix_recompile__?, do: Code.ensure_loaded?(:telemetry) != @available

  @doc "True when this build emits events (`:telemetry` was compiled in)."
  @spec available?() :: boolean
  def available?, do: @available

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
    def start(metadata) when is_function(metadata, 0), do: start(metadata.())

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

    execute(
      [:port_bridge, :request, :stop],
      %{duration: now - start, monotonic_time: now},
      Map.merge(metadata, %{result: outcome, error_category: category, error_code: code})
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
end
