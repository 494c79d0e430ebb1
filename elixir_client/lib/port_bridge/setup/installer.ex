defmodule PortBridge.Setup.Installer do
  @moduledoc false
  # The commands that make and fill a virtual environment: with uv when it is asked
  # for or on PATH (seconds from its cache), else with `python -m venv` and pip.
  # Every tool runs with an argument list, never through a shell.

  alias PortBridge.Setup.Source

  @typedoc "uv (its executable) or pip"
  @type t :: {:uv, String.t()} | :pip

  @doc false
  @spec choose(:uv | :pip | nil) :: t
  def choose(nil), do: if(uv = System.find_executable("uv"), do: {:uv, uv}, else: :pip)

  def choose(:uv),
    do:
      {:uv,
       System.find_executable("uv") || raise(ArgumentError, "installer :uv: uv is not in PATH")}

  def choose(:pip), do: :pip

  @doc false
  @spec name(t) :: String.t()
  def name({:uv, _}), do: "uv"
  def name(:pip), do: "pip"

  @doc false
  # The interpreter of the environment in `dir`.
  @spec venv_python(String.t()) :: String.t()
  def venv_python(dir) do
    case :os.type() do
      {:win32, _} -> Path.join([dir, "Scripts", "python.exe"])
      _ -> Path.join([dir, "bin", "python"])
    end
  end

  @doc false
  # A new environment in plan.dir, from plan.python (a path, a name in PATH, or for
  # uv a version request); refused unless it is Python 3.11 or newer.
  @spec create!(map) :: :ok
  def create!(%{installer: {:uv, uv}} = plan),
    do: cmd!(plan, uv, ["venv", "--python", plan.python || ">=3.11", plan.dir])

  def create!(%{installer: :pip} = plan) do
    base = plan.python || "python3"

    executable =
      if String.contains?(base, "/"),
        do: Path.expand(base),
        else:
          System.find_executable(base) || raise(ArgumentError, ":python: #{base} is not in PATH")

    cmd!(plan, executable, ["-m", "venv", plan.dir])
  end

  @doc false
  # Installs the portbridge source of `plan.source` (with its extras) and the
  # application's own packages into the environment of `python`. pip builds the
  # wheel from a temporary copy of the source, so nothing is written where the
  # source lies (a dependency's directory, a read-only release). Relative paths
  # among python_deps are taken from the current directory.
  @spec install!(map, String.t()) :: :ok
  def install!(plan, python) do
    {_kind, root} = plan.source

    stage =
      Path.join(System.tmp_dir!(), "port_bridge_source_#{System.unique_integer([:positive])}")

    try do
      Source.sync!(root, stage)
      requirements = [stage <> extras_suffix(plan.extras) | plan.python_deps]
      run_install!(plan, python, requirements)
    after
      File.rm_rf(stage)
    end
  end

  # uv compiles bytecode here as pip does by default: the worker's first import of
  # DSPy would otherwise compile ~760 modules. For a release, compile!/2 does it
  # once, in a mode that survives the move (see there).
  defp run_install!(%{installer: {:uv, uv}} = plan, python, requirements) do
    compile = if plan.bytecode == :timestamp, do: ["--compile-bytecode"], else: []

    cmd!(
      plan,
      uv,
      ["pip", "install", "--python", python, "--reinstall-package", "portbridge"] ++
        compile ++ requirements
    )
  end

  defp run_install!(%{installer: :pip} = plan, python, requirements) do
    compile = if plan.bytecode == :timestamp, do: [], else: ["--no-compile"]

    cmd!(
      plan,
      python,
      ["-m", "pip", "install", "--disable-pip-version-check"] ++ compile ++ requirements
    )
  end

  @doc false
  def extras_suffix([]), do: ""
  def extras_suffix(extras), do: "[#{Enum.join(extras, ",")}]"

  # Bytecode whose validity does not depend on the source files' timestamps: a
  # release is copied (cp -r, an image layer) and is often read-only, where
  # timestamp-checked bytecode would go stale and be recompiled in memory by every
  # worker, for every module, at every start.
  @bytecode ~S"""
  import compileall, py_compile, sysconfig
  paths = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
  mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
  for path in sorted(paths):
      compileall.compile_dir(path, quiet=2, force=True, workers=0, invalidation_mode=mode)
  """

  @doc false
  @spec compile!(map, String.t()) :: :ok
  def compile!(plan, python),
    do: cmd!(plan, python, ["-c", @bytecode], "#{python} -c <compileall, unchecked-hash>")

  @doc false
  # Runs a tool, its output shown as it comes (or kept, and shown if it fails, when
  # quiet). Raises with the command line (or `shown`) and its status on failure.
  @spec cmd!(map, String.t(), [String.t()], String.t() | nil) :: :ok
  def cmd!(plan, executable, args, shown \\ nil) do
    line = shown || Enum.join([executable | args], " ")
    unless plan.quiet, do: plan.log.("  $ " <> line)
    into = if plan.quiet, do: "", else: IO.stream(:stdio, :line)

    case System.cmd(executable, args, into: into, stderr_to_stdout: true) do
      {_, 0} ->
        :ok

      {out, status} ->
        output = if plan.quiet, do: "\n" <> out, else: " (its output is above)"
        raise PortBridge.SetupError, "`#{line}` exited with status #{status}#{output}"
    end
  end
end
