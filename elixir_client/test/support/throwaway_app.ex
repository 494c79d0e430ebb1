defmodule PortBridge.Test.ThrowawayApp do
  @moduledoc """
  A new Mix application that depends on the client as a user's would (`mix new`, a
  dependency on a directory), and the commands the deployment tests run in it. Every
  step is a real `mix` (and `uv` or pip, and Python) process.
  """

  import ExUnit.Assertions

  alias PortBridge.Test.Package

  # What the application runs: a DSPy program on the offline LM, and a command of its
  # own Python package (`python_deps:`), through workers started without :python.
  @demo """
  defmodule Myapp.Demo do
    alias PortBridge.DSPy

    def run do
      {:ok, _} = Application.ensure_all_started(:port_bridge)
      {:ok, worker} = PortBridge.Worker.start_link([])
      {:ok, %{"pid" => os_pid}} = PortBridge.request(worker, "ping")
      {:ok, _} = DSPy.configure_lm(worker, model: "offline", session_id: "demo")

      {:ok, _} =
        DSPy.create_program(worker,
          signature: "question -> answer",
          module: "ChainOfThought",
          program_id: "qa",
          session_id: "demo"
        )

      {:ok, %{"outputs" => %{"answer" => answer}}} =
        DSPy.execute_program(worker, "qa", %{question: "What is the capital of France?"},
          session_id: "demo",
          timeout: 120_000
        )

      print_worker(os_pid)
      IO.puts("answer: " <> answer)
      GenServer.stop(worker)
    end

    def models do
      {:ok, _} = Application.ensure_all_started(:port_bridge)
      args = ["--backends", "", "--expose", "pymodels.scoring"]
      {:ok, worker} = PortBridge.Worker.start_link(worker_args: args)
      {:ok, %{"pid" => os_pid}} = PortBridge.request(worker, "ping")
      {:ok, score} = PortBridge.request(worker, "scoring.score", %{"x" => 2.5})
      print_worker(os_pid)
      IO.puts("score: " <> inspect(score))
      GenServer.stop(worker)
    end

    defp print_worker(os_pid) do
      {command, 0} = System.cmd("ps", ["-o", "args=", "-p", Integer.to_string(os_pid)])
      IO.puts("worker: " <> String.trim(command))
    end
  end
  """

  @doc """
  `mix new myapp` in `tmp`, depending on `dep` (a path); `project` adds to its
  project keyword list (Elixir source), `config` is its config/config.exs.
  """
  def new!(tmp, env, dep, project \\ "", config \\ "import Config\n") do
    {_, 0} = System.cmd("mix", ["new", "myapp"], cd: tmp, env: env, stderr_to_stdout: true)
    app = Path.join(tmp, "myapp")

    File.write!(Path.join(app, "mix.exs"), """
    defmodule Myapp.MixProject do
      use Mix.Project

      def project do
        [app: :myapp, version: "0.1.0", elixir: "~> 1.14",
         deps: [{:port_bridge, path: #{inspect(dep)}}]#{project}]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.mkdir_p!(Path.join(app, "config"))
    File.write!(Path.join(app, "config/config.exs"), config)
    File.write!(Path.join(app, "lib/demo.ex"), @demo)
    app
  end

  @doc """
  A local Python package of the application's, `pymodels` in `dir`: a command
  exposed with `--expose pymodels.scoring` (what a scikit-learn model would be).
  """
  def pymodels!(dir) do
    File.mkdir_p!(Path.join(dir, "pymodels"))

    File.write!(Path.join(dir, "pyproject.toml"), """
    [build-system]
    requires = ["setuptools>=77"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "pymodels"
    version = "1.0.0"
    """)

    File.write!(Path.join(dir, "pymodels/__init__.py"), "")

    File.write!(Path.join(dir, "pymodels/scoring.py"), """
    from bridge.sdk import command

    @command
    def score(x: float) -> float:
        \"\"\"A model's score.\"\"\"
        return x * 2
    """)

    dir
  end

  @doc """
  The environment of the app's `mix`: none of this suite's own, with the `uv` of the
  repository's .venv (the test extra: installs from its cache) first in PATH.
  """
  def env(python, extra \\ []) do
    bin = Path.dirname(python)
    path = if File.exists?(Path.join(bin, "uv")), do: bin <> ":", else: ""
    Package.clean_env([PATH: path <> System.get_env("PATH")] ++ extra)
  end

  @doc "The interpreter `python`'s environment was made from: the Python to start from."
  def base_python(python) do
    {out, 0} = System.cmd(python, ["-c", "import sys; print(sys._base_executable)"])
    String.trim(out)
  end

  def mix!(dir, env, args) do
    {out, status} = System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
    assert status == 0, "mix #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    out
  end

  def run!(executable, args, env) do
    {out, status} = System.cmd(executable, args, env: env, stderr_to_stdout: true)
    assert status == 0, "#{executable} #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    out
  end

  @doc "The source of a Python module (`\"bridge.cli\"`) as the environment in `venv` has it."
  def installed_source!(venv, module) do
    script = "import #{module}, sys; sys.stdout.write(open(#{module}.__file__).read())"
    {source, 0} = System.cmd(Path.join(venv, "bin/python"), ["-c", script])
    source
  end

  @doc """
  `mix run` of the demo's call of the app's own Python package, through a worker
  started without :python: asserts that it ran in `venv`, and its result.
  """
  def models_under_mix_run!(app, env, venv, timings) do
    {out, timings} =
      timed(timings, :mix_run, fn -> mix!(app, env, ["run", "-e", "Myapp.Demo.models()"]) end)

    assert assert_ran(out, venv, "score") == "5.0"
    timings
  end

  @doc "Asserts the demo's output: the worker that ran, under `venv`, and its answer."
  def assert_ran(out, venv, what \\ "answer") do
    assert out =~ ~r/^worker: #{Regex.escape(venv)}\/bin\/python -m bridge worker/m, out
    assert [_, value] = Regex.run(~r/^#{what}: (.+)$/m, out), out
    assert String.trim(value) != ""
    String.trim(value)
  end

  @doc "A temporary directory (short: paths end up in shebangs), removed after the test."
  def tmp_dir!(name) do
    tmp = Path.join(System.tmp_dir!(), "#{name}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(tmp)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(tmp) end)
    tmp
  end

  def timed(timings, step, fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    seconds = Float.round((System.monotonic_time(:millisecond) - started) / 1000, 1)
    {result, [{step, seconds} | timings]}
  end

  def report(title, timings) do
    IO.puts(
      "\n#{title} (s): " <>
        Enum.map_join(Enum.reverse(timings), ", ", fn {step, s} -> "#{step} #{s}" end)
    )
  end
end
