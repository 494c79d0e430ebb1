defmodule PortBridge.Commands.Snapshot do
  @moduledoc false
  # A `describe` snapshot of the commands of exposed Python modules (bridge.sdk's
  # @command, `portbridge worker --expose ...`), checked into an application:
  # written by `mix port_bridge.commands`, read at compile time by `use
  # PortBridge.Commands`, and compared with a live worker's `describe` before the
  # generated functions call it.
  #
  # The file: {"about": ..., "namespaces": [...], "commands": {name: describe's entry}},
  # JSON, the entries exactly as describe reports them.

  @about "The commands of exposed Python modules as a worker's describe reports them; " <>
           "written by mix port_bridge.commands, read by use PortBridge.Commands at compile time."

  @doc false
  # The snapshot of `namespaces` from describe's `commands`; raises when one exposes
  # no command (a typo, or the worker was not started with --expose).
  @spec from_describe(map, [String.t()]) :: map
  def from_describe(commands, namespaces) do
    picked = of_namespaces(commands, namespaces)

    for namespace <- namespaces, not Enum.any?(Map.keys(picked), &in_namespace?(&1, namespace)) do
      raise ArgumentError,
            "the worker exposes no command of #{inspect(namespace)} (its commands: " <>
              "#{inspect(Enum.sort(Map.keys(commands)))}); start it with --expose MODULE"
    end

    %{"about" => @about, "namespaces" => Enum.sort(namespaces), "commands" => picked}
  end

  @doc false
  # The commands of `namespaces` among describe's (`namespace.function` names).
  @spec of_namespaces(map, [String.t()]) :: map
  def of_namespaces(commands, namespaces) do
    for {name, entry} <- commands, Enum.any?(namespaces, &in_namespace?(name, &1)), into: %{} do
      {name, entry}
    end
  end

  defp in_namespace?(name, namespace), do: String.starts_with?(name, namespace <> ".")

  @doc false
  # What differs between the snapshot's commands and a worker's, for the namespaces
  # given: [] when they agree on every command's name, arguments and cpu_bound (a
  # changed docstring makes no call wrong).
  @spec differences(map, map, [String.t()]) :: [String.t()]
  def differences(expected, live_commands, namespaces) do
    live = of_namespaces(live_commands, namespaces)
    shape = fn entry -> entry && Map.take(entry, ["args", "cpu_bound"]) end

    for name <- Enum.sort(Enum.uniq(Map.keys(expected) ++ Map.keys(live))),
        shape.(expected[name]) != shape.(live[name]) do
      cond do
        not Map.has_key?(live, name) -> "#{name} is gone from the worker"
        not Map.has_key?(expected, name) -> "#{name} is new in the worker"
        true -> "#{name} takes other arguments"
      end
    end
  end

  @doc false
  # The file's text: indented, keys sorted, the same whatever JSON library the
  # client was built with (so a regenerated snapshot diffs only where it changed).
  @spec encode(map) :: String.t()
  def encode(snapshot), do: IO.iodata_to_binary([pretty(snapshot, ""), "\n"])

  defp pretty(map, indent) when is_map(map) and map_size(map) > 0 do
    inner = indent <> "  "

    entries =
      map
      |> Enum.sort_by(fn {key, _} -> to_string(key) end)
      |> Enum.map(fn {key, value} ->
        [inner, scalar(to_string(key)), ": ", pretty(value, inner)]
      end)

    ["{\n", Enum.intersperse(entries, ",\n"), "\n", indent, "}"]
  end

  defp pretty([_ | _] = list, indent) do
    inner = indent <> "  "

    [
      "[\n",
      Enum.intersperse(Enum.map(list, &[inner, pretty(&1, inner)]), ",\n"),
      "\n",
      indent,
      "]"
    ]
  end

  defp pretty(value, _indent), do: scalar(value)

  defp scalar(value) do
    {:ok, json} = PortBridge.Codec.encode(value, :json)
    json
  end

  @doc false
  @spec read!(String.t()) :: map
  def read!(path) do
    case File.read(path) do
      {:ok, text} ->
        PortBridge.Codec.decode!(text, :json)

      {:error, reason} ->
        raise ArgumentError, "cannot read #{path}: #{:file.format_error(reason)}"
    end
  end
end
