defmodule PortBridge.Setup.LookupTest do
  use ExUnit.Case, async: true

  alias PortBridge.Setup.{Installer, Lookup}

  # The default :python's sources are passed in: this suite runs concurrently with
  # others that read PORTBRIDGE_PYTHON, so it cannot change the environment.
  # (test/mix/setup_test.exs and package_test.exs cover the real record and the real
  # release, written by the real task and step.)
  @moduletag :tmp_dir

  test "PORTBRIDGE_PYTHON, then config :port_bridge, :python, then a release's environment, then the setup record",
       %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")
    recorded = Path.join(dir, "python")
    File.write!(recorded, "")
    File.write!(record, recorded <> "\n")
    release = Path.join(dir, "release")
    released = Installer.venv_python(Lookup.release_env(release))
    File.mkdir_p!(Path.dirname(released))
    File.write!(released, "")

    assert Lookup.resolve("/from/env", "/from/config", release, record) == "/from/env"
    assert Lookup.resolve(nil, "/from/config", release, record) == "/from/config"
    assert Lookup.resolve("", "/from/config", release, record) == "/from/config"
    assert Lookup.resolve(nil, nil, release, record) == released
    assert Lookup.resolve(nil, nil, "", record) == recorded
    # A release built without the step (on the machine that built it) reads the record.
    assert Lookup.resolve(nil, nil, Path.join(dir, "other_release"), record) == recorded
  end

  test "no Python anywhere: the error says what to run here (a Mix project)", %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")
    assert Lookup.context() == :mix

    error = assert_raise ArgumentError, fn -> Lookup.resolve(nil, nil, nil, record) end
    assert error.message =~ "run `mix port_bridge.setup` in the project"
    assert error.message =~ record
    assert error.message =~ "PORTBRIDGE_PYTHON"

    assert_raise ArgumentError, ~r/run `mix port_bridge.setup`/, fn ->
      Lookup.resolve(nil, nil, nil, nil)
    end
  end

  test "what to run in a release and in Livebook or a script" do
    assert Lookup.hint(:release) =~ "steps: [:assemble, &PortBridge.Release.put_python/1]"
    assert Lookup.hint(:release) =~ "eval 'PortBridge.setup!(path:"
    assert Lookup.hint(:release) =~ "config :port_bridge, python:"
    assert Lookup.hint(:script) =~ "call `PortBridge.setup!()`"
    refute Lookup.hint(:script) =~ "mix "
  end

  test "a recorded environment that is gone is named, not skipped", %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")
    File.write!(record, "/nowhere/bin/python\n")

    assert_raise ArgumentError,
                 ~r{recorded in .*python_path is gone \(/nowhere/bin/python does not exist\): run `mix port_bridge.setup`},
                 fn -> Lookup.resolve(nil, nil, nil, record) end
  end

  test "a release whose environment lost the Python it was made from says so", %{tmp_dir: dir} do
    release = Path.join(dir, "release")
    python = Installer.venv_python(Lookup.release_env(release))
    File.mkdir_p!(Path.dirname(python))
    File.ln_s!("/nowhere/python3.11", python)

    error = assert_raise ArgumentError, fn -> Lookup.resolve(nil, nil, release, nil) end
    assert error.message =~ "#{python} is missing (it runs /nowhere/python3.11"
    assert error.message =~ "install that Python here"
    assert error.message =~ "PortBridge.setup!(path:"
  end

  test "a worker's error that DSPy is missing says what to run here; other errors are left alone" do
    message =
      "DSPy is not available in this worker (...); install portbridge[dspy] into the worker's Python environment"

    assert Lookup.remedy(:initialization, "dspy_missing", message) =~
             "#{message}; with this Elixir client: run `mix port_bridge.setup`"

    assert Lookup.remedy(:initialization, "dspy_import_failed", message) =~
             "mix port_bridge.setup"

    assert Lookup.remedy(:validation, "dspy_missing", message) == message
    assert Lookup.remedy(:initialization, "worker_start_failed", message) == message
  end

  test "the record lies beside the build directories, whichever MIX_ENV" do
    assert Lookup.record() ==
             Path.join([Path.dirname(Mix.Project.build_path()), "port_bridge", "python_path"])
  end

  test "the Python package carries the client's version: setup installs that version" do
    pyproject = File.read!(Path.expand("../../../../pyproject.toml", __DIR__))
    [_, python_version] = Regex.run(~r/^version = "([^"]+)"/m, pyproject)
    assert python_version == to_string(Application.spec(:port_bridge, :vsn))
  end
end
