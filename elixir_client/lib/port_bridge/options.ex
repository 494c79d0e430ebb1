defmodule PortBridge.Options do
  @moduledoc false
  # Validates and normalises options up front, with precise ArgumentErrors, so a
  # misconfiguration fails at start_link and not at the first request.

  alias PortBridge.Codec

  @spawn_keys [:python, :executable, :args, :worker_args, :format, :env, :cd, :ready_timeout]
  @type spawn :: %{
          executable: String.t(),
          args: [String.t()],
          format: :json | :msgpack,
          env: [{charlist, charlist | false}],
          cd: String.t() | nil,
          ready_timeout: pos_integer
        }

  @doc false
  @spec spawn_keys() :: [atom]
  def spawn_keys, do: @spawn_keys

  @doc """
  How to spawn a worker: `%{executable, args, format, env, cd, ready_timeout}`.

    * `:python` - the Python interpreter that has portbridge installed (see
      `python/0` for the default). The worker runs as
      `python -m bridge worker --format FORMAT WORKER_ARGS...`.
    * `:worker_args` - extra `portbridge worker` options (`["--max-concurrency", "8"]`).
    * `:executable` and `:args` - spawn this instead, with exactly these arguments
      (for example the `portbridge` console script: `args: ["worker"]`).
    * `:format` - `:json` (default) or `:msgpack` (needs Msgpax).
    * `:env` - extra environment variables, a map or list of `{name, value}` strings.
    * `:cd` - the worker's working directory.
    * `:ready_timeout` - ms to wait for the worker's `ready` event (default 15_000).
  """
  @spec spawn_opts(keyword) :: spawn
  def spawn_opts(opts) do
    format = Keyword.get(opts, :format, :json)

    unless format in [:json, :msgpack] do
      raise ArgumentError, ":format must be :json or :msgpack, got: #{inspect(format)}"
    end

    unless format in Codec.formats() do
      raise ArgumentError,
            ":format #{inspect(format)} needs Msgpax: add {:msgpax, \"~> 2.4\"} to your deps"
    end

    {executable, args} =
      case Keyword.fetch(opts, :executable) do
        {:ok, executable} ->
          {resolve!(executable, :executable), string_list!(opts, :args, [])}

        :error ->
          python = Keyword.get_lazy(opts, :python, &python/0)
          worker_args = string_list!(opts, :worker_args, [])

          {resolve!(python, :python),
           ["-m", "bridge", "worker", "--format", Atom.to_string(format) | worker_args]}
      end

    %{
      executable: executable,
      args: args,
      format: format,
      env: env!(Keyword.get(opts, :env, [])),
      cd: cd!(Keyword.get(opts, :cd)),
      ready_timeout: pos_integer!(opts, :ready_timeout, 15_000)
    }
  end

  # Where `mix port_bridge.setup` records the interpreter of the environment it made:
  # beside the build directories of the project that compiled this module
  # (`_build/port_bridge/python_path`, whichever MIX_ENV), fixed at compile time, so a
  # release built from that project reads the same record (on the machine that built
  # it, or an image that keeps that path).
  @setup_record (if Code.ensure_loaded?(Mix.Project) and Mix.Project.get() do
                   Path.join([
                     Path.dirname(Mix.Project.build_path()),
                     "port_bridge",
                     "python_path"
                   ])
                 end)

  @doc false
  # The file `mix port_bridge.setup` writes; nil when compiled without Mix.
  @spec setup_record() :: String.t() | nil
  def setup_record, do: @setup_record

  @doc """
  The Python a worker runs when `:python` is not given, the first of:

    1. `$PORTBRIDGE_PYTHON`
    2. `config :port_bridge, python: "/path/to/bin/python"` (the application
       environment; in a release, `config/runtime.exs`)
    3. the environment `mix port_bridge.setup` made (it records its interpreter in
       `_build/port_bridge/python_path`, wherever `--path` put the environment)

  Raises `ArgumentError`, saying how to set one up, when there is none.
  """
  @spec python() :: String.t()
  def python do
    resolve_python(
      System.get_env("PORTBRIDGE_PYTHON"),
      Application.get_env(:port_bridge, :python),
      @setup_record
    )
  end

  @doc false
  # python/0 with its sources as arguments, for tests that cannot change the
  # environment of a suite that runs concurrently.
  @spec resolve_python(String.t() | nil, term, String.t() | nil) :: term
  def resolve_python(env_var, app_env, record) do
    cond do
      env_var not in [nil, ""] -> env_var
      app_env != nil -> app_env
      recorded = read_record(record) -> recorded
      true -> raise ArgumentError, no_python_message(record)
    end
  end

  defp read_record(nil), do: nil

  defp read_record(record) do
    case File.read(record) do
      {:ok, text} -> recorded_python!(String.trim(text), record)
      {:error, _} -> nil
    end
  end

  defp recorded_python!(python, record) do
    if File.regular?(python) do
      python
    else
      raise ArgumentError,
            "the Python environment that mix port_bridge.setup recorded in #{record} " <>
              "is gone (#{python} does not exist): run mix port_bridge.setup again"
    end
  end

  defp no_python_message(record) do
    where = if record, do: " (it records the interpreter in #{record})", else: ""

    "no Python for the worker: run `mix port_bridge.setup` to create an environment " <>
      "with portbridge#{where}, or name an interpreter that has portbridge installed: " <>
      "the :python option, PORTBRIDGE_PYTHON, or config :port_bridge, python: \"...\""
  end

  defp resolve!(path, key) when is_binary(path) and path != "" do
    found =
      if String.contains?(path, "/"), do: Path.expand(path), else: System.find_executable(path)

    cond do
      found == nil ->
        raise ArgumentError, "#{inspect(key)}: #{inspect(path)} is not in PATH"

      not File.regular?(found) ->
        raise ArgumentError, "#{inspect(key)}: #{found} does not exist"

      true ->
        found
    end
  end

  defp resolve!(other, key),
    do: raise(ArgumentError, "#{inspect(key)} must be a path, got: #{inspect(other)}")

  defp string_list!(opts, key, default) do
    value = Keyword.get(opts, key, default)

    if is_list(value) and Enum.all?(value, &is_binary/1) do
      value
    else
      raise ArgumentError, "#{inspect(key)} must be a list of strings, got: #{inspect(value)}"
    end
  end

  defp env!(env) when is_map(env) or is_list(env) do
    Enum.map(env, fn
      {name, value} when is_binary(name) and (is_binary(value) or value == false) ->
        {String.to_charlist(name), if(value == false, do: false, else: String.to_charlist(value))}

      other ->
        raise ArgumentError,
              ":env entries must be {name, value} strings (or {name, false} to unset), got: #{inspect(other)}"
    end)
  end

  defp env!(other),
    do:
      raise(
        ArgumentError,
        ":env must be a map or a list of {name, value}, got: #{inspect(other)}"
      )

  defp cd!(nil), do: nil

  defp cd!(dir) when is_binary(dir) do
    if File.dir?(dir), do: dir, else: raise(ArgumentError, ":cd: #{dir} is not a directory")
  end

  defp cd!(other),
    do: raise(ArgumentError, ":cd must be a directory path, got: #{inspect(other)}")

  @doc false
  # The `:name` of a pool or cluster: an atom, the name requests use.
  @spec name!(keyword) :: atom
  def name!(opts) do
    name = Keyword.get(opts, :name)

    unless is_atom(name) and name not in [nil, true, false],
      do: raise(ArgumentError, ":name must be an atom, got: #{inspect(name)}")

    name
  end

  @doc false
  # Raises for any option not in `keys` (`what` took them: "PortBridge.Pool").
  @spec known!(keyword, [atom], String.t()) :: :ok
  def known!(opts, keys, what) do
    case Keyword.keys(opts) -- keys do
      [] -> :ok
      unknown -> raise ArgumentError, "unknown #{what} options: #{inspect(unknown)}"
    end
  end

  @doc false
  @spec pos_integer!(keyword, atom, term) :: pos_integer
  def pos_integer!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value > 0 ->
        value

      other ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(other)}"
    end
  end

  @doc false
  @spec non_neg_integer!(keyword, atom, term) :: non_neg_integer
  def non_neg_integer!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value >= 0 ->
        value

      other ->
        raise ArgumentError,
              "#{inspect(key)} must be a non-negative integer, got: #{inspect(other)}"
    end
  end

  @doc false
  @spec timeout!(keyword, atom, term) :: timeout
  def timeout!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      :infinity ->
        :infinity

      value when is_integer(value) and value > 0 ->
        value

      other ->
        raise ArgumentError,
              "#{inspect(key)} must be a positive integer (ms) or :infinity, got: #{inspect(other)}"
    end
  end
end
