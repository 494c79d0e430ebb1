defmodule PortBridge.Channel do
  @moduledoc """
  One Port to one `portbridge worker` process: spawning it, the `ready` handshake,
  frames in and out, and closing it so that the OS process surely ends.

  Plain functions, no process: `PortBridge.Worker`, the one request engine, owns
  the port and calls them. The port is opened with `{:packet, 4}`, so every message
  is one frame; the worker's stderr (its logs) goes to the BEAM's stderr.
  """

  require Logger
  alias PortBridge.{Codec, Error, Protocol, Reaper}

  # Until `ready` announces the worker's own limits: its defaults, from
  # protocol/limits.json (grace: the worker's shutdown grace + 1 s).
  @default_max_frame_bytes Protocol.worker_default("max_frame_bytes")
  @default_grace_s Protocol.worker_default("shutdown_grace_s")
  @grace_margin_ms 1_000
  @default_grace_ms round(@default_grace_s * 1000) + @grace_margin_ms

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

  @doc """
  Spawns the worker without waiting for it; the calling process owns the port.
  Returns the channel (its `ready` still nil: see `handshake/2`), whose OS process is
  watched by `PortBridge.Reaper` on behalf of `reaper_owner` (the process whose death
  must take the OS process with it).
  """
  @spec spawn(map, pid) :: {:ok, t} | {:error, Error.t()}
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
    {:ok, %__MODULE__{port: port, os_pid: os_pid, format: spawn_opts.format}}
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
  Checks the first frame a worker wrote, which must be its `ready` event, and
  completes the channel from it (its `ready` data, limits, grace period).
  """
  @spec handshake(t, binary) :: {:ok, t} | {:error, Error.t()}
  def handshake(%__MODULE__{os_pid: os_pid, format: format} = channel, payload) do
    with {:ok, frame} <- decode_payload(format, payload),
         {:event, nil, "ready", data} <- Protocol.classify(frame),
         {:ok, data} <- Protocol.check_ready(data) do
      # Untrusted like every frame: a limit of the wrong type falls back to the default.
      limits = if is_map(data["limits"]), do: data["limits"], else: %{}

      grace_s =
        case limits["shutdown_grace_s"] do
          grace when is_number(grace) and grace >= 0 and grace <= 3_600 -> grace
          _ -> @default_grace_s
        end

      max_frame_bytes =
        case limits["max_frame_bytes"] do
          max when is_integer(max) and max > 0 -> max
          _ -> @default_max_frame_bytes
        end

      grace_ms = round(grace_s * 1000) + @grace_margin_ms
      Reaper.watch_grace(os_pid, grace_ms)

      {:ok, %{channel | ready: data, max_frame_bytes: max_frame_bytes, grace_ms: grace_ms}}
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

  # The messages are built only for a frame that fails (this runs for every frame).
  defp decode_payload(format, payload) do
    case Codec.decode(payload, format) do
      {:ok, _} = ok ->
        ok

      {:error, reason} ->
        codec_error(
          :communication,
          "undecodable_frame",
          "the worker wrote a frame that is not valid #{format}",
          reason
        )
    end
  end

  defp encode_payload(format, request) do
    case Codec.encode(request, format) do
      {:ok, _} = ok ->
        ok

      {:error, reason} ->
        codec_error(
          :serialization,
          "unencodable_request",
          "the request cannot be encoded as #{format}",
          reason
        )
    end
  end

  defp codec_error(category, code, message, reason) do
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
  Encodes a request frame of values already checked (`PortBridge.Protocol.check/4`),
  refusing one larger than the worker's `max_frame_bytes` (the worker would skip it
  and could only answer with `id: null`).
  """
  @spec encode(
          t,
          Protocol.id(),
          String.t() | atom,
          map,
          String.t() | nil,
          pos_integer | nil,
          map | nil,
          [String.t()] | nil
        ) ::
          {:ok, iodata} | {:error, Error.t()}
  def encode(
        %__MODULE__{} = channel,
        id,
        command,
        args,
        session_id,
        timeout_ms,
        meta,
        notify \\ nil
      ) do
    request = Protocol.envelope(id, command, args, session_id, timeout_ms, meta, notify)

    with {:ok, payload} <- encode_payload(channel.format, request) do
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

  @doc """
  Writes a frame without ever blocking the caller: `:ok` when the port took it,
  `:busy` when the port's queue is full (the worker stopped reading: the frame was
  not written, write it later from a process that may block, see
  `PortBridge.Outbox`), `{:error, error}` when the port is closed.
  """
  @spec write(t | port, iodata) :: :ok | :busy | {:error, Error.t()}
  def write(%__MODULE__{port: port}, payload), do: write(port, payload)

  def write(port, payload) when is_port(port) do
    if Port.command(port, payload, [:nosuspend]), do: :ok, else: :busy
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

  @doc false
  # Frames no caller is waiting for: worker-level log events, id-null errors (a frame
  # the worker could not read), late replies of requests that already timed out.
  # The worker is untrusted: whatever the shapes, this logs and returns.
  @spec stray(t, Protocol.frame() | {:unknown, term}) :: :ok
  def stray(channel, frame) do
    case frame do
      {:event, _id, "log", %{} = data} ->
        Logger.log(
          log_level(data["level"]),
          fn -> "portbridge worker #{channel.os_pid}: #{text(data["message"])}" end,
          portbridge_request_id: data["request_id"],
          portbridge_session_id: data["session_id"],
          portbridge_logger: data["logger"],
          trace_id: data["trace_id"]
        )

      {:reply, nil, {:error, error}, _meta} ->
        Logger.warning(
          "portbridge worker #{channel.os_pid} answered a frame it could not read: " <>
            Exception.message(error)
        )

      {:unknown, other} ->
        Logger.warning(
          "portbridge worker #{channel.os_pid} wrote an unexpected frame: #{inspect(other, limit: 10, printable_limit: 200)}"
        )

      _late_reply_or_event ->
        :ok
    end
  end

  defp text(message) when is_binary(message), do: message
  defp text(other), do: inspect(other, limit: 10, printable_limit: 500)

  defp log_level(level) when level in ["debug", "info", "warning", "error"],
    do: String.to_existing_atom(level)

  defp log_level("critical"), do: :error
  defp log_level(_), do: :info

  ## Errors the client itself reports

  @doc false
  @spec exited(integer) :: Error.t()
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
  @spec port_closed(term) :: Error.t()
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
  # An exit before `ready`. Killed by a signal (status 128 + n: SIGKILL from outside,
  # the OOM killer; the worker's own exit codes are 0 to 3) is the process dying, not
  # a start that cannot work: whoever waited for it gets `communication` (retryable),
  # as when a ready worker is killed. Otherwise the error carries the end of what
  # the worker wrote to stderr, when it can be had (see stderr_tail/1).
  @spec start_failed(map, non_neg_integer) :: Error.t()
  def start_failed(%{executable: executable}, status) when status > 128 do
    Error.new(
      :communication,
      "worker_exited",
      "the worker process (#{executable}) was killed by signal #{status - 128} before it was ready",
      %{"exit_status" => status, "signal" => status - 128, "executable" => executable}
    )
  end

  def start_failed(%{executable: executable} = spawn_opts, status) do
    details = %{"exit_status" => status, "executable" => executable}

    {why, details} =
      case stderr_tail(spawn_opts) do
        nil -> {" (see its stderr)", details}
        "" -> {" (and wrote nothing to stderr)", Map.put(details, "stderr", "")}
        tail -> {"; its stderr ends with:\n" <> tail, Map.put(details, "stderr", tail)}
      end

    Error.new(
      :initialization,
      "worker_start_failed",
      "the worker (#{executable}) exited with status #{status} before it was ready" <> why,
      details
    )
  end

  # A Port carries the worker's stdout (the frames) and cannot capture its stderr
  # apart: the worker's stderr is the BEAM's. So when a worker spawned from
  # `:python` (our own command, `python -m bridge worker ...`) exits before `ready`,
  # the same command runs once more with stdin from /dev/null, stdout discarded and
  # stderr captured, and the end of that stderr goes into the error ("No module
  # named bridge"). Nothing is paid while workers start fine. A caller's own
  # `:executable` is never run twice (it may have side effects): nil.
  @stderr_tail_bytes 2_048
  @probe_ms 5_000

  defp stderr_tail(%{probe_stderr: true} = spawn_opts) do
    script = ~S(exec "$0" "$@" </dev/null 2>&1 >/dev/null)
    sh = System.find_executable("sh") || "/bin/sh"

    port =
      Port.open(
        {:spawn_executable, sh},
        [
          :binary,
          :exit_status,
          :hide,
          args: ["-c", script, spawn_opts.executable | spawn_opts.args],
          env: spawn_opts.env
        ] ++ if(spawn_opts.cd, do: [cd: spawn_opts.cd], else: [])
      )

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    :ok = Reaper.watch(os_pid, self(), 0)
    tail(collect(port, os_pid, "", System.monotonic_time(:millisecond) + @probe_ms))
  rescue
    _ in [ErlangError, ArgumentError] -> nil
  end

  defp stderr_tail(_spawn_opts), do: nil

  defp collect(port, os_pid, acc, deadline) do
    receive do
      {^port, {:data, data}} ->
        collect(port, os_pid, keep_end(acc <> data), deadline)

      {^port, {:exit_status, _}} ->
        Reaper.forget(os_pid)
        acc
    after
      max(deadline - System.monotonic_time(:millisecond), 0) ->
        close(%__MODULE__{port: port, os_pid: os_pid, format: :json}, grace_ms: 0)
        acc
    end
  end

  defp keep_end(bytes) when byte_size(bytes) <= 2 * @stderr_tail_bytes, do: bytes

  defp keep_end(bytes),
    do: binary_part(bytes, byte_size(bytes) - @stderr_tail_bytes, @stderr_tail_bytes)

  # The last @stderr_tail_bytes, from a character boundary, trimmed.
  defp tail(bytes) do
    size = min(byte_size(bytes), @stderr_tail_bytes)
    tail = binary_part(bytes, byte_size(bytes) - size, size)
    tail = drop_continuation_bytes(tail)
    tail = if String.valid?(tail), do: tail, else: inspect(tail)
    String.trim(tail)
  end

  defp drop_continuation_bytes(<<0b10::2, _::6, rest::binary>>), do: drop_continuation_bytes(rest)
  defp drop_continuation_bytes(bytes), do: bytes

  @doc false
  @spec ready_timeout(pos_integer) :: Error.t()
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
