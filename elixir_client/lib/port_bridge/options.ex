defmodule PortBridge.Options do
  @moduledoc false
  # Validates and normalises options up front, with precise ArgumentErrors, so a
  # misconfiguration fails at start_link and not at the first request.

  alias PortBridge.Codec

  @spawn_keys [:python, :executable, :args, :worker_args, :format, :env, :cd, :ready_timeout]
  @doc false
  def spawn_keys, do: @spawn_keys

  @doc """
  How to spawn a worker: `%{executable, args, format, env, cd, ready_timeout}`.

    * `:python` - the Python interpreter that has portbridge installed; default
      `$PORTBRIDGE_PYTHON`, else `python3` from `PATH`. The worker runs as
      `python -m bridge worker --format FORMAT WORKER_ARGS...`.
    * `:worker_args` - extra `portbridge worker` options (`["--max-concurrency", "8"]`).
    * `:executable` and `:args` - spawn this instead, with exactly these arguments
      (for example the `portbridge` console script: `args: ["worker"]`).
    * `:format` - `:json` (default) or `:msgpack` (needs Msgpax).
    * `:env` - extra environment variables, a map or list of `{name, value}` strings.
    * `:cd` - the worker's working directory.
    * `:ready_timeout` - ms to wait for the worker's `ready` event (default 15_000).
  """
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
          python = Keyword.get_lazy(opts, :python, &default_python/0)
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

  defp default_python do
    System.get_env("PORTBRIDGE_PYTHON") || System.find_executable("python3") ||
      raise ArgumentError,
            "no Python found: pass :python (the interpreter that has portbridge installed) or set PORTBRIDGE_PYTHON"
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
  def pos_integer!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value > 0 ->
        value

      other ->
        raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(other)}"
    end
  end

  @doc false
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
