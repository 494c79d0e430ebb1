defmodule Mix.Tasks.PortBridge.Commands do
  @shortdoc "Writes the describe snapshot that `use PortBridge.Commands` generates functions from"

  @moduledoc """
  Starts a worker that exposes your Python modules, asks it to `describe` their
  commands, and writes what it says to a snapshot checked into your application,
  from which `use PortBridge.Commands` generates Elixir functions at compile time.

      mix port_bridge.commands --expose mathcmds
      mix port_bridge.commands --expose mypkg.mathcmds --expose mypkg.text=text --out priv/py.json

  Run it again whenever the Python side changes: a snapshot that no longer matches
  the worker is an error at the first call (or at `check/1`), never a wrong call.

  Options:

    * `--expose MODULE[=NAMESPACE]` - a Python module to expose, as `portbridge worker
      --expose` takes it (repeatable). Its namespace (the module's last name, or
      NAMESPACE) is what `use PortBridge.Commands, expose: [...]` names.
    * `--out PATH` - the snapshot (default `priv/port_bridge/commands.json`).
    * `--python PYTHON` - the interpreter (default: as a worker started without
      `:python` finds it: `PORTBRIDGE_PYTHON`, `config :port_bridge, python: ...`, or
      the environment of `mix port_bridge.setup`).
    * `--cd DIR` - the worker's working directory (default: the project's root), where
      Python finds modules that are not installed.
  """

  use Mix.Task

  alias PortBridge.Commands.Snapshot

  @switches [expose: :keep, out: :string, python: :string, cd: :string]

  @impl true
  def run(argv) do
    {opts, rest, invalid} = OptionParser.parse(argv, strict: @switches)

    if rest != [] or invalid != [],
      do:
        Mix.raise(
          "mix port_bridge.commands: unexpected #{inspect(rest ++ Enum.map(invalid, &elem(&1, 0)))}"
        )

    exposed = Keyword.get_values(opts, :expose)
    if exposed == [], do: Mix.raise("mix port_bridge.commands needs at least one --expose MODULE")

    {:ok, _} = Application.ensure_all_started(:port_bridge)
    out = Keyword.get(opts, :out, "priv/port_bridge/commands.json")
    cd = Keyword.get(opts, :cd, File.cwd!())
    python = if opts[:python], do: [python: opts[:python]], else: []
    worker_args = ["--backends", "" | Enum.flat_map(exposed, &["--expose", &1])]

    {:ok, worker} =
      PortBridge.Worker.start_link(
        python ++ [worker_args: worker_args, cd: cd, forward_logs: false]
      )

    try do
      case PortBridge.request(worker, "describe", %{}, timeout: 60_000) do
        {:ok, %{"commands" => commands}} ->
          snapshot = Snapshot.from_describe(commands, Enum.map(exposed, &namespace/1))
          File.mkdir_p!(Path.dirname(out))
          File.write!(out, Snapshot.encode(snapshot))

          Mix.shell().info(
            "mix port_bridge.commands: wrote #{out} (#{map_size(snapshot["commands"])} commands of " <>
              "#{Enum.join(snapshot["namespaces"], ", ")})"
          )

        {:error, error} ->
          Mix.raise(
            "mix port_bridge.commands: the worker did not describe its commands: #{Exception.message(error)}"
          )
      end
    after
      GenServer.stop(worker)
    end
  end

  # As the worker names them: NAMESPACE after "=", else the module's last name.
  defp namespace(expose) do
    case String.split(expose, "=", parts: 2) do
      [_module, namespace] -> namespace
      [module] -> module |> String.split(".") |> List.last()
    end
  end
end
