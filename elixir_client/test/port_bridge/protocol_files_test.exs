defmodule PortBridge.ProtocolFilesTest do
  use ExUnit.Case, async: true

  # The package cannot read ../protocol (a Hex tarball holds only elixir_client's
  # files), so it ships copies of the protocol files it reads in priv/. A copy that
  # differs from protocol/ by one byte is a client that drifted from the worker.
  @priv Path.expand("../../priv", __DIR__)
  @protocol Path.expand("../../../protocol", __DIR__)

  test "every protocol file in priv/ equals protocol/ byte for byte" do
    copies = Path.wildcard(Path.join(@priv, "*.json"))
    assert Path.join(@priv, "errors.json") in copies

    for copy <- copies do
      original = Path.join(@protocol, Path.basename(copy))
      assert File.regular?(original), "#{copy} is a copy of nothing: #{original} does not exist"

      assert File.read!(copy) == File.read!(original),
             "#{copy} differs from #{original}: run scripts/sync_protocol.sh and commit the copy"
    end
  end
end

defmodule PortBridge.ProtocolLimitsTest do
  use ExUnit.Case, async: true

  alias PortBridge.{Channel, Error, Protocol}

  # The envelope limits the client enforces and the worker defaults it assumes
  # before a worker's `ready` are protocol/limits.json's, read from the file itself.
  @limits Path.expand("../../../protocol/limits.json", __DIR__)
          |> File.read!()
          |> PortBridge.Codec.decode!(:json)

  test "the client read protocol/limits.json" do
    assert Protocol.limits() == @limits
  end

  test "the envelope limits the client enforces are the file's" do
    envelope = @limits["envelope"]

    at_most = fn key, max, build ->
      assert {:ok, _} = build.(max), "#{key}: #{max} should pass"
      assert {:error, %Error{}} = build.(max + 1), "#{key}: #{max + 1} should fail"
    end

    at_most.("max_id_chars", envelope["max_id_chars"], fn n ->
      Protocol.request(String.duplicate("i", n), "ping", %{})
    end)

    at_most.("max_command_chars", envelope["max_command_chars"], fn n ->
      Protocol.request(1, String.duplicate("c", n), %{})
    end)

    at_most.("max_session_id_chars", envelope["max_session_id_chars"], fn n ->
      Protocol.request(1, "ping", %{}, session_id: String.duplicate("s", n))
    end)

    at_most.("max_timeout_ms", envelope["max_timeout_ms"], fn n ->
      Protocol.request(1, "ping", %{}, timeout_ms: n)
    end)

    at_most.("max_meta_entries", envelope["max_meta_entries"], fn n ->
      Protocol.request(1, "ping", %{}, meta: Map.new(1..n, &{"k#{&1}", &1}))
    end)
  end

  test "before ready, a channel assumes the worker's default limits" do
    channel = %Channel{port: nil, os_pid: 1, format: :json}
    assert channel.max_frame_bytes == @limits["worker"]["max_frame_bytes"]
    assert channel.grace_ms == round(@limits["worker"]["shutdown_grace_s"] * 1000) + 1_000
  end
end
