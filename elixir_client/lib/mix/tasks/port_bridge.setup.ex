defmodule Mix.Tasks.PortBridge.Setup do
  @shortdoc "Creates the Python environment that PortBridge workers run in"

  @moduledoc """
  Creates a Python environment with the worker's Python source that this client
  carries, its dependencies and the application's own Python packages, checks that
  a worker starts in it, and makes it the default `:python` of this project.

      mix port_bridge.setup
      mix port_bridge.setup --path /srv/my_app/python --python python3.12
      mix port_bridge.setup --python-dep "scikit-learn>=1.5" --python-dep ./python/my_models

  What is installed: the `portbridge` Python package built from the source this
  client carries (the Hex package's `priv/python`, or the repository checkout of a
  `path:` or `git:` dependency), so both halves are always one version; only its
  dependencies (DSPy...) and `--python-dep`s come from the package index.

  How: with `uv` when it is on `PATH` (seconds from its cache), else with
  `python -m venv` and pip. Running it again does nothing slow: it checks the
  environment (well under a second) and installs only when something changed (the
  source included).

  Where workers find it: the interpreter of the environment is recorded in
  `_build/port_bridge/python_path`, and a worker started without `:python` runs it
  (unless `PORTBRIDGE_PYTHON` or `config :port_bridge, python: ...` names another).
  For a release, add the step `&PortBridge.Release.put_python/1`: it puts an
  environment inside the release (see `PortBridge.Release`).

  Defaults come from `config :port_bridge, :setup` (the options of
  `PortBridge.setup!/1`: `path`, `python`, `installer`, `extras`, `python_deps`);
  the command line wins.

  Options:

    * `--path DIR` - where the environment goes (default `_build/port_bridge/venv`).
      An existing virtual environment there is reused; any other non-empty
      directory is refused.
    * `--python PYTHON` - the Python to start from (3.11 or newer): a path, a name in
      `PATH`, or for uv also a version request such as `3.12`. Default: `python3`
      (pip), the first Python >= 3.11 uv finds (uv).
    * `--installer uv|pip` - force one; default uv when it is on `PATH`.
    * `--extras LIST` - the package's extras, comma-separated (default `dspy`;
      `--extras ""` for the core worker only).
    * `--python-dep REQUIREMENT` - one of the application's own Python packages (a
      pip requirement or a path); repeat it for several. Replaces the config's
      `python_deps`.
    * `--force` - install again even when the environment looks complete.
    * `--quiet` - print only the result (and the tools' output when they fail).
  """

  use Mix.Task

  alias PortBridge.Setup
  alias PortBridge.Setup.Lookup

  @switches [
    path: :string,
    python: :string,
    installer: :string,
    extras: :string,
    python_dep: :keep,
    force: :boolean,
    quiet: :boolean
  ]

  @impl true
  @spec run([String.t()]) :: :ok
  def run(argv) do
    {opts, rest} = OptionParser.parse!(argv, strict: @switches)

    if rest != [],
      do: Mix.raise("mix port_bridge.setup takes no arguments, got: #{Enum.join(rest, " ")}")

    record = Lookup.record()
    default = Path.join(Path.dirname(record), "venv")

    python =
      try do
        Setup.run!(options(opts), path: default, log: &Mix.shell().info/1, bytecode: :timestamp)
      rescue
        error in [ArgumentError, PortBridge.SetupError] -> Mix.raise(Exception.message(error))
      end

    File.mkdir_p!(Path.dirname(record))
    File.write!(record, python <> "\n")

    Mix.shell().info(
      "PortBridge workers started without :python now run #{python} " <>
        "(recorded in #{Path.relative_to_cwd(record)})"
    )
  end

  defp options(opts) do
    deps = Keyword.get_values(opts, :python_dep)

    [
      path: opts[:path] && Path.expand(opts[:path]),
      python: opts[:python],
      installer: installer(opts[:installer]),
      extras:
        opts[:extras] && String.split(opts[:extras], ",", trim: true) |> Enum.map(&String.trim/1),
      python_deps: if(deps == [], do: nil, else: deps),
      force: opts[:force],
      quiet: opts[:quiet]
    ]
  end

  defp installer(nil), do: nil
  defp installer("uv"), do: :uv
  defp installer("pip"), do: :pip
  defp installer(other), do: Mix.raise("--installer must be uv or pip, got: #{other}")
end
