defmodule PortBridge.CodecTest do
  # The golden vectors of protocol/vectors/codec.json, replayed through this client's
  # codec: the same bytes the Python worker's tests replay.
  use ExUnit.Case, async: true

  alias PortBridge.Codec

  @vectors Path.expand("../../../protocol/vectors/codec.json", __DIR__)
  @external_resource @vectors
  @cases Codec.decode!(File.read!(@vectors), :json)["cases"]
  @msgpack? :msgpack in Codec.formats()

  test "the vector file has cases of both formats" do
    formats = @cases |> Enum.map(& &1["format"]) |> Enum.uniq() |> Enum.sort()
    assert formats == ["json", "msgpack"]
    assert Enum.count(@cases, &(&1["format"] == "json")) >= 10
  end

  for %{"name" => name, "format" => format} = vector <- @cases do
    @vector vector
    @tag format: format
    if format == "msgpack" and not @msgpack? do
      @tag skip: "MessagePack needs Msgpax (optional, from Hex); not in this build"
    end

    test "vector #{name} (#{format})" do
      format = String.to_existing_atom(@vector["format"])
      payload = Base.decode16!(@vector["payload_hex"], case: :mixed)
      frame = Base.decode16!(@vector["frame_hex"], case: :mixed)
      value = from_vector(@vector["value"], format)

      # frame_hex is payload_hex behind its length, as Erlang's {:packet, 4} reads it
      assert {:ok, ^payload, ""} = :erlang.decode_packet(4, frame, [])

      assert Codec.decode(payload, format) == {:ok, value}

      {:ok, encoded} = Codec.encode(value, format)
      encoded = IO.iodata_to_binary(encoded)
      assert Codec.decode(encoded, format) == {:ok, value}

      framed = <<byte_size(encoded)::32, encoded::binary>>
      assert {:ok, ^encoded, ""} = :erlang.decode_packet(4, framed, [])
    end
  end

  # Bytes are written {"$bytes": "<base64>"} in the vectors; Msgpax gives %Msgpax.Bin{}.
  defp from_vector(%{"$bytes" => b64}, :msgpack),
    do: struct(Msgpax.Bin, data: Base.decode64!(b64))

  defp from_vector(%{} = map, format),
    do: Map.new(map, fn {k, v} -> {k, from_vector(v, format)} end)

  defp from_vector(list, format) when is_list(list), do: Enum.map(list, &from_vector(&1, format))
  defp from_vector(other, _format), do: other

  describe "JSON (#{inspect(Codec.json_library())})" do
    test "nil is null both ways, atoms are strings" do
      assert {:ok, json} = Codec.encode(%{a: nil, b: :x, c: true}, :json)

      assert Codec.decode(IO.iodata_to_binary(json), :json) ==
               {:ok, %{"a" => nil, "b" => "x", "c" => true}}
    end

    test "integers beyond 64 bits survive" do
      {:ok, json} = Codec.encode(%{"n" => 18_446_744_073_709_551_615}, :json)

      assert Codec.decode(IO.iodata_to_binary(json), :json) ==
               {:ok, %{"n" => 18_446_744_073_709_551_615}}
    end

    test "bad input is an error tuple, not a crash" do
      assert {:error, _} = Codec.decode("{\"a\": ", :json)
      assert {:error, _} = Codec.decode("\xff", :json)
      assert {:error, _} = Codec.encode(%{"pid" => self()}, :json)
    end
  end

  test "msgpack is refused clearly without Msgpax" do
    if @msgpack? do
      assert {:ok, _} = Codec.encode(%{"a" => 1}, :msgpack)
    else
      assert {:error, :msgpax_not_available} = Codec.encode(%{"a" => 1}, :msgpack)

      assert_raise ArgumentError, ~r/Msgpax/, fn ->
        PortBridge.Options.spawn_opts(format: :msgpack, python: "/bin/sh")
      end
    end
  end
end
