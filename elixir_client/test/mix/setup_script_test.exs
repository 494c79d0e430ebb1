defmodule PortBridge.SetupScriptTest do
  # Livebook and scripts: `Mix.install/2` of the package (exactly its files, as in
  # package_test.exs), no Mix task, no project. Before any setup the error says to
  # call PortBridge.setup!(); PortBridge.setup!/1 makes the environment in the user's
  # cache directory and returns the Python a pool runs; the script run again finds
  # the environment as it was and installs nothing.
  use PortBridge.TestCase, async: true

  alias PortBridge.Test.{Package, ThrowawayApp}

  @moduletag timeout: 600_000

  test "Mix.install, then PortBridge.setup!/1: the Python to give the pool, the same again without installing" do
    tmp = ThrowawayApp.tmp_dir!("port_bridge_script")
    repo = Package.copy_repository!(Path.join(tmp, "repo"))
    client = Path.join(repo, "elixir_client")
    package = Package.unpack!(client, Package.files!(client), Path.join(tmp, "port_bridge-0.1.0"))
    pymodels = ThrowawayApp.pymodels!(Path.join(tmp, "pymodels"))
    base = ThrowawayApp.base_python(python())

    script = Path.join(tmp, "notebook.exs")

    File.write!(script, """
    Mix.install([{:port_bridge, path: #{inspect(package)}}])

    try do
      PortBridge.Options.python()
    rescue
      error in ArgumentError -> IO.puts("before setup: " <> Exception.message(error))
    end

    {micros, python} =
      :timer.tc(fn ->
        PortBridge.setup!(python: #{inspect(base)}, extras: [], python_deps: [#{inspect(pymodels)}])
      end)

    IO.puts("python: " <> python)
    IO.puts("setup!: \#{div(micros, 1000)} ms")
    args = ["--backends", "", "--expose", "pymodels.scoring"]
    {:ok, _} = PortBridge.Pool.start_link(name: Notebook.Python, size: 1, python: python, worker_args: args)
    {:ok, score} = PortBridge.request(Notebook.Python, "scoring.score", %{"x" => 1.5})
    IO.puts("score: \#{score}")
    """)

    # Everything the script writes goes to a cache of its own (Mix.install's build,
    # the environment), but uv and pip keep theirs: their packages come from there.
    cache = Path.join(tmp, "cache")
    {uv_cache, 0} = System.cmd(Path.join(Path.dirname(python()), "uv"), ["cache", "dir"])
    {pip_cache, 0} = System.cmd(python(), ["-m", "pip", "cache", "dir"])

    env =
      ThrowawayApp.env(python(),
        XDG_CACHE_HOME: cache,
        UV_CACHE_DIR: String.trim(uv_cache),
        PIP_CACHE_DIR: String.trim(pip_cache)
      )

    {out, timings} =
      ThrowawayApp.timed([], :first_run, fn -> ThrowawayApp.run!("elixir", [script], env) end)

    assert out =~ "before setup: no Python for the worker: call `PortBridge.setup!()`"
    refute out =~ "mix port_bridge.setup"
    assert [_, python] = Regex.run(~r/^python: (.+)$/m, out)
    assert String.starts_with?(python, Path.join(cache, "port_bridge/venv-0.1.0-"))
    assert out =~ "installing portbridge and #{pymodels} from the package ("
    assert out =~ "score: 3.0"

    {again, timings} =
      ThrowawayApp.timed(timings, :second_run, fn ->
        ThrowawayApp.run!("elixir", [script], env)
      end)

    assert again =~ "python: #{python}\n"
    assert again =~ "#{python} is up to date (portbridge 0.1.0 and #{pymodels}"
    refute again =~ "installing"
    assert again =~ "score: 3.0"
    [_, ms] = Regex.run(~r/^setup!: (\d+) ms$/m, again)

    ThrowawayApp.report(
      "Mix.install and PortBridge.setup!/1 (the second setup!: #{ms} ms)",
      timings
    )
  end
end
