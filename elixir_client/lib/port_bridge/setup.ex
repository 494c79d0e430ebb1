defmodule PortBridge.SetupError do
  @moduledoc "A Python environment could not be set up; the message says what failed and how."
  defexception [:message]
end

defmodule PortBridge.Setup do
  @moduledoc """
  Makes the Python environment that PortBridge workers run in: a virtual
  environment with the worker's Python source that this client carries (the
  package's `priv/python`, or the repository it was compiled from), its
  dependencies and the application's own Python packages (`python_deps:`).

  The same engine serves the three places an application runs:

    * a Mix project: `mix port_bridge.setup` (`Mix.Tasks.PortBridge.Setup`);
    * a release: the `PortBridge.Release.put_python/1` step of `mix release`;
    * Livebook (`Mix.install/2`) and scripts: `PortBridge.setup!/1`.

  Each reads `config :port_bridge, :setup` (the options below, except `:path` for a
  release); options given to it win. Running it again is fast (it compares what
  the environment holds with what is asked, in well under a second) and installs
  only when something changed.
  """

  alias PortBridge.Schema
  alias PortBridge.Setup.{Environment, Installer, Source}

  @schema [
    path: [
      type: :string,
      doc: """
      the directory of the environment. An existing virtual environment there is
      reused; any other non-empty directory is refused
      """
    ],
    python: [
      type: :string,
      default_doc: "`python3` (pip); for uv, the first Python >= 3.11 it finds",
      doc: """
      the Python to make the environment from (3.11 or newer): a path, a name in
      `PATH`, or for uv also a version request such as `"3.12"`
      """
    ],
    installer: [
      type: {:in, [:uv, :pip]},
      default_doc: "`:uv` when `uv` is in `PATH`, else `:pip`",
      doc: "`:uv` or `:pip` (with `python -m venv`)"
    ],
    extras: [
      type: {:list, :string},
      default: ["dspy"],
      doc: "the extras of the `portbridge` Python package (`[]`: the core worker only)"
    ],
    python_deps: [
      type: {:list, :string},
      default: [],
      doc: """
      the application's own Python packages, as pip requirements
      (`"scikit-learn>=1.5"`, `"./python/my_models"`: a path is relative to the
      current directory), installed into the same environment
      """
    ],
    force: [type: :boolean, default: false, doc: "install again even when nothing changed"],
    quiet: [
      type: :boolean,
      default: false,
      doc: "print nothing but failures (with the tools' output)"
    ]
  ]

  # The keys the engine's own callers add (the Mix task, the release step).
  @internal [bytecode: [doc: false], log: [doc: false]]

  @doc false
  @spec schema() :: Schema.t()
  def schema, do: @schema

  @doc """
  Makes (or reuses) a Python environment for PortBridge workers, and returns the
  path of its interpreter, to give to a worker or pool as `:python`:

      Mix.install([{:port_bridge, "~> 0.1"}])
      python = PortBridge.setup!()
      {:ok, _} = PortBridge.Pool.start_link(name: MyApp.Python, size: 2, python: python)

  With no `:path`, the environment lies in the user's cache directory
  (`~/.cache/port_bridge/` on Linux), one per combination of port_bridge version,
  `:python`, `:extras` and `:python_deps`, so notebooks that ask for different
  packages do not undo each other. The second call returns in well under a
  second. Needs no Mix task and no Mix project: it also runs in a release
  (`bin/my_app eval 'PortBridge.setup!(path: "/srv/python")'`).

  Raises `ArgumentError` for a bad option, `PortBridge.SetupError` when a tool
  fails (its output in the message).

  Options (defaults from `config :port_bridge, :setup`):

  #{Schema.docs(@schema)}
  """
  @spec setup!(keyword) :: String.t()
  def setup!(opts \\ []) do
    run!(opts, path: &default_path/1, log: &IO.puts/1, bytecode: :timestamp)
  end

  @doc false
  # The engine: `opts` (checked, over config :port_bridge, :setup, over `defaults`;
  # a default :path may be a function of the plan). Returns the interpreter.
  @spec run!(keyword, keyword) :: String.t()
  def run!(opts, defaults) do
    plan = plan!(opts, defaults)
    python = Installer.venv_python(plan.dir)

    case Environment.current(plan, python) do
      {:ok, probe} ->
        say(plan, "* #{python} is up to date (#{Environment.describe(probe, plan)})")

      :no ->
        install!(plan, python)
    end

    python
  end

  ## The plan

  defp plan!(opts, defaults) do
    config = Application.get_env(:port_bridge, :setup, [])
    Schema.validate!(config, @schema, "config :port_bridge, :setup")
    Schema.validate!(opts, @schema ++ @internal, "PortBridge.setup!/1")
    given = Keyword.merge(config, Enum.reject(opts, &match?({_, nil}, &1)))
    opts = Keyword.merge(Schema.defaults(@schema), Keyword.merge(defaults, given))

    source = Source.locate()
    {_kind, root} = source
    version = version()

    unless Source.version(root) == version do
      raise PortBridge.SetupError,
            "the Python source in #{root} is portbridge #{Source.version(root) || "(no version)"}, " <>
              "this client is #{version}: the two halves must be one version"
    end

    plan = %{
      python: opts[:python],
      installer: Installer.choose(opts[:installer]),
      extras: Enum.map(opts[:extras], &extra!/1),
      python_deps: Enum.map(opts[:python_deps], &python_dep!/1),
      source: source,
      fingerprint: Source.fingerprint(root),
      version: version,
      bytecode: opts[:bytecode] || :timestamp,
      force: opts[:force],
      quiet: opts[:quiet],
      log: opts[:log] || (&IO.puts/1)
    }

    path = if is_function(opts[:path], 1), do: opts[:path].(plan), else: opts[:path]
    Map.put(plan, :dir, Path.expand(path))
  end

  defp extra!(extra) do
    if extra =~ ~r/^[A-Za-z0-9][A-Za-z0-9._-]*$/,
      do: extra,
      else: raise(ArgumentError, "extras: #{inspect(extra)} is not the name of an extra")
  end

  # A requirement is one argument of pip's command line: one that starts with "-"
  # would be read as an option of pip's (another index, a file of requirements).
  defp python_dep!(dep) do
    if String.trim(dep) == "" or String.starts_with?(String.trim(dep), "-"),
      do: raise(ArgumentError, "python_deps: #{inspect(dep)} is not a requirement"),
      else: String.trim(dep)
  end

  defp version do
    Application.load(:port_bridge)
    to_string(Application.spec(:port_bridge, :vsn))
  end

  # One environment per port_bridge version and choice of packages, in the user's
  # cache: a change of the source alone installs again in the same place.
  defp default_path(plan) do
    key =
      :erlang.md5(:erlang.term_to_binary({plan.python, plan.extras, plan.python_deps}))
      |> Base.encode16(case: :lower)
      |> binary_part(0, 12)

    Path.join(:filename.basedir(:user_cache, "port_bridge"), "venv-#{plan.version}-#{key}")
  end

  defp from(%{source: {:checkout, root}}), do: "the checkout #{root}"
  defp from(%{source: {:package, dir}}), do: "the package (#{dir})"

  ## Creating and installing

  defp install!(plan, python) do
    base_python = create!(plan, python)
    deps = if plan.python_deps == [], do: "", else: " and #{Enum.join(plan.python_deps, ", ")}"
    what = "portbridge#{Installer.extras_suffix(plan.extras)}#{deps}"
    tool = Installer.name(plan.installer)

    say(
      plan,
      "* installing #{what} from #{from(plan)} with #{tool} (a minute or two the first time)"
    )

    timed(plan, fn -> Installer.install!(plan, python) end)

    if plan.bytecode == :unchecked_hash do
      say(plan, "* compiling the bytecode once for good (the environment may be moved)")
      timed(plan, fn -> Installer.compile!(plan, python) end)
    end

    probe = Environment.verify!(plan, python)
    say(plan, "* starting a worker to check it")
    timed(plan, fn -> Environment.check_worker!(python, plan.extras) end)
    Environment.stamp!(plan, base_python)
    say(plan, "* #{plan.dir} is ready (#{Environment.describe(probe, plan)})")
  end

  # Makes the environment unless one is there; returns the Python it was made from
  # (as asked; nil: the installer's default).
  defp create!(plan, python) do
    previous = Environment.base_python(plan.dir)

    cond do
      File.regular?(Path.join(plan.dir, "pyvenv.cfg")) ->
        if plan.python && previous && plan.python != previous do
          raise PortBridge.SetupError,
                "#{plan.dir} was made from #{previous}, not #{plan.python}: remove it, or choose another path"
        end

        unless File.regular?(python) do
          raise PortBridge.SetupError,
                "#{plan.dir} is a broken virtual environment (no #{python}; was the Python it " <>
                  "was made from removed?): remove it, or choose another path"
        end

        previous || plan.python

      File.dir?(plan.dir) and File.ls!(plan.dir) != [] ->
        raise PortBridge.SetupError,
              "#{plan.dir} is not empty and not a virtual environment: choose another path"

      true ->
        say(plan, "* creating a Python environment in #{plan.dir}")
        timed(plan, fn -> Installer.create!(plan) end)
        supported!(plan, python)
        plan.python
    end
  end

  defp supported!(plan, python) do
    case System.cmd(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]) do
      {version, 0} ->
        [major, minor] =
          version |> String.trim() |> String.split(".") |> Enum.map(&String.to_integer/1)

        if {major, minor} < {3, 11} do
          File.rm_rf!(plan.dir)

          raise PortBridge.SetupError,
                "#{plan.python || "the default Python"} is Python #{String.trim(version)}; " <>
                  "the worker needs 3.11 or newer: name another with :python (--python)"
        end

      {out, status} ->
        raise PortBridge.SetupError, "#{python} exited with status #{status}: #{out}"
    end
  end

  defp say(%{quiet: true}, _message), do: :ok
  defp say(plan, message), do: plan.log.(message)

  defp timed(plan, fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    seconds = (System.monotonic_time(:millisecond) - started) / 1000
    say(plan, "  (#{:erlang.float_to_binary(seconds, decimals: 1)} s)")
    result
  end
end
