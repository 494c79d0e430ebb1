defmodule Mix.Tasks.PortBridge.Setup do
  @shortdoc "Creates the Python environment that PortBridge workers run in"

  @moduledoc """
  Creates a Python environment with the matching `portbridge[dspy]`, checks that a
  worker starts in it, and makes it the default `:python` of this project.

      mix port_bridge.setup
      mix port_bridge.setup --path /srv/myapp/python --python python3.12

  What is installed: when `:port_bridge` comes from a checkout of its repository (a
  `path:` dependency, a `git:` one that is not `sparse:`, or this project itself),
  the Python package of that same checkout, editable, so both sides stay one
  version; otherwise (from Hex) `portbridge[dspy]` of this client's version from
  the package index.

  How: with `uv` when it is on `PATH` (seconds from its cache), else with
  `python -m venv` and pip. Running it again does nothing slow: it checks the
  environment (~50 ms) and installs only when something is missing or the
  checkout's `pyproject.toml` changed.

  Where workers find it: the interpreter of the environment is recorded in
  `_build/port_bridge/python_path`, and a worker started without `:python` runs it
  (unless `PORTBRIDGE_PYTHON` or `config :port_bridge, python: ...` names another).
  A release built from this project reads the same record, so it finds the
  environment on the machine that built it, or in an image that keeps its path:
  set up with `--path` a directory that the image keeps (the default lies under
  `_build/`), or set `config :port_bridge, python: ...` in `config/runtime.exs`.

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
    * `--force` - install again even when the environment looks complete.
    * `--quiet` - print only the result (and the tools' output when they fail).
  """

  use Mix.Task

  alias PortBridge.{Codec, Options}

  @switches [
    path: :string,
    python: :string,
    installer: :string,
    extras: :string,
    force: :boolean,
    quiet: :boolean
  ]

  # This file lies in <repository>/elixir_client/lib/mix/tasks when it is compiled
  # from a checkout (a path dependency, a git one that is not `sparse:`, this project);
  # in deps/port_bridge/lib/mix/tasks when it comes from Hex, where no pyproject.toml
  # of portbridge lies four levels up.
  @checkout Path.expand("../../../..", __DIR__)
  @stamp "portbridge-setup.json"

  # Run by the environment's interpreter: what is installed, as one JSON line.
  @probe ~S"""
  import importlib.metadata as m, importlib.util as u, json, re, sys
  def version(name):
      try:
          return m.version(name)
      except m.PackageNotFoundError:
          return None
  extras = sys.argv[1:]
  requires = (m.requires("portbridge") or []) if version("portbridge") else []
  wanted = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requires
            if any(re.search(r"extra\s*==\s*['\"]%s['\"]" % re.escape(e), r) for e in extras)]
  print(json.dumps({
      "python": "%d.%d.%d" % sys.version_info[:3],
      "supported": sys.version_info[:2] >= (3, 11),
      "portbridge": version("portbridge"),
      "bridge": u.find_spec("bridge") is not None,
      "missing": [name for name in wanted if version(name) is None],
  }))
  """

  @impl true
  @spec run([String.t()]) :: :ok
  def run(argv) do
    {opts, rest} = OptionParser.parse!(argv, strict: @switches)

    if rest != [],
      do: Mix.raise("mix port_bridge.setup takes no arguments, got: #{Enum.join(rest, " ")}")

    Application.load(:port_bridge)
    plan = plan(opts)
    python = venv_python(plan.dir)

    case up_to_date(plan, python) do
      {:ok, probe} ->
        say(plan, "* #{python} is up to date (#{describe(probe, plan)})")

      :no ->
        install(plan, python)
    end

    record!(python)

    Mix.shell().info(
      "PortBridge workers started without :python now run #{python} " <>
        "(recorded in #{Path.relative_to_cwd(Options.setup_record())})"
    )
  end

  defp plan(opts) do
    %{
      dir: Path.expand(opts[:path] || Path.join(Path.dirname(Options.setup_record()), "venv")),
      python: opts[:python],
      installer: installer(opts[:installer]),
      extras: extras(Keyword.get(opts, :extras, "dspy")),
      source: source(),
      force: Keyword.get(opts, :force, false),
      quiet: Keyword.get(opts, :quiet, false)
    }
  end

  defp installer(nil), do: if(uv = System.find_executable("uv"), do: {:uv, uv}, else: :pip)

  defp installer("uv"),
    do: {:uv, System.find_executable("uv") || Mix.raise("--installer uv: uv is not in PATH")}

  defp installer("pip"), do: :pip
  defp installer(other), do: Mix.raise("--installer must be uv or pip, got: #{other}")

  defp extras(list) do
    extras = String.split(list, ",", trim: true) |> Enum.map(&String.trim/1)

    for extra <- extras,
        not Regex.match?(~r/^[A-Za-z0-9][A-Za-z0-9._-]*$/, extra),
        do: Mix.raise("--extras: #{inspect(extra)} is not an extra's name")

    extras
  end

  defp source do
    pyproject = Path.join(@checkout, "pyproject.toml")

    case File.read(pyproject) do
      {:ok, text} ->
        if text =~ ~r/^name\s*=\s*"portbridge"/m,
          do: {:checkout, @checkout, Base.encode16(:erlang.md5(text), case: :lower)},
          else: {:index, version()}

      {:error, _} ->
        {:index, version()}
    end
  end

  defp version, do: to_string(Application.spec(:port_bridge, :vsn))

  # What pip or uv is asked to install.
  defp requirement(%{source: {:checkout, root, _}, extras: extras}),
    do: ["--editable", root <> extras_suffix(extras)]

  defp requirement(%{source: {:index, version}, extras: extras}),
    do: ["portbridge#{extras_suffix(extras)}==#{version}"]

  defp extras_suffix([]), do: ""
  defp extras_suffix(extras), do: "[#{Enum.join(extras, ",")}]"

  defp from(%{source: {:checkout, root, _}}), do: "the checkout #{root}"
  defp from(%{source: {:index, version}}), do: "the package index (version #{version})"

  ## Is there anything to do?

  # The stamp says what was installed; the probe that it is still there.
  defp up_to_date(%{force: true}, _python), do: :no

  defp up_to_date(plan, python) do
    with {:ok, text} <- File.read(Path.join(plan.dir, @stamp)),
         {:ok, stamp} <- Codec.decode(text, :json),
         true <- stamp == stamp(plan, stamp["base_python"]) || :no,
         true <- plan.python in [nil, stamp["base_python"]] || :no,
         {:ok, probe} <- probe(python, plan),
         true <- complete?(probe) || :no do
      {:ok, probe}
    else
      _ -> :no
    end
  end

  defp stamp(plan, base_python) do
    %{
      "requirement" => requirement(plan),
      "fingerprint" => fingerprint(plan.source),
      "base_python" => base_python
    }
  end

  defp fingerprint({:checkout, _root, pyproject_md5}), do: pyproject_md5
  defp fingerprint({:index, _version}), do: nil

  defp probe(python, plan) do
    if File.regular?(python) do
      case System.cmd(python, ["-c", @probe | plan.extras], stderr_to_stdout: true) do
        {out, 0} -> Codec.decode(List.last(String.split(out, "\n", trim: true)) || "", :json)
        {out, status} -> {:error, {status, out}}
      end
    else
      {:error, :enoent}
    end
  end

  defp complete?(probe) do
    probe["supported"] == true and probe["bridge"] == true and probe["portbridge"] == version() and
      probe["missing"] == []
  end

  defp describe(probe, plan) do
    extras = if plan.extras == [], do: "", else: ", with #{Enum.join(plan.extras, ", ")}"
    "portbridge #{probe["portbridge"]}#{extras}, Python #{probe["python"]}"
  end

  ## Creating and installing

  defp install(plan, python) do
    created = create!(plan, python)
    tool = if match?({:uv, _}, plan.installer), do: "uv", else: "pip"
    what = "portbridge#{extras_suffix(plan.extras)}"

    say(
      plan,
      "* installing #{what} from #{from(plan)} with #{tool} (a minute or two the first time)"
    )

    timed(plan, fn -> install!(plan, python) end)

    probe =
      case probe(python, plan) do
        {:ok, probe} -> probe
        {:error, reason} -> Mix.raise("#{python} does not run: #{inspect(reason)}")
      end

    unless complete?(probe) do
      Mix.raise(
        "the installation in #{plan.dir} is incomplete: #{inspect(probe)} (wanted portbridge #{version()})"
      )
    end

    say(plan, "* starting a worker to check it")
    timed(plan, fn -> check_worker!(python, plan.extras) end)

    base_python = if created, do: plan.python, else: read_stamp_base(plan.dir, plan.python)
    {:ok, json} = Codec.encode(stamp(plan, base_python), :json)
    File.write!(Path.join(plan.dir, @stamp), json)
    say(plan, "* #{plan.dir} is ready (#{describe(probe, plan)})")
  end

  defp read_stamp_base(dir, default) do
    with {:ok, text} <- File.read(Path.join(dir, @stamp)),
         {:ok, %{"base_python" => base}} <- Codec.decode(text, :json) do
      base
    else
      _ -> default
    end
  end

  # Returns true when it made a new environment.
  defp create!(plan, python) do
    cond do
      File.regular?(Path.join(plan.dir, "pyvenv.cfg")) ->
        base = read_stamp_base(plan.dir, nil)

        if plan.python && base && plan.python != base do
          Mix.raise(
            "#{plan.dir} was made from #{base}, not #{plan.python}: remove it, or choose another --path"
          )
        end

        unless File.regular?(python),
          do: Mix.raise("#{plan.dir} is a broken virtual environment (no #{python}): remove it")

        false

      File.dir?(plan.dir) and File.ls!(plan.dir) != [] ->
        Mix.raise("#{plan.dir} is not empty and not a virtual environment: choose another --path")

      true ->
        say(plan, "* creating a Python environment in #{plan.dir}")
        timed(plan, fn -> create_venv!(plan) end)
        true
    end
  end

  defp create_venv!(%{installer: {:uv, uv}} = plan),
    do: cmd!(plan, uv, ["venv", "--python", plan.python || ">=3.11", plan.dir])

  defp create_venv!(%{installer: :pip} = plan) do
    base = plan.python || "python3"

    executable =
      if String.contains?(base, "/"),
        do: Path.expand(base),
        else: System.find_executable(base) || Mix.raise("--python: #{base} is not in PATH")

    cmd!(plan, executable, ["-m", "venv", plan.dir])
  end

  # uv compiles bytecode at install time as pip does: the worker's first import of
  # DSPy would otherwise compile ~760 modules, and a read-only release cannot keep them.
  defp install!(%{installer: {:uv, uv}} = plan, python),
    do:
      cmd!(plan, uv, [
        "pip",
        "install",
        "--compile-bytecode",
        "--python",
        python | requirement(plan)
      ])

  defp install!(%{installer: :pip} = plan, python),
    do:
      cmd!(plan, python, [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check" | requirement(plan)
      ])

  defp cmd!(plan, executable, args) do
    line = Enum.join([executable | args], " ")
    unless plan.quiet, do: Mix.shell().info("  $ " <> line)
    into = if plan.quiet, do: "", else: IO.stream(:stdio, :line)

    case System.cmd(executable, args, into: into, stderr_to_stdout: true) do
      {_, 0} ->
        :ok

      {out, status} ->
        output = if plan.quiet, do: "\n" <> out, else: " (its output is above)"
        Mix.raise("`#{line}` exited with status #{status}#{output}")
    end
  end

  # A real worker from the new environment answers ping and, with DSPy, a command
  # that waits for DSPy's import (on the offline LM, in a session of its own): what a
  # first request would meet, found now.
  defp check_worker!(python, extras) do
    {:ok, _} = Application.ensure_all_started(:port_bridge)
    trap = Process.flag(:trap_exit, true)
    {:ok, worker} = PortBridge.Worker.start_link(python: python)

    try do
      check_request!(worker, "ping", %{})

      if "dspy" in extras,
        do:
          check_request!(worker, "configure_lm", %{model: "offline"},
            session_id: "port_bridge.setup"
          )
    after
      stop(worker)
      Process.flag(:trap_exit, trap)
    end
  end

  defp stop(worker) do
    GenServer.stop(worker)
  catch
    :exit, _already_gone -> :ok
  end

  defp check_request!(worker, command, args, opts \\ []) do
    case PortBridge.request(worker, command, args, [timeout: 120_000] ++ opts) do
      {:ok, _} ->
        :ok

      {:error, error} ->
        Mix.raise(
          "a worker in the new environment failed `#{command}`: #{Exception.message(error)}"
        )
    end
  end

  ## Output and the record

  defp record!(python) do
    record = Options.setup_record()
    File.mkdir_p!(Path.dirname(record))
    File.write!(record, python <> "\n")
  end

  defp venv_python(dir) do
    case :os.type() do
      {:win32, _} -> Path.join([dir, "Scripts", "python.exe"])
      _ -> Path.join([dir, "bin", "python"])
    end
  end

  defp say(%{quiet: true}, _message), do: :ok
  defp say(_plan, message), do: Mix.shell().info(message)

  defp timed(plan, fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    seconds = (System.monotonic_time(:millisecond) - started) / 1000
    say(plan, "  (#{:erlang.float_to_binary(seconds, decimals: 1)} s)")
    result
  end
end
