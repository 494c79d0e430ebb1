defmodule PortBridge.Codec.Libraries do
  @moduledoc false
  # Which codec libraries this build can use (asked at compile time).

  @spec json() :: module | nil
  def json do
    cond do
      Code.ensure_loaded?(Jason) -> Jason
      Code.ensure_loaded?(JSON) and function_exported?(JSON, :encode_to_iodata!, 1) -> JSON
      Code.ensure_loaded?(:json) and function_exported?(:json, :decode, 3) -> :json
      Code.ensure_loaded?(:jiffy) -> :jiffy
      true -> nil
    end
  end

  @spec msgpack?() :: boolean
  def msgpack?, do: Code.ensure_loaded?(Msgpax)
end

defmodule PortBridge.Codec do
  @moduledoc """
  Frame payloads to maps and back, in JSON or MessagePack.

  The JSON library is chosen once, at compile time, never per call (probing for a
  module on every call cost ~290 us a frame). The first one available wins:

    1. `Jason`
    2. Elixir's own `JSON` (Elixir >= 1.18)
    3. OTP's `:json` (OTP >= 27)
    4. `:jiffy` (on Debian: `apt-get install erlang-jiffy`; no Hex needed)

  Pin one with `config :port_bridge, json_library: Jason | JSON | :json | :jiffy`
  (then recompile: `mix deps.compile port_bridge --force`). `json_library/0` tells
  which one was picked.

  MessagePack needs `Msgpax`, an optional dependency. Its `bin` values decode to
  `%Msgpax.Bin{}` (so they stay distinct from strings) and you send bytes the same
  way. JSON cannot carry bytes at all.

  What the two formats carry, and their limits, are in `protocol/PROTOCOL.md`
  (section 2); `protocol/vectors/codec.json` holds golden frames that the test suite
  replays through this module.
  """

  @type format :: :json | :msgpack

  alias PortBridge.Codec.Libraries

  @json_library Application.compile_env(:port_bridge, :json_library) || Libraries.json()

  if @json_library == nil do
    raise CompileError,
      description:
        "PortBridge needs a JSON library: add {:jason, \"~> 1.4\"} to your deps, use " <>
          "Elixir >= 1.18 or OTP >= 27, or install jiffy (Debian: apt-get install erlang-jiffy)"
  end

  @msgpack? Libraries.msgpack?()

  # Mix asks this before reusing the compiled module: recompile when the libraries
  # available changed (deps added or removed, mix.exs and mix.offline.exs switched).
  @doc false
  @spec __mix_recompile__?() :: boolean
  def __mix_recompile__? do
    (Application.get_env(:port_bridge, :json_library) || Libraries.json()) != @json_library or
      Libraries.msgpack?() != @msgpack?
  end

  @doc "The JSON library this build uses (chosen at compile time)."
  @spec json_library() :: module()
  def json_library, do: @json_library

  @doc "The formats this build can encode and decode: `:json` always, `:msgpack` with Msgpax."
  @spec formats() :: [format]
  def formats, do: if(@msgpack?, do: [:json, :msgpack], else: [:json])

  @doc """
  Encodes a map as a frame payload (iodata, without the 4-byte length: the Port adds it).
  """
  @spec encode(term, format) :: {:ok, iodata} | {:error, term}
  def encode(term, :json) do
    {:ok, json_encode(term)}
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  def encode(term, :msgpack), do: msgpack_encode(term)

  @doc "Decodes a frame payload."
  @spec decode(binary, format) :: {:ok, term} | {:error, term}
  def decode(binary, :json) when is_binary(binary) do
    json_decode(binary)
  rescue
    e -> {:error, e}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  def decode(binary, :msgpack) when is_binary(binary), do: msgpack_decode(binary)

  @doc "Like `decode/2`, raising `ArgumentError` when the payload is not valid."
  @spec decode!(binary, format) :: term
  def decode!(binary, format) do
    case decode(binary, format) do
      {:ok, term} ->
        term

      {:error, reason} ->
        raise ArgumentError, "cannot decode #{format} payload: #{inspect(reason)}"
    end
  end

  case @json_library do
    Jason ->
      defp json_encode(term), do: Jason.encode_to_iodata!(term)
      defp json_decode(binary), do: Jason.decode(binary)

    JSON ->
      defp json_encode(term), do: JSON.encode_to_iodata!(term)
      defp json_decode(binary), do: JSON.decode(binary)

    :json ->
      # OTP's :json knows `null`, not `nil`: map both ways.
      defp json_encode(term), do: :json.encode(term, &encode_nil/2)
      defp encode_nil(nil, _encoder), do: "null"
      defp encode_nil(other, encoder), do: :json.encode_value(other, encoder)

      defp json_decode(binary) do
        case :json.decode(binary, :ok, %{null: nil}) do
          {term, :ok, rest} -> if blank?(rest), do: {:ok, term}, else: {:error, :trailing_data}
        end
      end

      defp blank?(rest), do: String.trim(rest) == ""

    :jiffy ->
      defp json_encode(term), do: :jiffy.encode(term, [:use_nil])
      defp json_decode(binary), do: {:ok, :jiffy.decode(binary, [:return_maps, :use_nil])}
  end

  if @msgpack? do
    defp msgpack_encode(term), do: Msgpax.pack(term, iodata: true)
    defp msgpack_decode(binary), do: Msgpax.unpack(binary, binary: true)
  else
    defp msgpack_encode(_term), do: {:error, :msgpax_not_available}
    defp msgpack_decode(_binary), do: {:error, :msgpax_not_available}
  end
end
