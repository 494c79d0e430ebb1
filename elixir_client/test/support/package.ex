defmodule PortBridge.Test.Package do
  @moduledoc """
  The Hex package as users get it, made here without Hex (and checked against Hex
  where a Hex checkout is given, in test/mix/hex_package_test.exs): a copy of the
  repository, the package's real `mix.exs` loaded in a separate `elixir` process,
  its `hex.build` alias run (what makes `priv/python`), and its `package[:files]`
  expanded by Hex's rules. `unpack!/2` lays exactly those files out, as
  `mix hex.build --unpack` would, plus the offline project file that compiles them
  here.
  """

  @client Path.expand("../..", __DIR__)
  @repository Path.expand("..", @client)

  # What a copy of the repository leaves out: build output, environments, caches.
  @skip ~w(_build deps tmp cover doc __pycache__ .venv .git .pytest_cache .hypothesis .mypy_cache)

  @doc "Copies the repository (its files as they are now) into `dest`."
  def copy_repository!(dest) do
    copy_tree!(@repository, dest)
    File.rm_rf!(Path.join(dest, "elixir_client/priv/python"))
    dest
  end

  defp copy_tree!(from, to) do
    File.mkdir_p!(to)

    for entry <- File.ls!(from), entry not in @skip, not String.ends_with?(entry, ".egg-info") do
      source = Path.join(from, entry)

      case File.lstat!(source).type do
        :directory -> copy_tree!(source, Path.join(to, entry))
        :regular -> File.cp!(source, Path.join(to, entry))
        _other -> :ok
      end
    end
  end

  # Run in the copy's elixir_client by a plain `elixir`: loads the real mix.exs (Mix
  # declares its Hex dependencies without resolving them), runs the function steps of
  # its hex.build alias, and prints what Hex reads from it.
  @script ~S"""
  Mix.start()
  Code.require_file("mix.exs")
  config = Mix.Project.config()
  for step <- config[:aliases][:"hex.build"], is_function(step, 1), do: step.([])
  package = config[:package]
  files = package[:files]
  excludes = Enum.map(package[:exclude_patterns] || [], &Regex.source/1)
  IO.puts("PACKAGE " <> Base.encode64(:erlang.term_to_binary({files, excludes})))
  """

  @doc """
  The package's files (relative to `client`, the copy's elixir_client), as
  `mix hex.build` lists them: the `hex.build` alias is run first.
  """
  def files!(client) do
    {out, status} =
      System.cmd("elixir", ["-e", @script], cd: client, stderr_to_stdout: true, env: clean_env())

    unless status == 0, do: raise("loading #{client}/mix.exs failed (#{status}):\n#{out}")
    [_, encoded] = Regex.run(~r/^PACKAGE (\S+)$/m, out)
    {patterns, excludes} = :erlang.binary_to_term(Base.decode64!(encoded))
    expand(patterns, Enum.map(excludes, &Regex.compile!/1), client)
  end

  # Hex's rules (Mix.Tasks.Hex.Build, v2.1): each entry is a wildcard relative to the
  # project; a directory brings everything under it, itself included, symlinks not
  # followed; the exclude patterns (and .DS_Store) drop paths. Hex stores a
  # directory's files (and empty directories); so does this list.
  defp expand(patterns, excludes, dir) do
    excludes = excludes ++ [~r/\W\.DS_Store$/]

    patterns
    |> Enum.flat_map(&Path.wildcard(Path.join(dir, &1)))
    |> Enum.flat_map(&walk/1)
    |> Enum.map(&Path.relative_to(&1, dir))
    |> Enum.uniq()
    |> Enum.reject(fn path -> Enum.any?(excludes, &(path =~ &1)) end)
    |> Enum.filter(&(File.lstat!(Path.join(dir, &1)).type != :directory))
    |> Enum.sort()
  end

  defp walk(path) do
    case File.lstat!(path).type do
      :directory -> [path | Enum.flat_map(File.ls!(path), &walk(Path.join(path, &1)))]
      _ -> [path]
    end
  end

  @doc """
  Lays out `files` of `client` in `dest` (the unpacked package) and a directory
  beside it, `dest <> "_offline"`, whose project file compiles them without Hex
  (our mix.offline.exs, which is not part of the package). Returns that directory:
  the path an application depends on here.
  """
  def unpack!(client, files, dest) do
    for file <- files do
      File.mkdir_p!(Path.dirname(Path.join(dest, file)))
      File.cp!(Path.join(client, file), Path.join(dest, file))
    end

    File.cp!(Path.join(@client, "mix.offline.exs"), Path.join(dest, "mix.offline.exs"))
    offline = dest <> "_offline"
    File.mkdir_p!(offline)

    File.write!(
      Path.join(offline, "mix.exs"),
      "Code.require_file(#{inspect(Path.join(dest, "mix.offline.exs"))})\n"
    )

    File.ln_s!(Path.join(dest, "priv"), Path.join(offline, "priv"))
    offline
  end

  @doc """
  The environment of a child `mix` or `elixir`: nothing of this suite's own (its
  project file, MIX_ENV, Python, local dependencies) plus `extra`.
  """
  def clean_env(extra \\ []) do
    set = Map.new(extra, fn {name, value} -> {to_string(name), value} end)

    unset =
      ~w(MIX_EXS MIX_ENV MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH PORTBRIDGE_PYTHON NIMBLE_POOL_PATH TELEMETRY_PATH TELEMETRY_METRICS_PATH RELEASE_ROOT RELEASE_NAME)

    Enum.map(unset -- Map.keys(set), &{&1, nil}) ++ Enum.to_list(set)
  end
end
