defmodule Mix.Tasks.PortBridge.PackageTest do
  # The Hex package as a user gets it: its file list made from the real mix.exs (its
  # hex.build alias run, package[:files] expanded by Hex's rules; test/mix/
  # hex_package_test.exs checks that Hex itself lists the same), exactly those files
  # laid out as an unpacked package, and a new application on it. Its Python comes
  # from nothing but those files and the dependencies' index: `mix
  # port_bridge.setup` (the core, and the application's own package from config's
  # python_deps) under `mix run`, then a release whose step puts DSPy's environment
  # inside it, moved to another directory with the task's environment deleted, running
  # a DSPy program on the offline LM.
  #
  # The unpacked package compiles here through our mix.offline.exs (Mix refuses the
  # real mix.exs while Hex is missing); it compiles the package's lib/ and reads its
  # priv/, nothing of this checkout's.
  use PortBridge.TestCase, async: true

  alias PortBridge.Setup.Source
  alias PortBridge.Test.{Package, ThrowawayApp}

  @moduletag timeout: 900_000
  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  test "the package carries the worker's Python source; an app installs exactly it, and a moved release runs DSPy" do
    tmp = ThrowawayApp.tmp_dir!("port_bridge_package")
    repo = Package.copy_repository!(Path.join(tmp, "repo"))
    client = Path.join(repo, "elixir_client")
    {files, timings} = ThrowawayApp.timed([], :package_files, fn -> Package.files!(client) end)

    # priv/python is the source, file for file and byte for byte; nothing else of the
    # repository is in the package, nor anything built.
    python_files = for "priv/python/" <> name <- files, do: name
    assert python_files == Source.files(repo)
    assert "pyproject.toml" in python_files and "bridge/__init__.py" in python_files
    assert "protocol/errors.json" in python_files

    for name <- python_files,
        do:
          assert(
            File.read!(Path.join([client, "priv/python", name])) ==
              File.read!(Path.join(repo, name))
          )

    assert "mix.exs" in files and "lib/port_bridge/setup/source.ex" in files
    assert "priv/errors.json" in files
    refute "mix.offline.exs" in files

    refute Enum.any?(files, &String.contains?(&1, ["__pycache__", ".egg-info", "_build"]))
    refute Enum.any?(files, &String.starts_with?(&1, "test/"))

    package = Package.unpack!(client, files, Path.join(tmp, "port_bridge-0.1.0"))
    pymodels = ThrowawayApp.pymodels!(Path.join(tmp, "pymodels"))
    base = ThrowawayApp.base_python(python())
    env = ThrowawayApp.env(python())

    # The application's own Python package and the DSPy extra come from config; the
    # task's command line asks for the core alone.
    app =
      ThrowawayApp.new!(
        tmp,
        env,
        package,
        ",\n releases: [myapp: [steps: [:assemble, &PortBridge.Release.put_python/1]]]",
        """
        import Config
        config :port_bridge, :setup, python: #{inspect(base)}, python_deps: [#{inspect(pymodels)}]
        """
      )

    venv = Path.join(tmp, "venv")

    {out, timings} =
      ThrowawayApp.timed(timings, :compile_and_setup, fn ->
        ThrowawayApp.mix!(app, env, ["port_bridge.setup", "--extras", "", "--path", venv])
      end)

    assert out =~ "installing portbridge and #{pymodels} from the package ("
    assert out =~ "#{venv} is ready (portbridge 0.1.0 and #{pymodels}, Python 3."

    # The installed worker is the package's source.
    assert ThrowawayApp.installed_source!(venv, "bridge.cli") ==
             File.read!(Path.join(repo, "bridge/cli.py"))

    timings = ThrowawayApp.models_under_mix_run!(app, env, venv, timings)

    # The release: its step builds DSPy's environment inside it.
    prod = ThrowawayApp.env(python(), MIX_ENV: "prod")

    {out, timings} =
      ThrowawayApp.timed(timings, :release, fn -> ThrowawayApp.mix!(app, prod, ["release"]) end)

    built = Path.join(app, "_build/prod/rel/myapp")
    assert out =~ "installing portbridge[dspy] and #{pymodels} from the package ("
    assert out =~ "#{built}/port_bridge/venv is ready (portbridge 0.1.0, with dspy and"
    assert File.regular?(Path.join(built, "lib/port_bridge-0.1.0/priv/python/pyproject.toml"))

    # Moved elsewhere, with the task's environment and its record gone: the release
    # runs DSPy from its own environment.
    moved = Path.join(tmp, "elsewhere/myapp")
    File.mkdir_p!(Path.dirname(moved))
    File.rename!(built, moved)
    File.rm_rf!(venv)
    File.rm_rf!(Path.join(app, "_build/port_bridge"))

    {out, timings} =
      ThrowawayApp.timed(timings, :moved_release_eval, fn ->
        ThrowawayApp.run!(Path.join(moved, "bin/myapp"), ["eval", "Myapp.Demo.run()"], prod)
      end)

    ThrowawayApp.assert_ran(out, Path.join(moved, "port_bridge/venv"))
    out = ThrowawayApp.run!(Path.join(moved, "bin/myapp"), ["eval", "Myapp.Demo.models()"], prod)
    assert ThrowawayApp.assert_ran(out, Path.join(moved, "port_bridge/venv"), "score") == "5.0"

    # Its bytecode does not depend on the files' timestamps (PEP 552 flags: hash-based,
    # unchecked), so copies and read-only images never recompile it.
    [pyc | _] =
      Path.wildcard(
        Path.join(
          moved,
          "port_bridge/venv/lib/python3*/site-packages/bridge/__pycache__/cli.*.pyc"
        )
      )

    <<_magic::binary-size(4), flags::little-32, _::binary>> = File.read!(pyc)
    assert flags == 0b01

    ThrowawayApp.report("the Hex package's files, setup and a moved release", timings)
  end
end
