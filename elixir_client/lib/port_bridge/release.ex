defmodule PortBridge.Release do
  @moduledoc """
  Puts the Python environment inside a release, so that the release runs wherever
  it is copied.

      # mix.exs
      def project do
        [
          ...,
          releases: [my_app: [steps: [:assemble, &PortBridge.Release.put_python/1, :tar]]]
        ]
      end

  After `:assemble`, `put_python/1` makes a virtual environment in the release's
  `port_bridge/venv` with the worker's Python source that the release carries, its
  dependencies and the application's `python_deps:`, from `config :port_bridge,
  :setup` (the options of `PortBridge.setup!/1`; `:path` is the release's own).
  Building the release again reuses the environment when nothing changed. Its
  bytecode is compiled once in a mode that holds when the files are copied (no
  timestamps), so a read-only release never recompiles DSPy at a worker's start.
  The environment is one of the release's overlays: the `:tar` step packs it.

  At run time, a worker started without `:python` finds it through `RELEASE_ROOT`
  (set by the release's scripts); `PORTBRIDGE_PYTHON` or `config :port_bridge,
  python: ...` still win. The environment runs the Python it was made from, at
  the same path: the machine that runs the release needs that Python (the same
  base image, or the same OS package). Otherwise make an environment there, at
  first start or in the image's build:

      bin/my_app eval 'PortBridge.setup!(path: "/srv/my_app/python")'

  and set `config :port_bridge, python: "/srv/my_app/python/bin/python"` in
  `config/runtime.exs`. `PortBridge.setup!/1` installs the Python source the
  release carries (in `lib/port_bridge-<version>/priv/python`, which this step
  also writes when the release was built from a repository checkout).
  """

  alias PortBridge.Setup
  alias PortBridge.Setup.{Lookup, Source}

  @doc """
  A `mix release` step (after `:assemble`): puts the Python environment in the
  release, and returns the release with it among its overlays.
  """
  @spec put_python(map) :: map
  def put_python(%{path: root, applications: applications, overlays: overlays} = release) do
    log = if Code.ensure_loaded?(Mix), do: &Mix.shell().info/1, else: &IO.puts/1

    # The source travels with the release, for PortBridge.setup!/1 on its machine.
    vsn = applications |> Map.fetch!(:port_bridge) |> Keyword.fetch!(:vsn) |> to_string()
    {_kind, source} = Source.locate()
    Source.sync!(source, Path.join([root, "lib", "port_bridge-#{vsn}", "priv", "python"]))

    dir = Lookup.release_env(root)

    quiet = Keyword.get(release.options, :quiet) || nil
    Setup.run!([path: dir, bytecode: :unchecked_hash, log: log, quiet: quiet], [])

    overlay = Path.relative_to(dir, root) |> Path.split() |> hd()
    %{release | overlays: Enum.uniq(overlays ++ [overlay])}
  end
end
