defmodule PortBridge.MixProject do
  use Mix.Project

  # The Python package (pyproject.toml) carries the same version, and this package
  # carries its source (priv/python): `mix port_bridge.setup` installs exactly that.
  @version "0.1.0"
  # Where the sources are published (ex_doc links each function to its source there).
  @source_url "https://github.com/portbridge/portbridge"

  # What an application that depends on :port_bridge gets. Our own machines, which
  # cannot reach hex.pm, build with mix.offline.exs instead (MIX_EXS=mix.offline.exs,
  # as scripts/test.sh does); that file is not part of the package.
  def project do
    [
      app: :port_bridge,
      version: @version,
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      description: description(),
      package: package(),
      aliases: aliases(),
      docs: docs()
    ]
  end

  def application do
    [mod: {PortBridge.Application, []}, extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  defp deps do
    [
      # JSON frames (the default format). Elixir >= 1.18 and OTP >= 27 have JSON built
      # in, but a Hex requirement cannot depend on the Elixir version: required, so that
      # every supported Elixir works without a step of its own.
      {:jason, "~> 1.4"},
      {:telemetry, "~> 1.0"},
      # PortBridge.Pool's :exclusive strategy (one caller per Python at a time).
      {:nimble_pool, "~> 1.1", optional: true},
      # format: :msgpack
      {:msgpax, "~> 2.4", optional: true},
      # PortBridge.Telemetry.metrics/0 (for reporters and Phoenix LiveDashboard).
      {:telemetry_metrics, "~> 1.0", optional: true},
      {:ex_doc, "~> 0.34", only: :dev, runtime: false}
    ]
  end

  defp description do
    "Run Python ML frameworks (DSPy first) from Elixir: a Python worker spawned as an " <>
      "Erlang Port, framed JSON or MessagePack, pools, sessions, one error table."
  end

  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{
        "Source" => @source_url,
        "Changelog" => "https://hexdocs.pm/port_bridge/changelog.html",
        "Python package" => "https://pypi.org/project/portbridge/"
      },
      files: ~w(lib priv mix.exs README.md CHANGELOG.md LICENSE)
    ]
  end

  # The package carries the worker's Python source in priv/python, copied from the
  # repository (bridge/, protocol/, pyproject.toml, README.md) just before the package
  # is built, so it is never stale; it is not committed (.gitignore).
  # PortBridge.Setup.Source decides which files; it is loaded here on its own, so no
  # dependency needs to be fetched or compiled first.
  defp aliases do
    ["hex.build": [&sync_python/1, "hex.build"], "hex.publish": [&sync_python/1, "hex.publish"]]
  end

  defp sync_python(_args) do
    source = PortBridge.Setup.Source

    unless Code.ensure_loaded?(source),
      do: Code.require_file("lib/port_bridge/setup/source.ex", __DIR__)

    root = Path.expand("..", __DIR__)

    unless source.checkout?(root),
      do: Mix.raise("#{root} is not the portbridge repository: priv/python is made from it")

    if source.version(root) != @version,
      do:
        Mix.raise(
          "#{root}/pyproject.toml is version #{source.version(root)}, this package #{@version}"
        )

    names = source.sync!(root, Path.join(__DIR__, "priv/python"))

    Mix.shell().info(
      "priv/python: the worker's Python source, #{length(names)} files from #{root}"
    )
  end

  defp docs do
    [
      main: "readme",
      source_url: @source_url,
      source_ref: "v#{@version}",
      # The client is a directory of the repository: its files' paths start there.
      source_url_pattern: "#{@source_url}/blob/v#{@version}/elixir_client/%{path}#L%{line}",
      extras: [
        "README.md",
        "cheatsheet.cheatmd",
        "notebooks/dspy_native.livemd",
        "CHANGELOG.md",
        "LICENSE"
      ],
      groups_for_extras: [
        Guides: ["README.md", "notebooks/dspy_native.livemd"],
        Cheatsheets: ["cheatsheet.cheatmd"]
      ],
      groups_for_modules: [
        DSPy: [
          PortBridge.DSPy,
          PortBridge.DSPy.Signature,
          PortBridge.DSPy.Program,
          PortBridge.DSPy.Tools,
          PortBridge.DSPy.Types
        ],
        "Workers, pools, clusters": [
          PortBridge,
          PortBridge.Worker,
          PortBridge.Pool,
          PortBridge.Cluster,
          PortBridge.Request,
          PortBridge.Call,
          PortBridge.Target
        ],
        "Errors and resilience": [PortBridge.Error, PortBridge.Retry, PortBridge.CircuitBreaker],
        "Callbacks, sessions, telemetry": [
          PortBridge.Callbacks,
          PortBridge.Records,
          PortBridge.Journal,
          PortBridge.Telemetry
        ],
        "Your own Python": [PortBridge.Commands],
        Testing: [PortBridge.Test]
      ]
    ]
  end
end
