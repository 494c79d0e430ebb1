defmodule PortBridge.Setup.Lookup do
  @moduledoc false
  # Which Python a worker runs when it is given no :python, and what to run when there
  # is none: said for where the code runs (a Mix project, a release, Livebook or a
  # script), since the remedy differs in each.

  # Where `mix port_bridge.setup` records the interpreter of the environment it made:
  # beside the build directories of the project that compiled this module
  # (`_build/port_bridge/python_path`, whichever MIX_ENV), fixed at compile time, so a
  # release built from that project reads the same record on the machine that built it.
  @record (if Code.ensure_loaded?(Mix.Project) and Mix.Project.get() do
             Path.join([Path.dirname(Mix.Project.build_path()), "port_bridge", "python_path"])
           end)

  # Where PortBridge.Release.put_python/1 puts the environment, under the release's root.
  @release_env ["port_bridge", "venv"]

  @doc false
  # The file `mix port_bridge.setup` writes; nil when compiled without Mix.
  @spec record() :: String.t() | nil
  def record, do: @record

  @doc false
  # The release's own environment, under its root.
  @spec release_env(String.t()) :: String.t()
  def release_env(release_root), do: Path.join([release_root | @release_env])

  @doc false
  # See PortBridge.Options.python/0.
  @spec python() :: String.t()
  def python do
    resolve(
      System.get_env("PORTBRIDGE_PYTHON"),
      Application.get_env(:port_bridge, :python),
      System.get_env("RELEASE_ROOT"),
      @record
    )
  end

  @doc false
  # python/0 with its sources as arguments, for tests that cannot change the
  # environment of a suite that runs concurrently.
  @spec resolve(String.t() | nil, term, String.t() | nil, String.t() | nil) :: term
  def resolve(env_var, app_env, release_root, record) do
    cond do
      env_var not in [nil, ""] -> env_var
      app_env != nil -> app_env
      env = release_root not in [nil, ""] and released(release_root) -> env
      recorded = read_record(record) -> recorded
      true -> raise ArgumentError, no_python_message(record)
    end
  end

  # The environment the release step put in the release, if it did.
  defp released(root) do
    dir = release_env(root)
    python = PortBridge.Setup.Installer.venv_python(dir)

    cond do
      File.regular?(python) ->
        python

      File.dir?(dir) ->
        target =
          case File.read_link(python) do
            {:ok, target} -> " (it runs #{target}, which is not on this machine)"
            {:error, _} -> ""
          end

        raise ArgumentError,
              "the release's Python environment #{dir} cannot run: #{python} is " <>
                "missing#{target}. An environment needs the Python it was made from, at the " <>
                "same path: install that Python here, or #{hint(:release)}"

      true ->
        nil
    end
  end

  defp read_record(nil), do: nil

  defp read_record(record) do
    case File.read(record) do
      {:ok, text} -> recorded_python!(String.trim(text), record)
      {:error, _} -> nil
    end
  end

  defp recorded_python!(python, record) do
    if File.regular?(python) do
      python
    else
      raise ArgumentError,
            "the Python environment that mix port_bridge.setup recorded in #{record} " <>
              "is gone (#{python} does not exist): #{hint(context())}"
    end
  end

  defp no_python_message(record) do
    where =
      if record && context() == :mix,
        do: " (mix port_bridge.setup records the environment it makes in #{record})",
        else: ""

    "no Python for the worker: #{hint(context())}#{where}; or name an interpreter that " <>
      "has portbridge installed: the :python option, PORTBRIDGE_PYTHON, or " <>
      "config :port_bridge, python: \"...\""
  end

  @doc false
  # A worker's error that its environment lacks a package (it cannot know the
  # client's command that installs it) gains what to run where the client runs.
  @spec remedy(atom | String.t(), String.t(), String.t()) :: String.t()
  def remedy(:initialization, code, message) when code in ["dspy_missing", "dspy_import_failed"],
    do: message <> "; with this Elixir client: " <> hint(context())

  def remedy(_category, _code, message), do: message

  @doc false
  # Where this code runs, as far as setting up Python goes.
  @spec context() :: :mix | :release | :script
  def context do
    cond do
      mix?() and Mix.installed?() -> :script
      mix?() and Mix.Project.get() != nil -> :mix
      System.get_env("RELEASE_ROOT") not in [nil, ""] -> :release
      true -> :script
    end
  end

  # Mix is there and running (not in a release, which leaves it out).
  defp mix? do
    Code.ensure_loaded?(Mix) and function_exported?(Mix, :installed?, 0) and
      Process.whereis(Mix.State) != nil and Process.whereis(Mix.ProjectStack) != nil
  end

  @doc false
  # What to run, in `context`, to get a Python environment with portbridge.
  @spec hint(:mix | :release | :script) :: String.t()
  def hint(:mix), do: "run `mix port_bridge.setup` in the project"

  def hint(:release) do
    name = System.get_env("RELEASE_NAME") || "my_app"

    "build the release with PortBridge's step (in mix.exs, `releases: [#{name}: [steps: " <>
      "[:assemble, &PortBridge.Release.put_python/1]]]`), or make an environment on this " <>
      "machine with `bin/#{name} eval 'PortBridge.setup!(path: \"/srv/#{name}/python\")'` " <>
      "and set `config :port_bridge, python: \"/srv/#{name}/python/bin/python\"` in " <>
      "config/runtime.exs"
  end

  def hint(:script),
    do:
      "call `PortBridge.setup!()`, and give the path it returns to the worker or pool as :python"
end
