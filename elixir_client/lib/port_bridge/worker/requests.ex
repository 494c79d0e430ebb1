defmodule PortBridge.Worker.Requests do
  @moduledoc false
  # The requests a PortBridge.Worker holds, as a pure value: each by its ref (the
  # caller's alias), by the id its frame was sent with, and, for a caller on another
  # node, by the monitor of that caller. No process, no I/O: the Worker keeps one in
  # its state.
  #
  # An entry: %{command, args, session_id, meta, timeout, deadline, callbacks, caller,
  # monitor, id}; `monitor` is nil for a caller on this node (the Worker's sweep sees
  # it die), `id` nil until its frame is sent (queued while the Python starts or
  # replays).

  defstruct by_ref: %{}, by_id: %{}, by_monitor: %{}

  @type entry :: %{
          required(:command) => String.t() | atom,
          required(:args) => map,
          required(:session_id) => String.t() | nil,
          required(:meta) => map | nil,
          required(:notify) => [String.t()] | nil,
          required(:timeout) => timeout,
          required(:deadline) => integer | :infinity,
          required(:callbacks) => map,
          required(:caller) => pid,
          required(:monitor) => reference | nil,
          required(:id) => integer | nil
        }
  @type t :: %__MODULE__{
          by_ref: %{reference => entry},
          by_id: %{integer => reference},
          by_monitor: %{reference => reference}
        }

  @spec new() :: t
  def new, do: %__MODULE__{}

  @doc false
  # A request held, sent (its id set) or not yet.
  @spec add(t, reference, entry) :: t
  def add(%__MODULE__{} = table, ref, %{monitor: monitor, id: id} = entry) do
    by_id = if id, do: Map.put(table.by_id, id, ref), else: table.by_id
    by_monitor = if monitor, do: Map.put(table.by_monitor, monitor, ref), else: table.by_monitor
    %{table | by_ref: Map.put(table.by_ref, ref, entry), by_id: by_id, by_monitor: by_monitor}
  end

  @doc false
  # The request's frame went out with `id`.
  @spec sent(t, reference, integer) :: t
  def sent(%__MODULE__{} = table, ref, id) do
    %{
      table
      | by_ref: Map.update!(table.by_ref, ref, &%{&1 | id: id}),
        by_id: Map.put(table.by_id, id, ref)
    }
  end

  @spec fetch(t, reference) :: {:ok, entry} | :error
  def fetch(%__MODULE__{by_ref: by_ref}, ref), do: Map.fetch(by_ref, ref)

  @doc false
  # The ref of the request sent with `id`.
  @spec ref_of_id(t, term) :: {:ok, reference} | :error
  def ref_of_id(%__MODULE__{by_id: by_id}, id), do: Map.fetch(by_id, id)

  @doc false
  # The ref of the request whose caller `monitor` watches.
  @spec ref_of_monitor(t, reference) :: {:ok, reference} | :error
  def ref_of_monitor(%__MODULE__{by_monitor: by_monitor}, monitor),
    do: Map.fetch(by_monitor, monitor)

  @doc false
  # Takes a request out: its entry (nil when there is none) and the rest.
  @spec pop(t, reference) :: {entry | nil, t}
  def pop(%__MODULE__{} = table, ref) do
    case Map.pop(table.by_ref, ref) do
      {nil, _} ->
        {nil, table}

      {entry, by_ref} ->
        by_monitor =
          if entry.monitor,
            do: Map.delete(table.by_monitor, entry.monitor),
            else: table.by_monitor

        {entry,
         %{
           table
           | by_ref: by_ref,
             by_id: Map.delete(table.by_id, entry.id),
             by_monitor: by_monitor
         }}
    end
  end

  @doc false
  # Requests held: queued or in flight.
  @spec size(t) :: non_neg_integer
  def size(%__MODULE__{by_ref: by_ref}), do: map_size(by_ref)

  @doc false
  # Requests whose frame went out and that have no reply yet.
  @spec in_flight(t) :: non_neg_integer
  def in_flight(%__MODULE__{by_id: by_id}), do: map_size(by_id)

  @doc false
  # The requests nobody waits for any more, with why: `:timeout` for those whose
  # deadline (monotonic ms) is `now` or earlier, `:orphaned` for those whose caller on
  # this node is gone.
  @spec stale(t, integer) :: [{reference, entry, :timeout | :orphaned}]
  def stale(%__MODULE__{by_ref: by_ref}, now) do
    for {ref, entry} <- by_ref, why = staleness(entry, now), do: {ref, entry, why}
  end

  defp staleness(%{deadline: deadline}, now) when deadline != :infinity and deadline <= now,
    do: :timeout

  defp staleness(%{monitor: nil, caller: caller}, _now),
    do: if(Process.alive?(caller), do: nil, else: :orphaned)

  defp staleness(_entry, _now), do: nil

  @spec refs(t) :: [reference]
  def refs(%__MODULE__{by_ref: by_ref}), do: Map.keys(by_ref)

  @doc false
  # The refs of the requests sent and unanswered.
  @spec sent_refs(t) :: [reference]
  def sent_refs(%__MODULE__{by_id: by_id}), do: Map.values(by_id)
end
