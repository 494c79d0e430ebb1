defmodule PortBridge.Request do
  @moduledoc """
  A request in flight, from `PortBridge.async_request/4`: await it, cancel it, or
  consume it as a stream of its events.

  While it runs, the calling process receives `{ref, {:event, name, data}}` for each
  event (`"chunk"`, `"progress"`, ...) and then `{ref, {:reply, result}}` once, where
  `ref` is `request.ref` and `result` is `{:ok, result}` or
  `{:error, %PortBridge.Error{}}`. `ref` is an alias of the calling process: once
  the request is awaited, cancelled or its stream halted, late messages are dropped
  by the runtime, never left in the mailbox. The process serving the request (the
  `PortBridge.Worker`, or the task holding an exclusive checkout) is monitored: if
  it dies the caller gets a `communication` error.

  The caller keeps the request's deadline itself: `await/2` and `stream/1` return a
  `timeout` error at the deadline whatever the serving process is doing (stuck,
  suspended on a full pipe, gone), and tell it to cancel the request.
  """

  alias PortBridge.{Error, Telemetry}

  @enforce_keys [:ref, :pid, :cancel]
  defstruct [:ref, :pid, :cancel, :monitor, :span, timeout: :infinity, deadline: :infinity]

  @type t :: %__MODULE__{
          ref: reference,
          pid: pid,
          cancel: (() -> any),
          monitor: reference | nil,
          span: map | nil,
          timeout: timeout,
          deadline: integer | :infinity
        }
  @type event :: {String.t(), term}

  @doc false
  # `ref` is an alias that the serving process sends to; `monitor` monitors it (the
  # same reference when the alias came from `monitor(..., alias: :demonitor)`).
  # `span`: the telemetry span it belongs to (PortBridge.Telemetry.start/1), or nil.
  @spec new(
          pid,
          reference,
          (() -> any),
          timeout,
          integer | :infinity,
          reference | nil,
          map | nil
        ) :: t
  def new(pid, ref, cancel, timeout, deadline, monitor \\ nil, span \\ nil) do
    %__MODULE__{
      ref: ref,
      pid: pid,
      cancel: cancel,
      monitor: monitor || ref,
      span: span,
      timeout: timeout,
      deadline: deadline
    }
  end

  @doc false
  # The absolute deadline (monotonic ms, or :infinity) of a `:timeout`. Monotonic ms
  # are truncated: one more ms makes sure a deadline never comes early.
  @spec deadline(timeout) :: integer | :infinity
  def deadline(:infinity), do: :infinity
  def deadline(timeout) when is_integer(timeout), do: now() + timeout + 1

  @doc false
  # Milliseconds left before `deadline` (never negative), or :infinity.
  @spec remaining(integer | :infinity) :: non_neg_integer | :infinity
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - now(), 0)

  defp now, do: :erlang.monotonic_time(:millisecond)

  @doc """
  Waits for the final reply, passing each event to `on_event` (a 1-arity function
  taking `{name, data}`) as it arrives.
  """
  @spec await(t, (event -> any) | nil) :: {:ok, term} | {:error, Error.t()}
  def await(%__MODULE__{} = request, on_event \\ nil) do
    wait(request, on_event)
  catch
    kind, reason ->
      Telemetry.exception(request.span, kind, reason, __STACKTRACE__)
      cancel(request, nil)
      :erlang.raise(kind, reason, __STACKTRACE__)
  end

  defp wait(request, on_event) do
    case next(request) do
      {:event, name, data} ->
        if on_event, do: on_event.({name, data})
        wait(request, on_event)

      {:done, result} ->
        result
    end
  end

  # The request's next message: `{:event, name, data}`, or `{:done, result}` once it
  # is over (its reply, the death of the process serving it, or its deadline).
  defp next(%__MODULE__{ref: ref, monitor: monitor} = request) do
    receive do
      # An LM call the request made: telemetry on the caller's node, and an event
      # like any other (PortBridge.DSPy keeps it out of its streams and on_event).
      {^ref, {:event, "lm_call", data}} ->
        lm_call(request, data)
        {:event, "lm_call", data}

      {^ref, {:event, name, data}} ->
        {:event, name, data}

      {^ref, {:reply, result}} ->
        done(request, result)

      {:DOWN, ^monitor, _, _, reason} ->
        done(request, {:error, server_down(reason)})
    after
      remaining(request.deadline) ->
        result = {:error, timeout_error(request.timeout)}
        cancel(request, result)
        {:done, result}
    end
  end

  defp lm_call(%__MODULE__{span: %{metadata: metadata}}, data),
    do: Telemetry.lm_call(data, Map.take(metadata, [:session_id, :command]))

  defp lm_call(_request, _data), do: :ok

  @doc """
  Asks the worker to cancel the request (its final reply will be a `cancelled`
  error, unless it already finished) and stops listening: nothing more of this
  request reaches the caller.
  """
  @spec cancel(t) :: :ok
  def cancel(%__MODULE__{} = request), do: cancel(request, :cancelled)

  # `outcome`: what its telemetry span ends with (nil: it already ended).
  defp cancel(%__MODULE__{ref: ref, cancel: cancel} = request, outcome) do
    cancel.()
    done(request, outcome)
    flush(ref)
  end

  defp done(%__MODULE__{ref: ref, monitor: monitor, span: span}, outcome) do
    Process.demonitor(monitor, [:flush])
    # An alias made apart from its monitor is removed here; for one made by the
    # monitor, the demonitor above already did it.
    if monitor != ref, do: :erlang.unalias(ref)
    if outcome, do: Telemetry.stop(span, outcome)
    {:done, outcome}
  end

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  @doc """
  The request as a lazy stream: `{:event, name, data}` for each event, then one
  final `{:ok, result}` or `{:error, error}`. Halting the stream early (`Enum.take/2`,
  ...) cancels the request.
  """
  @spec stream(t) :: Enumerable.t()
  def stream(%__MODULE__{} = request) do
    Stream.resource(
      fn -> :running end,
      fn
        :done ->
          {:halt, :done}

        :running ->
          case next(request) do
            {:event, _name, _data} = event -> {[event], :running}
            {:done, result} -> {[result], :done}
          end
      end,
      fn
        :done -> :ok
        :running -> cancel(request)
      end
    )
  end

  @doc false
  # The error of a request whose :timeout ran out (whoever notices first: the
  # caller, the worker's timer, a checkout).
  @spec timeout_error(timeout) :: Error.t()
  def timeout_error(timeout) do
    Error.new(
      :timeout,
      "receive_timeout",
      "no reply within #{timeout} ms; cancel was sent to the worker " <>
        "(pass a larger :timeout if the work is expected to take longer)",
      %{"timeout_ms" => timeout}
    )
  end

  defp server_down(reason) do
    Error.new(
      :communication,
      "server_down",
      "the process serving the request exited: #{inspect(reason)}",
      %{"reason" => inspect(reason)}
    )
  end
end
