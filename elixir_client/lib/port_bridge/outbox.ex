defmodule PortBridge.Outbox do
  @moduledoc false
  # The frames a PortBridge.Worker writes to its Port: in order, and never blocking
  # the Worker.
  #
  # `Port.command/2` suspends the calling process while the port's queue is full,
  # which happens when the Python process stops reading its stdin (stopped, hung,
  # swamped) and its pipe fills up. A frame goes out with `:nosuspend` when nothing
  # waits before it; what the port will not take waits here, in order, and a writer
  # process (linked to the Worker) takes the frames one at a time with a blocking
  # `Port.command`: it is the only process that ever blocks on the port, so the
  # Worker keeps answering its callers (their deadlines, cancels, replies) and no
  # caller waits past its :timeout for a write. Any process may call Port.command on
  # a port; the connected one need not.
  #
  # Frames are tagged (a request's ref, or nil): a frame still waiting here can be
  # dropped (its request was abandoned before it ever reached the Python process).

  alias PortBridge.Channel

  defstruct [:port, :writer, pending: :queue.new(), writing: false]

  @type t :: %__MODULE__{
          port: port,
          writer: pid | nil,
          pending: :queue.queue({term, iodata}),
          writing: boolean
        }

  @spec new(port) :: t
  def new(port), do: %__MODULE__{port: port}

  @doc false
  # Writes `frame` now if nothing waits before it and the port takes it; else it waits.
  @spec write(t, term, iodata) :: t
  def write(%__MODULE__{} = box, tag, frame) do
    if box.writing or not :queue.is_empty(box.pending),
      do: %{box | pending: :queue.in({tag, frame}, box.pending)},
      else: write_now(box, frame)
  end

  defp write_now(box, frame) do
    case Channel.write(box.port, frame) do
      :busy ->
        writer = box.writer || start_writer(box.port)
        send(writer, {:write, frame})
        %{box | writer: writer, writing: true}

      # :ok, or the port is closed: its owner hears of that from the port.
      _ ->
        box
    end
  end

  @doc false
  # The writer took its frame (`{:written, writer}` reached the owner): write on.
  @spec written(t) :: t
  def written(%__MODULE__{} = box), do: flush(%{box | writing: false})

  defp flush(box) do
    case :queue.out(box.pending) do
      {{:value, {_tag, frame}}, pending} ->
        box = write_now(%{box | pending: pending}, frame)
        if box.writing, do: box, else: flush(box)

      {:empty, _} ->
        box
    end
  end

  @doc false
  # Whether a frame tagged `tag` still waits here (has not reached the port).
  @spec waiting?(t | nil, term) :: boolean
  def waiting?(nil, _tag), do: false

  def waiting?(%__MODULE__{pending: pending}, tag),
    do: Enum.any?(:queue.to_list(pending), &match?({^tag, _}, &1))

  @doc false
  # Forgets the frames tagged `tag` that still wait.
  @spec drop(t, term) :: t
  def drop(%__MODULE__{} = box, tag),
    do: %{box | pending: :queue.filter(fn {t, _} -> t != tag end, box.pending)}

  @doc false
  # The port is gone: stop its writer, forget what waits.
  @spec close(t | nil) :: :ok
  def close(nil), do: :ok
  def close(%__MODULE__{writer: nil}), do: :ok

  def close(%__MODULE__{writer: writer}) do
    Process.exit(writer, :kill)
    :ok
  end

  defp start_writer(port) do
    owner = self()
    spawn_link(fn -> writer_loop(port, owner) end)
  end

  defp writer_loop(port, owner) do
    receive do
      {:write, frame} ->
        try do
          Port.command(port, frame)
        rescue
          # The port closed: its owner hears of it from the port itself.
          ArgumentError -> :ok
        end

        send(owner, {:written, self()})
        writer_loop(port, owner)
    end
  end
end
