defmodule PortBridge.Test.StubTarget do
  @moduledoc false
  # A PortBridge.Test stub as a PortBridge.Target: what a call to a stubbed name is
  # served by (PortBridge.Call asks PortBridge.Test.target/1 before it resolves a target), so
  # every path that builds a PortBridge.Call (request, async_request, stream, every
  # PortBridge.DSPy function) reaches the stub and nothing else.
  #
  # A blocking call runs the stub in the caller's process (events to its :on_event).
  # A call that is not awaited runs it in a process of its own, which carries the
  # caller in its `$callers` (so the caller's stubs still apply to requests the stub
  # makes) and answers as a Worker does: `{ref, {:event, name, data}}` messages, then
  # `{ref, {:reply, result}}`, to an alias of the caller.

  @behaviour PortBridge.Target

  alias PortBridge.{Call, Request, Test}

  @impl true
  def default_timeout(_fun), do: PortBridge.Options.default_timeout()

  # Nothing is recorded for a stub: the test's function is the whole worker.
  @impl true
  def journal(_fun), do: nil

  @impl true
  def call(fun, %Call{} = call) do
    emit = fn name, data -> if call.on_event, do: call.on_event.({name, data}) end
    Test.answer(fun, call, emit)
  end

  @impl true
  def async(fun, %Call{} = call) do
    caller = self()
    callers = [caller | Process.get(:"$callers", [])]
    ref = :erlang.alias()

    {pid, monitor} =
      spawn_monitor(fn ->
        Process.put(:"$callers", callers)
        emit = fn name, data -> send(ref, {ref, {:event, name, data}}) end

        result =
          try do
            Test.answer(fun, call, emit)
          rescue
            exception ->
              {:error,
               PortBridge.Error.new(:internal, "stub_raised", Exception.message(exception))}
          end

        send(ref, {ref, {:reply, result}})
      end)

    Request.new(
      pid,
      ref,
      fn -> Process.exit(pid, :kill) end,
      call.timeout,
      call.deadline,
      monitor
    )
  end
end
