defmodule Mix.Tasks.PortBridge.HexPackageTest do
  # The package's real mix.exs, with Hex: Hex built from a checkout (never fetched),
  # `mix hex.build --unpack` of a copy of the repository (its alias makes
  # priv/python), the same files as package_test.exs lists without Hex, and an
  # application that depends on exactly that unpacked package with its Hex
  # dependencies given as checkouts (`override: true`): deps.get, compile, `mix
  # port_bridge.setup`, mix run, and a release with the step and `:tar`, unpacked
  # elsewhere, running a DSPy program.
  #
  # Needs the checkouts (no network here, none in CI), else skipped:
  #   HEX_PATH=/path/to/hex (v2.1) JASON_PATH=... TELEMETRY_PATH=... NIMBLE_POOL_PATH=...
  # They are copied before use: nothing is written in them.
  use PortBridge.TestCase, async: true

  alias PortBridge.Test.{Package, ThrowawayApp}

  @moduletag timeout: 1_200_000
  @checkouts ~w(HEX_PATH JASON_PATH TELEMETRY_PATH NIMBLE_POOL_PATH)

  missing = Enum.filter(@checkouts, &(System.get_env(&1) in [nil, ""]))

  cond do
    reason = skip_reason(:dspy) ->
      @moduletag skip: reason

    missing != [] ->
      @moduletag skip:
                   "needs checkouts of Hex and of the package's Hex dependencies: " <>
                     Enum.map_join(@checkouts, " ", &"#{&1}=/path/to/checkout")

    true ->
      :ok
  end

  test "mix hex.build of the real mix.exs, and an application on exactly that package" do
    tmp = ThrowawayApp.tmp_dir!("port_bridge_hex")
    checkouts = Map.new(@checkouts, &{&1, copy_checkout!(System.fetch_env!(&1), tmp)})
    mix_home = hex_home!(checkouts["HEX_PATH"])
    hex = [MIX_HOME: mix_home, HEX_OFFLINE: "1", HEX_HOME: Path.join(tmp, "hex_home")]
    env = ThrowawayApp.env(python(), hex)

    repo = Package.copy_repository!(Path.join(tmp, "repo"))
    client = Path.join(repo, "elixir_client")
    unpacked = Path.join(tmp, "port_bridge-0.1.0")

    {_, timings} =
      ThrowawayApp.timed([], :hex_build, fn ->
        ThrowawayApp.mix!(client, env, ["hex.build", "--unpack", "-o", unpacked])
      end)

    hex_files =
      Path.join(unpacked, "**")
      |> Path.wildcard(match_dot: true)
      |> Enum.filter(&File.regular?/1)
      |> Enum.map(&Path.relative_to(&1, unpacked))
      |> Enum.reject(&(&1 == "hex_metadata.config"))

    # What the suite computes without Hex (package_test.exs) is what Hex packs.
    other = Package.copy_repository!(Path.join(tmp, "repo2"))
    assert Enum.sort(hex_files) == Package.files!(Path.join(other, "elixir_client"))
    assert "priv/python/bridge/__init__.py" in hex_files

    pymodels = ThrowawayApp.pymodels!(Path.join(tmp, "pymodels"))
    base = ThrowawayApp.base_python(python())

    overrides =
      for {app, var} <- [
            jason: "JASON_PATH",
            telemetry: "TELEMETRY_PATH",
            nimble_pool: "NIMBLE_POOL_PATH"
          ],
          do: ", {#{inspect(app)}, path: #{inspect(checkouts[var])}, override: true}"

    app =
      ThrowawayApp.new!(
        tmp,
        env,
        unpacked,
        ",\n releases: [myapp: [steps: [:assemble, &PortBridge.Release.put_python/1, :tar]]]",
        """
        import Config
        config :port_bridge, :setup, python: #{inspect(base)}, python_deps: [#{inspect(pymodels)}]
        """
      )

    # The app's deps: the unpacked package (its real mix.exs) and the checkouts.
    File.write!(
      Path.join(app, "mix.exs"),
      String.replace(
        File.read!(Path.join(app, "mix.exs")),
        "{:port_bridge, path: #{inspect(unpacked)}}",
        "{:port_bridge, path: #{inspect(unpacked)}}#{Enum.join(overrides)}"
      )
    )

    venv = Path.join(tmp, "venv")

    {out, timings} =
      ThrowawayApp.timed(timings, :deps_compile_setup, fn ->
        ThrowawayApp.mix!(app, env, ["deps.get"])
        ThrowawayApp.mix!(app, env, ["port_bridge.setup", "--extras", "", "--path", venv])
      end)

    assert out =~ "installing portbridge and #{pymodels} from the package ("

    {out, timings} =
      ThrowawayApp.timed(timings, :mix_run, fn ->
        ThrowawayApp.mix!(app, env, ["run", "-e", "Myapp.Demo.models()"])
      end)

    assert ThrowawayApp.assert_ran(out, venv, "score") == "5.0"

    prod = ThrowawayApp.env(python(), [MIX_ENV: "prod"] ++ hex)

    {_, timings} =
      ThrowawayApp.timed(timings, :release_tar, fn ->
        ThrowawayApp.mix!(app, prod, ["release"])
      end)

    # The tarball, unpacked elsewhere, with the build's release and environments gone.
    elsewhere = Path.join(tmp, "elsewhere")
    File.mkdir_p!(elsewhere)
    tarball = Path.join(app, "_build/prod/myapp-0.1.0.tar.gz")

    :ok =
      :erl_tar.extract(String.to_charlist(tarball), [
        :compressed,
        cwd: String.to_charlist(elsewhere)
      ])

    File.rm_rf!(Path.join(app, "_build"))
    File.rm_rf!(venv)

    {out, timings} =
      ThrowawayApp.timed(timings, :unpacked_release_eval, fn ->
        ThrowawayApp.run!(Path.join(elsewhere, "bin/myapp"), ["eval", "Myapp.Demo.run()"], prod)
      end)

    ThrowawayApp.assert_ran(out, Path.join(elsewhere, "port_bridge/venv"))

    ThrowawayApp.report(
      "the real mix.exs with Hex: hex.build, an app, a release's tarball",
      timings
    )
  end

  defp copy_checkout!(path, tmp) do
    dest = Path.join([tmp, "checkouts", Path.basename(path)])
    File.mkdir_p!(Path.dirname(dest))
    {_, 0} = System.cmd("cp", ["-R", path, dest])
    File.rm_rf!(Path.join(dest, "_build"))
    File.rm_rf!(Path.join(dest, "deps"))
    dest
  end

  # Hex built from its checkout into a MIX_HOME of the suite's own, kept under
  # _build/ between runs (a minute to build), keyed by the checkout's version.
  defp hex_home!(hex) do
    [_, version] = Regex.run(~r/@version "([^"]+)"/, File.read!(Path.join(hex, "mix.exs")))
    home = Path.expand("../../_build/hex_mix_home/#{version}", __DIR__)

    if Path.wildcard(Path.join(home, "archives/hex-*")) == [] do
      env = Package.clean_env(MIX_HOME: home, MIX_ENV: "prod", HEX_OFFLINE: "1")
      archive = Path.join(hex, "hex.ez")
      ThrowawayApp.mix!(hex, env, ["archive.build", "-o", archive])
      ThrowawayApp.mix!(hex, env, ["archive.install", "--force", archive])
    end

    home
  end
end
