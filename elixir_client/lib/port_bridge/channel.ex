defmodule PortBridge.Channel do
  @moduledoc """
  One Port to one `portbridge worker` process: spawning it, the `ready` handshake,
  frames in and out, and closing it so that the OS process surely ends.

  This is the layer `PortBridge.Worker` (one owner, many callers) and
  `PortBridge.Pool` (the port handed to one caller at a time) share. The port is
  opened with `{:packet, 4}`, so every message is one frame; the worker's stderr
  (its logs) goes to the BEAM's stderr.

  A channel is a plain struct: whoever holds `port` (its connected process) is the
  only one that may send on it and receives its frames.
  """

  require Logger
  alias PortBridge.{Codec, Error, Protocol, Reaper}

  # Until `ready` announces the worker's own limits: its defaults (grace: 1 s + 1 s).
  @default_max_frame_bytes 64 * 1024 * 1024
  @default_grace_ms 2_000

  @enforce_keys [:port, :os_pid, :format]
  defstruct [
    :port,
    :os_pid,
    :format,
    :ready,
    max_frame_bytes: @default_max_frame_bytes,
    grace_ms: @default_grace_ms
  ]

  @type t :: %__MODULE__{
          port: port,
          os_pid: pos_integer,
          format: Codec.format(),
          ready: map | nil,
          max_frame_bytes: pos_integer,
          grace_ms: non_neg_integer
        }

  # How long the worker may take to answer the cancel of a timed-out request
  # (cancel is a control command: answered at once, even under load).
  @cancel_grace_ms 2_000

  @doc """
  Spawns the worker without waiting for it; the calling process owns the port.
  Returns the port and the OS pid, watched by `PortBridge.Reaper` on behalf of
  `reaper_owner` (the process whose death must take the OS process with it).
  """
  @spec spawn(map, pid) :: {:ok, port, pos_integer} | {:error, Error.t()}
  def spawn(spawn_opts, reaper_owner \\ self()) do
    port_opts =
      [
        :binary,
        {:packet, 4},
        :exit_status,
        :use_stdio,
        :hide,
        args: spawn_opts.args,
        env: spawn_opts.env
      ] ++
        if(spawn_opts.cd, do: [cd: spawn_opts.cd], else: [])

    port = Port.open({:spawn_executable, spawn_opts.executable}, port_opts)
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    :ok = Reaper.watch(os_pid, reaper_owner, @default_grace_ms)
    {:ok, port, os_pid}
  rescue
    e in [ErlangError, ArgumentError] ->
      {:error,
       Error.new(
         :initialization,
         "spawn_failed",
         "cannot spawn #{spawn_opts.executable}: #{Exception.message(e)}",
         %{
           "executable" => spawn_opts.executable
         }
       )}
  end

  @doc """
  Spawns the worker and waits (in the calling process, which owns the port) for its
  `ready` event, up to `spawn_opts.ready_timeout` ms.
  """
  @spec open(map, pid) :: {:ok, t} | {:error, Error.t()}
  def open(spawn_opts, reaper_owner \\ self()) do
    with {:ok, port, os_pid} <- __MODULE__.spawn(spawn_opts, reaper_owner) do
      receive do
        {^port, {:data, payload}} ->
          case handshake(port, os_pid, spawn_opts.format, payload) do
            {:ok, channel} ->
              {:ok, channel}

            {:error, error} ->
              close(%__MODULE__{port: port, os_pid: os_pid, format: spawn_opts.format})
              {:error, error}
          end

        {^port, {:exit_status, status}} ->
          Reaper.forget(os_pid)
          {:error, start_failed(spawn_opts.executable, status)}
      after
        spawn_opts.ready_timeout ->
          # Not ready in time: stuck, no reason to give it a grace period.
          close(%__MODULE__{port: port, os_pid: os_pid, format: spawn_opts.format}, grace_ms: 0)
          {:error, ready_timeout(spawn_opts.ready_timeout)}
      end
    end
  end

  @doc """
  Checks the first frame a worker wrote, which must be its `ready` event, and builds
  the channel from it (limits, grace period).
  """
  @spec handshake(port, pos_integer, Codec.format(), binary) :: {:ok, t} | {:error, Error.t()}
  def handshake(port, os_pid, format, payload) do
    with {:ok, frame} <- decode_payload(format, payload),
         {:event, nil, "ready", data} <- Protocol.classify(frame),
         {:ok, data} <- Protocol.check_ready(data) do
      limits = Map.get(data, "limits") || %{}
      grace_ms = round((limits["shutdown_grace_s"] || 1.0) * 1000) + 1_000
      Reaper.watch_grace(os_pid, grace_ms)

      {:ok,
       %__MODULE__{
         port: port,
         os_pid: os_pid,
         format: format,
         ready: data,
         max_frame_bytes: limits["max_frame_bytes"] || @default_max_frame_bytes,
         grace_ms: grace_ms
       }}
    else
      {:error, %Error{} = error} ->
        {:error, error}

      other ->
        {:error,
         Error.new(
           :initialization,
           "no_ready",
           "the worker's first frame was not its ready event",
           %{
             "frame" => inspect(other, limit: 10, printable_limit: 200)
           }
         )}
    end
  end

  defp decode_payload(format, payload) do
    Codec.decode(payload, format)
    |> codec_failure(
      :communication,
      "undecodable_frame",
      "the worker wrote a frame that is not valid #{format}"
    )
  end

  defp encode_payload(format, request) do
    Codec.encode(request, format)
    |> codec_failure(
      :serialization,
      "unencodable_request",
      "the request cannot be encoded as #{format}"
    )
  end

  defp codec_failure({:ok, _} = ok, _category, _code, _message), do: ok

  defp codec_failure({:error, reason}, category, code, message) do
    {:error,
     Error.new(category, code, message, %{
       "reason" => inspect(reason, limit: 10, printable_limit: 200)
     })}
  end

  @doc "Decodes a frame from the worker and tells what it is (see `PortBridge.Protocol.classify/1`)."
  @spec decode(t, binary) :: Protocol.frame() | {:error, Error.t()}
  def decode(%__MODULE__{format: format}, payload) do
    with {:ok, frame} <- decode_payload(format, payload), do: Protocol.classify(frame)
  end

  @doc """
  Encodes a request frame, refusing one larger than the worker's `max_frame_bytes`
  (the worker would skip it and could only answer with `id: null`).
  """
  @spec encode(t, Protocol.id(), String.t() | atom, map, keyword) ::
          {:ok, iodata} | {:error, Error.t()}
  def encode(%__MODULE__{} = channel, id, command, args, opts) do
    with {:ok, request} <- Protocol.request(id, command, args, opts),
         {:ok, payload} <- encode_payload(channel.format, request) do
      size = IO.iodata_length(payload)

      if size > channel.max_frame_bytes do
        {:error,
         Error.new(
           :protocol,
           "frame_too_large",
           "the request is #{size} bytes, above the worker's max_frame_bytes (#{channel.max_frame_bytes}); " <>
             "raise it with worker_args: [\"--max-frame-bytes\", \"N\"]",
           %{"size" => size, "max_frame_bytes" => channel.max_frame_bytes}
         )}
      else
        {:ok, payload}
      end
    end
  end

  @doc "Writes a frame. Only the port's connected process may call this."
  @spec send_frame(t, iodata) :: :ok | {:error, Error.t()}
  def send_frame(%__MODULE__{port: port}, payload) do
    Port.command(port, payload)
    :ok
  rescue
    ArgumentError -> {:error, port_closed(:closed)}
  end

  @doc """
  Closes the port and makes sure the OS process ends: it exits by itself on stdin
  EOF within its grace period, or the reaper signals it.
  """
  @spec close(t, keyword) :: :ok
  def close(%__MODULE__{port: port, os_pid: os_pid}, opts \\ []) do
    try do
      Port.close(port)
    rescue
      ArgumentError -> :ok
    end

    Reaper.reap(os_pid, opts[:grace_ms])
  end

  @doc """
  Sends one request and waits for its final reply, on a port the calling process
  holds exclusively (a pool checkout). Events for the request go to `:on_event`.

  Returns `{result, checkin}` where `checkin` says whether the port can be reused:
  `:ok`, or `{:remove, reason}` when the worker died, broke a frame, or did not
  answer a timed-out request's cancel.

  Options: `:timeout` (ms or `:infinity`; at the deadline `cancel` is sent and the
  result is a `timeout` error), `:on_event`, `:session_id`, `:meta`, `:owner` (a pid:
  if it dies the request is cancelled), `:cancel_tag` (a `{tag, :cancel}` message
  cancels the request).
  """
  @spec exchange(t, String.t() | atom, map, keyword) ::
          {{:ok, term} | {:error, Error.t()}, :ok | {:remove, term}}
  def exchange(%__MODULE__{} = channel, command, args, opts) do
    id = System.unique_integer([:positive])
    timeout = Keyword.get(opts, :timeout, :infinity)

    envelope =
      [timeout_ms: Protocol.worker_timeout_ms(timeout)] ++
        Keyword.take(opts, [:session_id, :meta])

    with {:ok, frame} <- encode(channel, id, command, args, envelope),
         :ok <- send_frame(channel, frame) do
      port_ref = Port.monitor(channel.port)
      owner_ref = if owner = opts[:owner], do: Process.monitor(owner)

      wait = %{
        id: id,
        channel: channel,
        port_ref: port_ref,
        owner_ref: owner_ref,
        cancel_tag: opts[:cancel_tag],
        on_event: opts[:on_event],
        deadline: deadline(timeout),
        timeout: timeout,
        cancel_id: nil
      }

      result = await(wait)
      Process.demonitor(port_ref, [:flush])
      if owner_ref, do: Process.demonitor(owner_ref, [:flush])
      result
    else
      {:error, %Error{category: :communication} = error} -> {{:error, error}, {:remove, :closed}}
      {:error, error} -> {{:error, error}, :ok}
    end
  end

  defp await(%{channel: %{port: port}, id: id, port_ref: port_ref} = wait) do
    receive do
      {^port, {:data, payload}} ->
        case decode(wait.channel, payload) do
          {:reply, ^id, result, _meta} ->
            finish(wait, result)

          {:event, ^id, name, data} ->
            deliver(wait.on_event, name, data)
            await(wait)

          {:error, error} ->
            {{:error, error}, {:remove, :undecodable_frame}}

          other ->
            stray(wait.channel, other)
            await(wait)
        end

      {^port, {:exit_status, status}} ->
        Reaper.forget(wait.channel.os_pid)
        {{:error, exited(status)}, {:remove, {:exit_status, status}}}

      {:DOWN, ^port_ref, :port, _, reason} ->
        {{:error, port_closed(reason)}, {:remove, :closed}}

      {tag, :cancel} when tag != nil and tag == wait.cancel_tag ->
        await(send_cancel(wait))

      {:DOWN, ref, :process, _, _} when ref != nil and ref == wait.owner_ref ->
        await(send_cancel(%{wait | owner_ref: nil}))
    after
      remaining(wait.deadline) ->
        wait = send_cancel(wait)

        drain_cancelled(
          %{wait | deadline: deadline(@cancel_grace_ms)},
          receive_timeout(wait.timeout)
        )
    end
  end

  # After a receive timeout: wait (briefly) for the cancelled request's final reply
  # and the cancel's own reply, so the port is clean before it goes back.
  defp drain_cancelled(%{channel: %{port: port}, id: id, cancel_id: cancel_id} = wait, error) do
    if id == nil and cancel_id == nil do
      {{:error, error}, :ok}
    else
      receive do
        {^port, {:data, payload}} ->
          case decode(wait.channel, payload) do
            {:reply, ^id, _result, _} -> drain_cancelled(%{wait | id: nil}, error)
            {:reply, ^cancel_id, _result, _} -> drain_cancelled(%{wait | cancel_id: nil}, error)
            {:error, _} -> {{:error, error}, {:remove, :undecodable_frame}}
            _event_or_stray -> drain_cancelled(wait, error)
          end

        {^port, {:exit_status, status}} ->
          Reaper.forget(wait.channel.os_pid)
          {{:error, error}, {:remove, {:exit_status, status}}}

        {:DOWN, ref, :port, _, _} when ref == wait.port_ref ->
          {{:error, error}, {:remove, :closed}}
      after
        remaining(wait.deadline) -> {{:error, error}, {:remove, :cancel_unanswered}}
      end
    end
  end

  defp finish(%{cancel_id: nil}, result), do: {result, :ok}

  # The request was cancelled by its owner: its final reply came; also take the
  # cancel's own reply off the port.
  defp finish(wait, result) do
    {_, checkin} = drain_cancelled(%{wait | id: nil, deadline: deadline(@cancel_grace_ms)}, nil)
    {result, checkin}
  end

  defp send_cancel(%{cancel_id: nil} = wait) do
    cancel_id = System.unique_integer([:positive])
    _ = send_cancel(wait.channel, cancel_id, wait.id)
    %{wait | cancel_id: cancel_id}
  end

  defp send_cancel(wait), do: wait

  defp deliver(nil, _name, _data), do: :ok
  defp deliver(fun, name, data) when is_function(fun, 1), do: fun.({name, data})

  @doc "Sends `cancel` (request id `cancel_id`) for the request `request_id`; its reply is the caller's to ignore."
  @spec send_cancel(t, Protocol.id(), Protocol.id()) :: :ok | {:error, Error.t()}
  def send_cancel(channel, cancel_id, request_id) do
    {:ok, frame} = encode(channel, cancel_id, "cancel", %{"request_id" => request_id}, [])
    send_frame(channel, frame)
  end

  @doc false
  # Frames no caller is waiting for: worker-level log events, id-null errors (a frame
  # the worker could not read), late replies of requests that already timed out.
  def stray(channel, frame) do
    case frame do
      {:event, _id, "log", data} when is_map(data) ->
        level = log_level(data["level"])

        Logger.log(level, fn -> "portbridge worker #{channel.os_pid}: #{data["message"]}" end,
          portbridge_request_id: data["request_id"],
          trace_id: data["trace_id"]
        )

      {:reply, nil, {:error, error}, _meta} ->
        Logger.warning(
          "portbridge worker #{channel.os_pid} answered a frame it could not read: " <>
            Exception.message(error)
        )

      {:unknown, other} ->
        Logger.warning(
          "portbridge worker #{channel.os_pid} wrote an unexpected frame: #{inspect(other, limit: 10)}"
        )

      _late_reply_or_event ->
        :ok
    end
  end

  defp log_level(level) when level in ["debug", "info", "warning", "error"],
    do: String.to_existing_atom(level)

  defp log_level("critical"), do: :error
  defp log_level(_), do: :info

  @doc false
  def deadline(:infinity), do: :infinity
  def deadline(ms), do: System.monotonic_time(:millisecond) + ms

  @doc false
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  ## Errors the client itself reports

  @doc false
  def exited(status) do
    Error.new(
      :communication,
      "worker_exited",
      "the worker process exited (status #{status}) before answering",
      %{
        "exit_status" => status
      }
    )
  end

  @doc false
  def port_closed(reason) do
    Error.new(
      :communication,
      "port_closed",
      "the port to the worker closed (#{inspect(reason)})",
      %{
        "reason" => inspect(reason)
      }
    )
  end

  @doc false
  def receive_timeout(timeout) do
    Error.new(
      :timeout,
      "receive_timeout",
      "no reply within #{timeout} ms; cancel was sent to the worker " <>
        "(pass a larger :timeout if the work is expected to take longer)",
      %{"timeout_ms" => timeout}
    )
  end

  @doc false
  # An exit before `ready`. Killed by a signal (status 128 + n: SIGKILL from outside,
  # the OOM killer; the worker's own exit codes are 0 to 3) is the process dying, not
  # a start that cannot work: whoever waited for it gets `communication` (retryable),
  # as when a ready worker is killed.
  def start_failed(executable, status) when status > 128 do
    Error.new(
      :communication,
      "worker_exited",
      "the worker process (#{executable}) was killed by signal #{status - 128} before it was ready",
      %{"exit_status" => status, "signal" => status - 128, "executable" => executable}
    )
  end

  def start_failed(executable, status) do
    Error.new(
      :initialization,
      "worker_start_failed",
      "the worker (#{executable}) exited with status #{status} before it was ready " <>
        "(2: bad command line or backend registration; see its stderr)",
      %{"exit_status" => status, "executable" => executable}
    )
  end

  @doc false
  def ready_timeout(ms) do
    Error.new(
      :initialization,
      "ready_timeout",
      "the worker sent no ready event within #{ms} ms (:ready_timeout)",
      %{
        "ready_timeout_ms" => ms
      }
    )
  end
end
