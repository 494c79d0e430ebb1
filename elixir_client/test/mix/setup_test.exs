defmodule Mix.Tasks.PortBridge.SetupTest do
  # As a new user would: a fresh Mix app that depends on the client by path, `mix
  # port_bridge.setup` into a temporary directory, and a DSPy program on the offline
  # LM through a PortBridge.Worker started without :python, under `mix run` and from
  # a release. Every step is a real `mix` (and `uv` or pip, and Python) process.
  #
  # Offline, the app cannot depend on elixir_client/ itself: its mix.exs declares Hex
  # dependencies, and Mix refuses to load any project that does while Hex is missing.
  # So it depends on a directory whose mix.exs loads our mix.offline.exs (the build
  # scripts/test.sh uses), beside a link to our priv/: the same lib/ and priv/ files,
  # compiled from where they lie in this checkout.
  use PortBridge.TestCase, async: true

  @moduletag timeout: 900_000
  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @client Path.expand("../..", __DIR__)

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

      {command, 0} = System.cmd("ps", ["-o", "args=", "-p", Integer.to_string(os_pid)])
      IO.puts("worker: " <> String.trim(command))
      IO.puts("answer: " <> answer)
      GenServer.stop(worker)
    end
  end
  """

  setup do
    tmp = Path.join(System.tmp_dir!(), "port_bridge_setup_#{System.unique_integer([:positive])}")
    File.mkdir_p!(tmp)
    on_exit(fn -> File.rm_rf!(tmp) end)
    %{tmp: tmp}
  end

  test "mix port_bridge.setup, then DSPy with no :python option, in mix run and in a release",
       %{tmp: tmp} do
    base_python = base_python()
    # The repository's .venv has uv (the test extra): seconds from its cache instead of
    # a minute of pip. The pip path is taken first, with the core package only.
    uv_dir = Path.dirname(python())
    path = if File.exists?(Path.join(uv_dir, "uv")), do: uv_dir <> ":", else: ""
    env = child_env(PATH: path <> System.get_env("PATH"))

    {_, 0} = System.cmd("mix", ["new", "myapp"], cd: tmp, env: env, stderr_to_stdout: true)
    app = Path.join(tmp, "myapp")
    dep = Path.join(tmp, "port_bridge")
    File.mkdir_p!(dep)

    File.write!(
      Path.join(dep, "mix.exs"),
      "Code.require_file(#{inspect(Path.join(@client, "mix.offline.exs"))})\n"
    )

    File.ln_s!(Path.join(@client, "priv"), Path.join(dep, "priv"))

    File.write!(Path.join(app, "mix.exs"), """
    defmodule Myapp.MixProject do
      use Mix.Project

      def project do
        [app: :myapp, version: "0.1.0", elixir: "~> 1.14", deps: [{:port_bridge, path: "../port_bridge"}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(app, "lib/demo.ex"), @demo)

    timings = []
    core = Path.join(tmp, "core")

    {out, timings} =
      timed(timings, :compile_and_pip_core, fn ->
        mix!(
          app,
          env,
          ~w(port_bridge.setup --installer pip --extras) ++
            ["", "--path", core, "--python", base_python]
        )
      end)

    assert out =~ "installing portbridge from the checkout #{Path.expand("..", @client)}"
    assert out =~ "#{core} is ready (portbridge 0.1.0, Python 3."

    assert File.read!(Path.join(app, "_build/port_bridge/python_path")) ==
             Path.join(core, "bin/python") <> "\n"

    venv = Path.join(tmp, "venv")
    args = ~w(port_bridge.setup --path) ++ [venv, "--python", base_python]
    {out, timings} = timed(timings, :setup_dspy, fn -> mix!(app, env, args) end)
    assert out =~ "installing portbridge[dspy] from the checkout"
    assert out =~ "is ready (portbridge 0.1.0, with dspy, Python 3."
    assert out =~ "PortBridge workers started without :python now run #{venv}/bin/python"

    # Again: nothing to install.
    {out, timings} = timed(timings, :setup_again, fn -> mix!(app, env, args) end)
    assert out =~ "#{venv}/bin/python is up to date (portbridge 0.1.0, with dspy"
    refute out =~ "installing"

    {out, timings} =
      timed(timings, :mix_run, fn -> mix!(app, env, ["run", "-e", "Myapp.Demo.run()"]) end)

    assert_ran_dspy(out, venv)

    # A release of the app reads the same record.
    prod = child_env(PATH: path <> System.get_env("PATH"), MIX_ENV: "prod")
    {_, timings} = timed(timings, :release, fn -> mix!(app, prod, ~w(release --quiet)) end)
    release = Path.join(app, "_build/prod/rel/myapp/bin/myapp")

    {out, timings} =
      timed(timings, :release_eval, fn ->
        {out, status} =
          System.cmd(release, ["eval", "Myapp.Demo.run()"], env: prod, stderr_to_stdout: true)

        assert status == 0, "the release exited with #{status}:\n#{out}"
        out
      end)

    assert_ran_dspy(out, venv)

    IO.puts(
      "\nmix port_bridge.setup end to end (s): " <>
        Enum.map_join(Enum.reverse(timings), ", ", fn {step, s} -> "#{step} #{s}" end)
    )
  end

  defp assert_ran_dspy(out, venv) do
    assert out =~ ~r/^worker: #{Regex.escape(venv)}\/bin\/python -m bridge worker/m
    assert [_, answer] = Regex.run(~r/^answer: (.+)$/m, out)
    assert String.trim(answer) != ""
  end

  # The interpreter the repository's .venv was made from: the Python to start from.
  defp base_python do
    {out, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
    String.trim(out)
  end

  # What the throwaway app's `mix` must not inherit from this suite's: our project
  # file, our MIX_ENV, the Python of our tests (it must find its own), our local deps.
  defp child_env(extra) do
    set = Map.new(extra, fn {name, value} -> {Atom.to_string(name), value} end)

    unset =
      ~w(MIX_EXS MIX_ENV MIX_BUILD_PATH MIX_BUILD_ROOT PORTBRIDGE_PYTHON NIMBLE_POOL_PATH TELEMETRY_PATH)

    Enum.map(unset -- Map.keys(set), &{&1, nil}) ++ Enum.to_list(set)
  end

  defp mix!(dir, env, args) do
    {out, status} = System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
    assert status == 0, "mix #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    out
  end

  defp timed(timings, step, fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    seconds = Float.round((System.monotonic_time(:millisecond) - started) / 1000, 1)
    {result, [{step, seconds} | timings]}
  end
end
