defmodule PortBridge.OptionsTest do
  use ExUnit.Case, async: true

  alias PortBridge.Options

  # The default :python's sources are passed in: this suite runs concurrently with
  # others that read PORTBRIDGE_PYTHON, so it cannot change the environment.
  # (test/mix/setup_test.exs covers the real record, written by the real task.)
  @moduletag :tmp_dir

  test "PORTBRIDGE_PYTHON, then config :port_bridge, :python, then the setup record",
       %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")
    recorded = Path.join(dir, "python")
    File.write!(recorded, "")
    File.write!(record, recorded <> "\n")

    assert Options.resolve_python("/from/env", "/from/config", record) == "/from/env"
    assert Options.resolve_python(nil, "/from/config", record) == "/from/config"
    assert Options.resolve_python("", "/from/config", record) == "/from/config"
    assert Options.resolve_python(nil, nil, record) == recorded
  end

  test "no Python anywhere: the error says to run mix port_bridge.setup", %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")

    error = assert_raise ArgumentError, fn -> Options.resolve_python(nil, nil, record) end
    assert error.message =~ "run `mix port_bridge.setup`"
    assert error.message =~ record
    assert error.message =~ "PORTBRIDGE_PYTHON"

    assert_raise ArgumentError, ~r/run `mix port_bridge.setup`/, fn ->
      Options.resolve_python(nil, nil, nil)
    end
  end

  test "a recorded environment that is gone is named, not skipped", %{tmp_dir: dir} do
    record = Path.join(dir, "python_path")
    File.write!(record, "/nowhere/bin/python\n")

    assert_raise ArgumentError,
                 ~r{recorded in .*python_path is gone \(/nowhere/bin/python does not exist\)},
                 fn ->
                   Options.resolve_python(nil, nil, record)
                 end
  end

  test "the record lies beside the build directories, whichever MIX_ENV" do
    assert Options.setup_record() ==
             Path.join([Path.dirname(Mix.Project.build_path()), "port_bridge", "python_path"])
  end

  test "the Python package carries the client's version: setup installs that version" do
    pyproject = File.read!(Path.expand("../../../pyproject.toml", __DIR__))
    [_, python_version] = Regex.run(~r/^version = "([^"]+)"/m, pyproject)
    assert python_version == to_string(Application.spec(:port_bridge, :vsn))
  end
end
