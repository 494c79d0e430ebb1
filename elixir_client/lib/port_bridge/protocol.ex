defmodule PortBridge.Protocol do
  @moduledoc """
  Envelopes of protocol version 1 (`protocol/PROTOCOL.md`), without any I/O.

  `request/4` builds and checks a request map with the limits the worker enforces,
  so a malformed request fails here, matched to its caller, instead of coming back
  from the worker as an `id: null` error nobody can match. `classify/1` tells the
  frames the worker writes apart: final replies, events, and the rest.
  """

  alias PortBridge.Error

  @version 1

  # protocol/limits.json (the package's priv/ copy), the file the worker reads too:
  # the envelope's limits, and the worker's defaults the client must assume until a
  # worker's `ready` says what it runs with.
  @external_resource PortBridge.ProtocolFile.path("limits.json")
  @limits PortBridge.ProtocolFile.read!("limits.json")
  @max_id_chars @limits["envelope"]["max_id_chars"]
  @max_command_chars @limits["envelope"]["max_command_chars"]
  @max_session_id_chars @limits["envelope"]["max_session_id_chars"]
  @max_timeout_ms @limits["envelope"]["max_timeout_ms"]
  @max_meta_entries @limits["envelope"]["max_meta_entries"]
  @int64 Bitwise.bsl(1, 63)

  @doc "The protocol version this client speaks."
  @spec version() :: pos_integer
  def version, do: @version

  @doc false
  # protocol/limits.json as the client read it when compiled.
  @spec limits() :: map
  def limits, do: @limits

  @doc false
  # The default of a worker option, as limits.json's "worker" section has it.
  @spec worker_default(String.t()) :: number
  def worker_default(name), do: Map.fetch!(@limits["worker"], name)

  @type id :: integer | String.t()
  @type frame ::
          {:reply, id | nil, {:ok, term} | {:error, Error.t()}, map}
          | {:event, id | nil, String.t(), term}
          | {:malformed, id, term}
          | {:unknown, term}

  @doc """
  A checked request map.

  Options: `:session_id` (a string of 1 to 256 characters, or nil), `:timeout_ms`
  (the worker-side deadline, 1 to 86,400,000, or nil) and `:meta` (a map of at
  most 64 entries, echoed back by the worker).
  """
  @spec request(id, String.t() | atom, map, keyword) :: {:ok, map} | {:error, Error.t()}
  def request(id, command, args, opts \\ []) do
    session_id = Keyword.get(opts, :session_id)
    timeout_ms = Keyword.get(opts, :timeout_ms)
    meta = Keyword.get(opts, :meta)

    cond do
      not valid_id?(id) ->
        invalid(
          :invalid_id,
          "id must be a 64-bit integer or a string of 1 to #{@max_id_chars} characters",
          id
        )

      timeout_ms != nil and not (is_integer(timeout_ms) and timeout_ms in 1..@max_timeout_ms) ->
        invalid(
          :invalid_timeout,
          "timeout_ms must be an integer from 1 to #{@max_timeout_ms}",
          timeout_ms
        )

      true ->
        with :ok <- check(command, args, session_id, meta),
             do: {:ok, envelope(id, command, args, session_id, timeout_ms, meta)}
    end
  end

  @doc """
  Checks what a caller gives a request (`command`, `args`, `session_id`, `meta`) against
  the limits the worker enforces: `:ok` or a `protocol` error. `PortBridge.Worker` does
  it once per call, in the caller, before anything is sent.
  """
  @spec check(term, term, term, term) :: :ok | {:error, Error.t()}
  def check(command, args, session_id, meta) do
    command = command_string(command)

    cond do
      not string_within?(command, @max_command_chars) ->
        invalid(
          :invalid_command,
          "command must be a string of 1 to #{@max_command_chars} characters",
          command
        )

      not is_map(args) ->
        invalid(:invalid_args, "args must be a map", args)

      session_id != nil and not string_within?(session_id, @max_session_id_chars) ->
        invalid(
          :invalid_session_id,
          "session_id must be a string of 1 to #{@max_session_id_chars} characters",
          session_id
        )

      meta != nil and not (is_map(meta) and map_size(meta) <= @max_meta_entries) ->
        invalid(:invalid_meta, "meta must be a map of at most #{@max_meta_entries} entries", meta)

      true ->
        :ok
    end
  end

  @doc false
  # The request map of values already checked (check/4; the id, timeout_ms and notify
  # are the client's own: notify (1.2) lists the optional events wanted, ["lm_call"]).
  @spec envelope(
          id,
          String.t() | atom,
          map,
          String.t() | nil,
          pos_integer | nil,
          map | nil,
          [String.t()] | nil
        ) :: map
  def envelope(id, command, args, session_id, timeout_ms, meta, notify \\ nil)

  def envelope(id, command, args, nil, nil, nil, nil),
    do: %{"id" => id, "command" => command_string(command), "args" => args}

  def envelope(id, command, args, nil, timeout_ms, nil, nil),
    do: %{
      "id" => id,
      "command" => command_string(command),
      "args" => args,
      "timeout_ms" => timeout_ms
    }

  def envelope(id, command, args, session_id, timeout_ms, meta, notify) do
    %{"id" => id, "command" => command_string(command), "args" => args}
    |> put_present("session_id", session_id)
    |> put_present("timeout_ms", timeout_ms)
    |> put_present("meta", meta)
    |> put_present("notify", notify)
  end

  defp command_string(command) when is_atom(command) and command not in [nil, true, false],
    do: Atom.to_string(command)

  defp command_string(command), do: command

  # The worker's own deadline for a request trails the client's by this much: the
  # client's comes first (and sends cancel); the worker's bounds what cannot be
  # cancelled (DSPy shortens its LM client's timeout to it).
  @worker_deadline_margin_ms 1_000

  @doc """
  The `timeout_ms` a request carries for a client-side `timeout` (ms or `:infinity`):
  the timeout plus #{@worker_deadline_margin_ms} ms, or nil for `:infinity`.
  """
  @spec worker_timeout_ms(timeout) :: pos_integer | nil
  def worker_timeout_ms(:infinity), do: nil

  def worker_timeout_ms(timeout) when is_integer(timeout),
    do: min(timeout + @worker_deadline_margin_ms, @max_timeout_ms)

  @doc "True for an id the worker accepts."
  @spec valid_id?(term) :: boolean
  def valid_id?(id) when is_integer(id), do: id >= -@int64 and id < @int64
  def valid_id?(id), do: string_within?(id, @max_id_chars)

  defp string_within?(value, max) when is_binary(value) and byte_size(value) > 0 do
    String.valid?(value) and (byte_size(value) <= max or length(String.codepoints(value)) <= max)
  end

  defp string_within?(_value, _max), do: false

  defp put_present(map, _key, nil), do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)

  defp invalid(code, message, value) do
    {:error,
     Error.new(:protocol, Atom.to_string(code), message, %{
       "value" => inspect(value, limit: 5, printable_limit: 80)
     })}
  end

  @doc """
  What a decoded frame from the worker is: a final reply, an event, or unknown.

  Frames from the worker are untrusted: any shape is classified, never raised on.
  A reply whose id is valid but whose error is malformed becomes a `protocol` error
  for that id's caller; any other map with a valid request id is `{:malformed, id,
  frame}` (its caller gets a `protocol` error); a frame with no valid id is
  `{:unknown, frame}`.
  """
  @spec classify(term) :: frame
  def classify(%{"event" => name, "id" => id} = frame) when is_binary(name) do
    if reply_id?(id), do: {:event, id, name, Map.get(frame, "data")}, else: {:unknown, frame}
  end

  def classify(%{"success" => true, "id" => id} = frame) do
    if reply_id?(id),
      do: {:reply, id, {:ok, Map.get(frame, "result")}, meta(frame)},
      else: {:unknown, frame}
  end

  def classify(%{"success" => false, "id" => id} = frame) do
    if reply_id?(id),
      do: {:reply, id, {:error, Error.from_wire(Map.get(frame, "error"))}, meta(frame)},
      else: {:unknown, frame}
  end

  def classify(%{"id" => id} = frame) when id != nil do
    if valid_id?(id), do: {:malformed, id, frame}, else: {:unknown, frame}
  end

  def classify(other), do: {:unknown, other}

  # Replies carry the id of a request (a 64-bit integer or a string), or null for a
  # frame the worker could not read.
  defp reply_id?(nil), do: true
  defp reply_id?(id), do: valid_id?(id)

  defp meta(frame) do
    case frame do
      %{"meta" => %{} = meta} -> meta
      _ -> %{}
    end
  end

  @doc "The error a caller gets for a frame of the wrong shape that carries its id."
  @spec malformed(term) :: Error.t()
  def malformed(frame) do
    Error.new(
      :protocol,
      "malformed_frame",
      "the worker sent a frame of the wrong shape for this request",
      %{
        "frame" => inspect(frame, limit: 10, printable_limit: 200)
      }
    )
  end

  @doc """
  Checks the `ready` event's data: the protocol version must be ours.
  """
  @spec check_ready(term) :: {:ok, map} | {:error, Error.t()}
  def check_ready(%{"protocol" => @version} = data), do: {:ok, data}

  def check_ready(%{"protocol" => other}) do
    {:error,
     Error.new(
       :initialization,
       "protocol_mismatch",
       "the worker speaks protocol #{inspect(other)}, this client #{@version}",
       %{
         "protocol" => other
       }
     )}
  end

  def check_ready(other) do
    {:error,
     Error.new(
       :initialization,
       "bad_ready",
       "the worker's ready event has no protocol version",
       %{"data" => inspect(other)}
     )}
  end
end
