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
