defmodule PortBridge.Writer do
  @moduledoc false
  # Writes the frames a port would not take at once. `Port.command/2` suspends the
  # calling process while the port's queue is full, which happens when the Python
  # process stops reading its stdin (stopped, hung, swamped) and its pipe fills up.
  # `PortBridge.Worker` writes with `:nosuspend` and, when the port is busy, hands
  # the frame here: this process is the only one that ever blocks on the port, so
  # the Worker keeps answering its callers (their deadlines, cancels, replies) and
  # no caller waits past its :timeout for a write.
  #
  # One frame at a time: the Worker sends `{:write, frame}` and gets `{:written,
  # writer}` back once the port took it, so the Worker can still drop frames of
  # abandoned requests that are waiting behind it. Linked to the Worker; any
  # process may call Port.command on a port, the connected one need not.

  @spec start_link(port) :: pid
  def start_link(port) do
    worker = self()
    spawn_link(fn -> loop(port, worker) end)
  end

  defp loop(port, worker) do
    receive do
      {:write, frame} ->
        try do
          Port.command(port, frame)
        rescue
          # The port closed: the Worker hears of it from the port itself.
          ArgumentError -> :ok
        end

        send(worker, {:written, self()})
        loop(port, worker)
    end
  end
end
