defmodule PortBridge.Setup.Source do
  @moduledoc false
  # The worker's Python source that this client installs: the files pip builds the
  # `portbridge` wheel from. In the repository they lie at its root (bridge/,
  # protocol/, pyproject.toml, README.md); the Hex package carries a copy of exactly
  # those files in priv/python/, made by sync!/2 when the package is built (mix.exs
  # runs it before `mix hex.build` and `mix hex.publish`) and never committed. So the
  # Python half a user installs is always the one of the Elixir half they have, and
  # no `portbridge` is ever fetched from a package index.
  #
  # This file needs nothing but Elixir and Erlang (no other module of the client):
  # mix.exs loads it on its own to sync, before the project is compiled.

  # What the wheel is built from, relative to the repository's root (pyproject.toml's
  # package-dir maps `bridge` and `bridge._protocol` onto the two trees; its readme is
  # README.md).
  @trees ~w(bridge protocol)
  @files ~w(pyproject.toml README.md)

  # This file lies in <repository>/elixir_client/lib/port_bridge/setup when it is
  # compiled from a checkout (a path dependency, a git one that is not `sparse:`, this
  # project); in deps/port_bridge/lib/port_bridge/setup when it comes from Hex, where
  # no portbridge pyproject.toml lies four levels up.
  @checkout Path.expand("../../../..", __DIR__)

  @typedoc "Where the source lies: a repository checkout, or the package's priv/python."
  @type t :: {:checkout | :package, root :: String.t()}

  @doc false
  # The source this build of the client installs: the checkout it was compiled from
  # when that is still there, else the copy in the package's priv/python.
  @spec locate() :: t
  def locate do
    packaged = packaged_dir()

    cond do
      checkout?(@checkout) ->
        {:checkout, @checkout}

      packaged && File.regular?(Path.join(packaged, "pyproject.toml")) ->
        {:package, packaged}

      true ->
        raise ArgumentError,
              "the Python source of port_bridge is missing: neither the repository it was " <>
                "compiled from (#{@checkout}) nor the package's priv/python " <>
                "(#{packaged || "port_bridge is not loaded"}) has it. A `sparse:` git " <>
                "dependency leaves it out: depend on the whole repository, or on the Hex package"
    end
  end

  @doc false
  @spec checkout?(String.t()) :: boolean
  def checkout?(root) do
    case File.read(Path.join(root, "pyproject.toml")) do
      {:ok, text} ->
        text =~ ~r/^name\s*=\s*"portbridge"/m and File.dir?(Path.join(root, "bridge"))

      {:error, _} ->
        false
    end
  end

  defp packaged_dir do
    case :code.priv_dir(:port_bridge) do
      {:error, _} -> nil
      priv -> Path.join(List.to_string(priv), "python")
    end
  end

  @doc false
  # The files of the source under `root`, relative, sorted: the two trees without
  # bytecode, build output or hidden files, and the two files at the top.
  @spec files(String.t()) :: [String.t()]
  def files(root) do
    for(name <- @files, File.regular?(Path.join(root, name)), do: name)
    |> Kernel.++(Enum.flat_map(@trees, &tree(root, &1)))
    |> Enum.sort()
  end

  defp tree(root, relative) do
    path = Path.join(root, relative)

    case File.lstat(path) do
      {:ok, %File.Stat{type: :directory}} ->
        path
        |> File.ls!()
        |> Enum.reject(&skip?/1)
        |> Enum.flat_map(&tree(root, Path.join(relative, &1)))

      {:ok, %File.Stat{type: :regular}} ->
        [relative]

      _other ->
        []
    end
  end

  defp skip?(name) do
    String.starts_with?(name, ".") or name == "__pycache__" or
      Path.extname(name) in ~w(.pyc .pyo .egg-info)
  end

  @doc false
  # A digest of the source: its file names and their bytes. It changes with any edit,
  # and tells whether an environment holds this very source.
  @spec fingerprint(String.t()) :: String.t()
  def fingerprint(root) do
    root
    |> files()
    |> Enum.reduce(:erlang.md5_init(), fn name, md5 ->
      bytes = File.read!(Path.join(root, name))
      :erlang.md5_update(md5, [name, 0, Integer.to_string(byte_size(bytes)), 0, bytes])
    end)
    |> :erlang.md5_final()
    |> Base.encode16(case: :lower)
  end

  @doc false
  # The version in the source's pyproject.toml.
  @spec version(String.t()) :: String.t() | nil
  def version(root) do
    with {:ok, text} <- File.read(Path.join(root, "pyproject.toml")),
         [_, version] <- Regex.run(~r/^version\s*=\s*"([^"]+)"/m, text) do
      version
    else
      _ -> nil
    end
  end

  @doc false
  # Makes `dest` hold exactly the source of `root`: writes what differs (each file
  # through a temporary name, so a concurrent reader never sees half of one) and
  # removes what the source does not have. Returns the relative names.
  @spec sync!(String.t(), String.t()) :: [String.t()]
  def sync!(root, dest) do
    names = files(root)
    if names == [], do: raise(ArgumentError, "#{root} holds no Python source of portbridge")

    for name <- names do
      bytes = File.read!(Path.join(root, name))
      target = Path.join(dest, name)

      unless File.read(target) == {:ok, bytes} do
        File.mkdir_p!(Path.dirname(target))
        partial = "#{target}.#{System.unique_integer([:positive])}.partial"
        File.write!(partial, bytes)
        File.rename!(partial, target)
      end
    end

    remove_extra(dest, MapSet.new(names), "")
    names
  end

  # Deletes the files and directories under `dest` that are not among `keep`.
  defp remove_extra(dest, keep, relative) do
    case File.ls(Path.join(dest, relative)) do
      {:ok, entries} ->
        Enum.each(entries, fn entry ->
          name = Path.join(relative, entry)
          path = Path.join(dest, name)

          cond do
            MapSet.member?(keep, name) ->
              :ok

            File.dir?(path) and not match?({:ok, %{type: :symlink}}, File.lstat(path)) ->
              remove_extra(dest, keep, name)
              if File.ls!(path) == [], do: File.rmdir(path)

            true ->
              File.rm(path)
          end
        end)

      {:error, _} ->
        :ok
    end
  end
end
