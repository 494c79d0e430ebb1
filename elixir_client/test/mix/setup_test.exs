defmodule Mix.Tasks.PortBridge.SetupTest do
  # A path dependency on a checkout of the repository, as a new user's app has it:
  # `mix port_bridge.setup` installs that checkout's Python source (with pip here, the
  # path without uv; the application's own package from --python-dep), again does
  # nothing, again after an edit of the source installs the edit; a worker started
  # without :python runs it under `mix run`, and a release built without the release
  # step finds it through the record, on the machine that built it.
  #
  # The checkout is a copy of this one (so that it can be edited). Offline, the app
  # cannot depend on its elixir_client/ itself: its mix.exs declares Hex dependencies,
  # and Mix refuses to load any project that does while Hex is missing. So it depends
  # on a directory whose mix.exs loads the copy's mix.offline.exs (the build
  # scripts/test.sh uses), beside a link to its priv/.
  use PortBridge.TestCase, async: true

  alias PortBridge.Test.{Package, ThrowawayApp}

  @moduletag timeout: 900_000

  test "mix port_bridge.setup from a checkout: pip, nothing to do, an edit installed; mix run and a release" do
    tmp = ThrowawayApp.tmp_dir!("port_bridge_setup")
    repo = Package.copy_repository!(Path.join(tmp, "repo"))
    dep = Path.join(tmp, "port_bridge")
    File.mkdir_p!(dep)

    File.write!(
      Path.join(dep, "mix.exs"),
      "Code.require_file(#{inspect(Path.join(repo, "elixir_client/mix.offline.exs"))})\n"
    )

    File.ln_s!(Path.join(repo, "elixir_client/priv"), Path.join(dep, "priv"))
    env = ThrowawayApp.env(python())
    app = ThrowawayApp.new!(tmp, env, dep)
    pymodels = ThrowawayApp.pymodels!(Path.join(tmp, "pymodels"))
    venv = Path.join(tmp, "venv")

    args =
      ~w(port_bridge.setup --installer pip --extras) ++
        ["", "--path", venv, "--python", ThrowawayApp.base_python(python())] ++
        ["--python-dep", pymodels]

    {out, timings} =
      ThrowawayApp.timed([], :compile_and_pip, fn -> ThrowawayApp.mix!(app, env, args) end)

    assert out =~ "installing portbridge and #{pymodels} from the checkout #{repo} with pip"
    assert out =~ "#{venv} is ready (portbridge 0.1.0 and #{pymodels}, Python 3."

    assert File.read!(Path.join(app, "_build/port_bridge/python_path")) ==
             Path.join(venv, "bin/python") <> "\n"

    # Again: nothing to install.
    {out, timings} =
      ThrowawayApp.timed(timings, :setup_again, fn -> ThrowawayApp.mix!(app, env, args) end)

    assert out =~ "#{venv}/bin/python is up to date (portbridge 0.1.0 and #{pymodels}"
    refute out =~ "installing"

    # An edit of the Python source is installed by the next setup.
    File.write!(Path.join(repo, "bridge/cli.py"), "# edited\n", [:append])

    # (uv this time: seconds; whichever made the environment, either fills it.)
    edited = List.replace_at(args, 2, "uv")

    {out, timings} =
      ThrowawayApp.timed(timings, :setup_edited, fn -> ThrowawayApp.mix!(app, env, edited) end)

    assert out =~ "installing portbridge and #{pymodels} from the checkout #{repo} with uv"

    assert String.ends_with?(ThrowawayApp.installed_source!(venv, "bridge.cli"), "# edited\n")
    timings = ThrowawayApp.models_under_mix_run!(app, env, venv, timings)

    # A release of the app reads the same record.
    prod = ThrowawayApp.env(python(), MIX_ENV: "prod")

    {_, timings} =
      ThrowawayApp.timed(timings, :release, fn ->
        ThrowawayApp.mix!(app, prod, ~w(release --quiet))
      end)

    release = Path.join(app, "_build/prod/rel/myapp/bin/myapp")

    {out, timings} =
      ThrowawayApp.timed(timings, :release_eval, fn ->
        ThrowawayApp.run!(release, ["eval", "Myapp.Demo.models()"], prod)
      end)

    assert ThrowawayApp.assert_ran(out, venv, "score") == "5.0"
    ThrowawayApp.report("mix port_bridge.setup from a checkout", timings)
  end
end
