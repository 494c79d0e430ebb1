defmodule PortBridge.Request do
  @moduledoc """
  A request in flight, from `PortBridge.async_request/4`: await it, cancel it, or
  consume it as a stream of its events.

  While it runs, the calling process receives `{ref, {:event, name, data}}` for each
  event (`"chunk"`, `"progress"`, ...) and then `{ref, {:reply, result}}` once, where
  `ref` is `request.ref` and `result` is `{:ok, result}` or
  `{:error, %PortBridge.Error{}}`. `ref` is a monitor alias of the process serving
  the request (the worker, or the pool caller doing the checkout): if that process
  dies the caller gets a `communication` error, and once the request is awaited,
  cancelled or its stream halted, late messages are dropped by the runtime, never
  left in the mailbox.
  """

  alias PortBridge.Error

  @enforce_keys [:ref, :pid, :cancel]
  defstruct [:ref, :pid, :cancel, timeout: :infinity]

  @type t :: %__MODULE__{ref: reference, pid: pid, cancel: (() -> :ok), timeout: timeout}
  @type event :: {String.t(), term}

  # Beyond the request's own timeout (enforced by whoever serves it), how long the
  # caller waits before deciding the server itself is stuck.
  @margin_ms 5_000

  @doc false
  def new(pid, ref, cancel, timeout),
    do: %__MODULE__{ref: ref, pid: pid, cancel: cancel, timeout: timeout}

  @doc """
  Waits for the final reply, passing each event to `on_event` (a 1-arity function
  taking `{name, data}`) as it arrives.
  """
  @spec await(t, (event -> any) | nil) :: {:ok, term} | {:error, Error.t()}
  def await(%__MODULE__{} = request, on_event \\ nil) do
    case next(request) do
      {:event, name, data} ->
        if on_event, do: on_event.({name, data})
        await(request, on_event)

      {:done, result} ->
        result
    end
  end

  # The request's next message: `{:event, name, data}`, or `{:done, result}` once it
  # is over (its reply, the death of the process serving it, or that process stuck).
  defp next(%__MODULE__{ref: ref} = request) do
    receive do
      {^ref, {:event, name, data}} ->
        {:event, name, data}

      {^ref, {:reply, result}} ->
        Process.demonitor(ref, [:flush])
        {:done, result}

      {:DOWN, ^ref, _, _, reason} ->
        {:done, {:error, server_down(reason)}}
    after
      safety(request.timeout) ->
        cancel(request)
        {:done, {:error, stuck(request)}}
    end
  end

  @doc """
  Asks the worker to cancel the request (its final reply will be a `cancelled`
  error, unless it already finished) and stops listening: nothing more of this
  request reaches the caller.
  """
  @spec cancel(t) :: :ok
  def cancel(%__MODULE__{ref: ref, cancel: cancel}) do
    cancel.()
    Process.demonitor(ref, [:flush])
    flush(ref)
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

  defp safety(:infinity), do: :infinity
  defp safety(timeout), do: timeout + @margin_ms

  defp server_down(reason) do
    Error.new(
      :communication,
      "server_down",
      "the process serving the request exited: #{inspect(reason)}",
      %{
        "reason" => inspect(reason)
      }
    )
  end

  defp stuck(request) do
    Error.new(
      :communication,
      "no_reply",
      "#{inspect(request.pid)} did not answer within the request's timeout (#{request.timeout} ms) plus #{@margin_ms} ms",
      %{"timeout_ms" => request.timeout}
    )
  end
end
