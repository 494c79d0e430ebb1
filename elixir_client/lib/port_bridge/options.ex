defmodule PortBridge.Options do
  @moduledoc false
  # Validates and normalises options up front, with precise ArgumentErrors, so a
  # misconfiguration fails at start_link and not at the first request.

  alias PortBridge.Codec

  alias PortBridge.Schema

  @default_timeout 60_000

  @spawn_schema [
    python: [
      type: :string,
      default_doc: "see `PortBridge.Options.python/0`",
      doc: """
      the Python interpreter that has portbridge installed. The worker runs as
      `python -m bridge worker --format FORMAT [--log-frames] WORKER_ARGS...`
      """
    ],
    worker_args: [
      type: {:list, :string},
      default: [],
      doc: "extra `portbridge worker` options (`[\"--max-concurrency\", \"8\"]`)"
    ],
    executable: [
      type: :string,
      doc: """
      spawn this instead of `:python`, with exactly the arguments `:args` (for
      example the `portbridge` console script: `args: ["worker"]`)
      """
    ],
    args: [type: {:list, :string}, default: [], doc: "the arguments of `:executable`"],
    format: [
      type: {:in, [:json, :msgpack]},
      default: :json,
      doc: "the frame format: `:json` or `:msgpack` (needs Msgpax)"
    ],
    env: [
      type: {:or, [:map, {:list, :any}]},
      default: [],
      doc:
        "extra environment variables, a map or list of `{name, value}` strings (`{name, false}` unsets)"
    ],
    cd: [type: :string, doc: "the worker's working directory"],
    ready_timeout: [
      type: :pos_integer,
      default: 15_000,
      doc: "ms to wait for the worker's `ready` event"
    ],
    forward_logs: [
      type: :boolean,
      default: true,
      doc: """
      the worker's log records (at its `--log-level`, `warning` by default) reach
      Logger as well as its stderr (only Logger with `worker_args: ["--quiet-stderr"]`),
      with Logger metadata (`--log-frames`; not added
      with `:executable`)
      """
    ]
  ]

  @request_schema [
    session_id: [
      type: :string,
      doc: """
      the session to work in (its programs and LM configuration); a pool sends all
      of a session's requests to the same worker
      """
    ],
    timeout: [
      type: :timeout,
      default_doc: "`#{@default_timeout}`, a pool's `:timeout` for a pool",
      doc: """
      the whole budget of the request in ms, or `:infinity`: waiting for a worker,
      writing, waiting for the reply, and any retries. At the deadline the result is
      a `timeout` error and the worker is sent `cancel` for the request; nothing
      blocks the caller past it
      """
    ],
    on_event: [
      type: {:fun, 1},
      doc: """
      a function called with `{name, data}` for each event of the request
      (`{"chunk", %{...}}`, `{"progress", %{...}}`) before the reply
      """
    ],
    meta: [type: :map, doc: "a map echoed back by the worker and put in its logs (`trace_id`)"],
    callbacks: [
      type: :map,
      doc: """
      `%{"name" => fun}`: Elixir functions the worker may call back while this
      request runs (an agent's tools, a metric), see `PortBridge.Callbacks`
      """
    ],
    retry: [
      type: {:or, [:boolean, :keyword_list]},
      default: false,
      doc: "`true` or options: retry following the error table, see `PortBridge.Retry`"
    ],
    circuit: [
      type: :any,
      default: false,
      doc: """
      `true`, a key or options: fail at once while calls with the same key keep
      failing with `circuit_break` errors, see `PortBridge.CircuitBreaker`
      """
    ],
    pool_timeout: [
      type: :timeout,
      default: 5_000,
      doc: "exclusive pools only: ms to wait for a free worker, within `:timeout`"
    ]
  ]

  # How a Worker starts its Python again; the same options, defaults included, for a
  # Worker and for the Workers of a pool.
  @restart_schema [
    lazy: [
      type: :boolean,
      default: false,
      doc: "spawn the Python at the first request, not at start"
    ],
    max_start_failures: [
      type: :pos_integer,
      default: 5,
      doc: "failed starts in a row before the Worker stops (and its supervisor restarts it)"
    ],
    start_backoff_min: [
      type: :pos_integer,
      default: 100,
      doc: "ms to wait after a failed start, doubling after each"
    ],
    start_backoff_max: [type: :pos_integer, default: 5_000, doc: "the longest such wait, in ms"]
  ]

  @doc false
  @spec default_timeout() :: pos_integer
  def default_timeout, do: @default_timeout

  @doc false
  # The options of a worker's spawn (PortBridge.Worker, PortBridge.Pool).
  @spec spawn_schema() :: Schema.t()
  def spawn_schema, do: @spawn_schema

  @doc false
  @spec spawn_keys() :: [atom]
  def spawn_keys, do: Keyword.keys(@spawn_schema)

  @doc false
  # How a Worker restarts its Python (PortBridge.Worker, PortBridge.Pool).
  @spec restart_schema() :: Schema.t()
  def restart_schema, do: @restart_schema

  @doc false
  @spec restart_keys() :: [atom]
  def restart_keys, do: Keyword.keys(@restart_schema)

  @doc false
  # The options of a request (PortBridge.request/4 and every layer under it).
  @spec request_schema() :: Schema.t()
  def request_schema, do: @request_schema

  @doc false
  # The options of a request that is not awaited (async_request, stream): no retry,
  # no circuit breaker.
  @spec async_schema() :: Schema.t()
  def async_schema, do: Schema.drop(@request_schema, [:retry, :circuit])

  @type spawn :: %{
          executable: String.t(),
          args: [String.t()],
          format: :json | :msgpack,
          env: [{charlist, charlist | false}],
          cd: String.t() | nil,
          ready_timeout: pos_integer,
          probe_stderr: boolean
        }

  @doc """
  How to spawn a worker: `%{executable, args, format, env, cd, ready_timeout}`,
  from these options (checked; see `PortBridge.Worker`):

  #{Schema.docs(@spawn_schema)}
  """
  @spec spawn_opts(keyword) :: spawn
  def spawn_opts(opts) do
    opts =
      Schema.validate!(opts, @spawn_schema, "PortBridge.Options.spawn_opts/1", defaults: true)

    format = opts[:format]

    unless format in Codec.formats() do
      raise ArgumentError,
            ":format #{inspect(format)} needs Msgpax: add {:msgpax, \"~> 2.4\"} to your deps"
    end

    # probe_stderr: our own worker command may run a second time to tell why it
    # failed to start (PortBridge.Channel.start_failed/2); a caller's :executable not.
    {executable, args, probe_stderr} =
      case Keyword.get(opts, :executable) do
        executable when executable != nil ->
          {resolve!(executable, :executable), opts[:args], false}

        nil ->
          python = Keyword.get(opts, :python) || python()
          log_frames = if opts[:forward_logs], do: ["--log-frames"], else: []

          {resolve!(python, :python),
           ["-m", "bridge", "worker", "--format", Atom.to_string(format)] ++
             log_frames ++ opts[:worker_args], true}
      end

    %{
      executable: executable,
      args: args,
      format: format,
      env: env!(opts[:env]),
      cd: cd!(opts[:cd]),
      ready_timeout: opts[:ready_timeout],
      probe_stderr: probe_stderr
    }
  end

  @doc """
  The Python a worker runs when `:python` is not given, the first of:

    1. `$PORTBRIDGE_PYTHON`
    2. `config :port_bridge, python: "/path/to/bin/python"` (the application
       environment; in a release, `config/runtime.exs`)
    3. in a release, the environment its `PortBridge.Release.put_python/1` step put
       in it
    4. the environment `mix port_bridge.setup` made (it records its interpreter in
       `_build/port_bridge/python_path`, wherever it put the environment)

  Raises `ArgumentError` when there is none, saying what to run where the code runs
  (a Mix project, a release, Livebook or a script).
  """
  @spec python() :: String.t()
  defdelegate python(), to: PortBridge.Setup.Lookup

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
end
