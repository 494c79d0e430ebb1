defmodule PortBridge.ProtocolFile do
  @moduledoc false
  # The files of protocol/ the client reads (errors.json, limits.json), from the
  # package's priv/ copies: a Hex tarball holds no ../protocol. Read at compile time
  # by the modules that use them (each declares the path an @external_resource, so
  # a changed copy recompiles it). scripts/sync_protocol.sh refreshes the copies;
  # test/port_bridge/protocol_files_test.exs fails while one differs.

  @doc false
  @spec path(String.t()) :: String.t()
  def path(name), do: Path.expand("../../priv/#{name}", __DIR__)

  @doc false
  # The decoded file; a CompileError when it cannot be read.
  @spec read!(String.t()) :: map
  def read!(name) do
    case File.read(path(name)) do
      {:ok, text} ->
        PortBridge.Codec.decode!(text, :json)

      {:error, reason} ->
        raise CompileError,
          description: "cannot read #{path(name)}: #{:file.format_error(reason)}"
    end
  end
end
