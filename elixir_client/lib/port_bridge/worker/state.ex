defmodule PortBridge.Worker.State do
  @moduledoc false
  # What a PortBridge.Worker process holds.
  #
  #   config     how it was started (PortBridge.Worker.config!/2), never changed
  #   status     :idle (lazy, no Python yet), :starting (spawned, waiting for `ready`),
  #              :replaying (its :on_ready requests), :ready, :draining (finishing its
  #              requests before a replacement) or :down (between a death and a respawn)
  #   channel    the Port to the Python process, from its spawn (its `ready` data from
  #              the handshake on); nil while there is none
  #   outbox     what waits to be written to that port (PortBridge.Outbox)
  #   timer      the timer of the phase (:ready_timeout while starting, :replay_timeout
  #              while replaying)
  #   waiters    await_ready/2 callers
  #   failures   failed starts in a row
  #   next_id    the id of the next frame sent
  #   requests   the requests held (PortBridge.Worker.Requests)
  #   queue      refs of the requests waiting for a ready Python, oldest first
  #   replay     id => {command, session_id} of the :on_ready requests unanswered
  #   rebuild    {started, steps, failed} of the replay, for its telemetry event
  #   callbacks  the callbacks running for requests (PortBridge.Callbacks)
  #   spawned_at when the Python was spawned (monotonic, native units)
  #   sweep      the timer of the next sweep of overdue requests, or nil

  alias PortBridge.{Channel, Outbox}
  alias PortBridge.Worker.Requests

  @enforce_keys [:config]
  defstruct [
    :config,
    :channel,
    :outbox,
    :timer,
    :rebuild,
    :spawned_at,
    :sweep,
    status: :idle,
    waiters: [],
    failures: 0,
    next_id: 1,
    requests: %Requests{},
    queue: :queue.new(),
    replay: %{},
    callbacks: %{}
  ]

  @type status :: :idle | :starting | :replaying | :ready | :draining | :down
  @type t :: %__MODULE__{
          config: map,
          status: status,
          channel: Channel.t() | nil,
          outbox: Outbox.t() | nil,
          timer: reference | nil,
          waiters: [GenServer.from()],
          failures: non_neg_integer,
          next_id: pos_integer,
          requests: Requests.t(),
          queue: :queue.queue(reference),
          replay: %{integer => {String.t(), String.t() | nil}},
          rebuild: {integer, non_neg_integer, non_neg_integer} | nil,
          callbacks: map,
          spawned_at: integer | nil,
          sweep: reference | nil
        }

  @doc false
  # The port of the Python process, or nil.
  @spec port(t) :: port | nil
  def port(%__MODULE__{channel: nil}), do: nil
  def port(%__MODULE__{channel: channel}), do: channel.port

  @doc false
  # The OS pid of the Python process, or nil.
  @spec os_pid(t) :: pos_integer | nil
  def os_pid(%__MODULE__{channel: nil}), do: nil
  def os_pid(%__MODULE__{channel: channel}), do: channel.os_pid

  @doc false
  # Forgets the Python process (its port, outbox, phase timer and replay).
  @spec without_python(t) :: t
  def without_python(%__MODULE__{} = state) do
    if state.timer, do: Process.cancel_timer(state.timer)
    Outbox.close(state.outbox)
    %{state | channel: nil, outbox: nil, timer: nil, replay: %{}, rebuild: nil}
  end
end
