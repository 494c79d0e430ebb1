defmodule PortBridge.MixProject do
  use Mix.Project

  # The Python package (pyproject.toml) carries the same version: `mix port_bridge.setup`
  # installs portbridge of exactly this version from the package index.
  @version "0.1.0"

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
        "Changelog" => "https://hexdocs.pm/port_bridge/changelog.html",
        "Python package" => "https://pypi.org/project/portbridge/"
      },
      files: ~w(lib priv mix.exs README.md CHANGELOG.md LICENSE)
    ]
  end

  defp docs do
    [
      main: "readme",
      extras: ["README.md", "CHANGELOG.md", "LICENSE"],
      source_ref: "v#{@version}"
    ]
  end
end
