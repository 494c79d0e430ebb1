defmodule PortBridge.Pool do
  @pool_schema [
    name: [type: :atom, required: true, doc: "the name requests use"],
    size: [type: :pos_integer, default_doc: "`System.schedulers_online()`", doc: "Workers"],
    strategy: [
      type: {:in, [:multiplexed, :exclusive]},
      default: :multiplexed,
      doc: "`:multiplexed` or `:exclusive`, see above"
    ],
    pool_timeout: [
      type: :timeout,
      default: 5_000,
      doc: "exclusive: the default ms to wait for a checkout"
    ],
    timeout: [
      type: :timeout,
      default: PortBridge.Options.default_timeout(),
      doc: "the default ms of a request"
    ],
    recover_sessions: [
      type: :boolean,
      default: true,
      doc: "record sessions and rebuild them on fresh Pythons"
    ],
    adopt_records: [
      type: :boolean,
      default: false,
      doc: """
      take the recorded sessions of the previous pool of this name (stopped, or
      restarted by its supervisor, within the last minute) instead of starting clean
      """
    ],
    max_restarts: [
      type: :non_neg_integer,
      default: 3,
      doc: "Worker restarts in `:max_seconds` beyond which the pool itself exits"
    ],
    max_seconds: [type: :pos_integer, default: 60, doc: "see `:max_restarts`"],
    # Set by PortBridge.Cluster: the cluster whose nodes share one rate-limit budget
    # per model (PortBridge.Limiter).
    limiter_cluster: [type: :atom, doc: false]
  ]
  @schema @pool_schema ++ PortBridge.Options.restart_schema() ++ PortBridge.Options.spawn_schema()

  @moduledoc """
  N `PortBridge.Worker`s under one name, and a strategy that says how requests
  reach them.

      children = [
        {PortBridge.Pool, name: MyApp.Python, size: 4, python: "/srv/venv/bin/python"}
      ]

      {:ok, result} = PortBridge.request(MyApp.Python, "echo", %{x: 1})

  ## Strategies

    * `:multiplexed` (default): many requests in flight on each Worker, as many as
      its Python runs at once (`--max-concurrency`, default 32). A session's
      requests go to one Worker (`:erlang.phash2(session_id, size)`); requests
      without a session go to the least loaded Worker. Right for LM-bound work
      (DSPy): the Python process waits on the network for most of a request, and
      runs dozens at once. Back-pressure is the Python worker's own: beyond its
      queue (`--max-queue`) it answers `overloaded` (retryable, with backoff).
    * `:exclusive`: NimblePool checks a Worker out to one caller at a time (one
      NimblePool of one Worker per shard, as Finch's hash strategy shards HTTP/1
      pools). Right for CPU-bound or non-thread-safe Python code, where one request
      per Python process is what gives real parallelism: `size` processes run `size`
      requests at once. Needs the `:nimble_pool` dependency. Requests with a
      session wait for its Worker; requests without one take the least loaded.

  `benchmarks/` measures both (see the README there): LM-bound, a multiplexed
  pool of 2 finishes 128 sessions' calls about as fast as one Worker, where an
  exclusive pool of 2 runs them two at a time; CPU-bound, an exclusive pool of 2 is
  close to twice one Python.

  ## One deadline

  `:timeout` is the whole budget of a request: waiting for a checkout (exclusive),
  for a starting Worker, writing, waiting for the reply. No caller waits past it,
  whatever the Python process does. `:pool_timeout` (exclusive) caps only the wait
  for a checkout, within that budget.

  ## Workers that die, and sessions

  When a Worker's Python dies, its callers get a `communication` error (retryable)
  and the Worker starts a fresh Python itself, backing off after failed starts;
  after `:max_start_failures` failed starts in a row it stops, and the pool's
  supervisor restarts it, up to `:max_restarts` in `:max_seconds`, beyond which the
  pool itself exits and the failure reaches your supervision tree.

  A fresh Python gets the recorded state of its sessions (and of the global scope)
  before any request reaches it: `PortBridge.DSPy` hands what builds state
  (`configure_lm`, programs) to the pool's journal (`PortBridge.Journal.Local`, over a
  `PortBridge.Records` table), and each Worker replays it when its Python is ready
  (`recover_sessions: false` turns this off).

  The records outlive the process that holds them (the pool restarts it and it takes
  them back), not the pool: a pool started again under the same name starts clean,
  so boot code that creates its programs runs again as on the first boot, and tests
  that start a pool of the same name do not inherit the last one's programs. Start it
  with `adopt_records: true` to take the previous pool's records instead (kept for a
  minute after it ended).

  ## Options

  Checked at `start_link/1`: an unknown option or one of the wrong type is an
  `ArgumentError` that names it.

  #{PortBridge.Schema.docs(@schema)}
  """

  use Supervisor
  @behaviour PortBridge.Target

  alias PortBridge.{Call, Error, Limiter, Options, Records, Request, Schema, Target, Worker}
  alias PortBridge.Journal.Local
  alias PortBridge.Pool.Exclusive

  @type strategy :: :multiplexed | :exclusive

  @doc "True when this build of port_bridge was compiled with NimblePool (the `:exclusive` strategy)."
  @spec available?() :: boolean
  defdelegate available?, to: Exclusive

  @doc "Starts a pool; see the module doc for the options."
  @spec start_link(keyword) :: Supervisor.on_start()
  def start_link(opts) do
    config = config!(opts)
    Supervisor.start_link(__MODULE__, config, name: Module.concat(config.name, Supervisor))
  end

  @doc false
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  defp config!(opts) do
    opts = Schema.validate!(opts, @schema, "PortBridge.Pool.start_link/1", defaults: true)

    if opts[:strategy] == :exclusive and not available?() do
      raise ArgumentError,
            "the :exclusive strategy of PortBridge.Pool needs NimblePool: add {:nimble_pool, \"~> 1.1\"} " <>
              "to your deps (offline: NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout, see " <>
              "elixir_client/README.md); the :multiplexed strategy needs nothing more"
    end

    spawn_opts = Keyword.take(opts, Options.spawn_keys())
    # Checked here, so that a mistake fails the pool's start_link, not each Worker.
    _ = Options.spawn_opts(spawn_opts)

    %{
      name: opts[:name],
      size: opts[:size] || System.schedulers_online(),
      strategy: opts[:strategy],
      pool_timeout: opts[:pool_timeout],
      timeout: opts[:timeout],
      recover_sessions: opts[:recover_sessions],
      adopt_records: opts[:adopt_records],
      worker: Keyword.take(opts, Options.restart_keys()) ++ spawn_opts,
      max_restarts: opts[:max_restarts],
      max_seconds: opts[:max_seconds],
      limiter_cluster: opts[:limiter_cluster]
    }
  end

  @impl Supervisor
  def init(config) do
    %{name: name, size: size} = config
    workers = List.to_tuple(for i <- 1..size, do: Module.concat(name, "Worker#{i}"))
    records = if config.recover_sessions, do: Module.concat(name, Records)
    # Admits the LM calls of every Worker under a rate limit: one budget per model.
    limiter = Module.concat(name, Limiter)
    # Slots 1..size: requests held by each Worker (its load hook keeps them); size + 1:
    # where the least-loaded scan starts, so that ties spread.
    load = :atomics.new(size + 1, [])

    pool = %{
      name: name,
      size: size,
      strategy: config.strategy,
      workers: workers,
      shards: Exclusive.shards(name, size, config.strategy),
      load: load,
      records: records,
      journal: records && %Local{table: records, pool: name, workers: workers},
      pool_timeout: config.pool_timeout,
      timeout: config.timeout
    }

    # How a request tells a pool's name from a Worker's; the entry goes with this supervisor.
    :ok = Target.register(name, __MODULE__, pool)

    worker_specs =
      for i <- 1..size do
        on_ready = if records, do: [on_ready: {__MODULE__, :replay, [name, i - 1]}], else: []

        opts =
          [
            name: elem(workers, i - 1),
            pool: name,
            respawn: true,
            on_load: fn n -> :atomics.put(load, i, n) end,
            limiter: limiter
          ] ++ on_ready ++ config.worker

        Supervisor.child_spec({Worker, opts}, id: {:worker, i})
      end

    # This supervisor is the pool's instance: a Records process it restarts takes the
    # records back; a new pool of the name only with :adopt_records.
    records_specs =
      if records,
        do: [{Records, table: records, instance: self(), adopt: config.adopt_records}],
        else: []

    limiter_spec = {Limiter, name: limiter, cluster: config.limiter_cluster}

    Supervisor.init(
      records_specs ++ [limiter_spec | worker_specs] ++ Exclusive.child_specs(pool),
      strategy: :one_for_one,
      max_restarts: config.max_restarts,
      max_seconds: config.max_seconds
    )
  end

  @doc false
  # A Worker's :on_ready: what its fresh Python rebuilds (the global scope, and the
  # sessions that hash to Worker `index`, 0-based).
  @spec replay(atom, non_neg_integer) :: [Records.step()]
  def replay(name, index) do
    case lookup(name) do
      {:ok, %{journal: %Local{} = journal, size: size}} ->
        Local.replay(journal, &(index(&1, size) == index))

      _ ->
        []
    end
  end

  @doc false
  # The pool registered under `name`, if any.
  @spec lookup(term) :: {:ok, map} | :error
  def lookup(name) do
    if config = Target.config(__MODULE__, name), do: {:ok, config}, else: :error
  end

  @doc """
  Sends a request to the pool's Worker for `:session_id` (without one, the least
  loaded) and waits for its reply. Options as `PortBridge.request/4`.
  """
  @spec request(atom, String.t() | atom, map, keyword) :: {:ok, term} | {:error, Error.t()}
  def request(pool, command, args \\ %{}, opts \\ []) do
    # A name nothing runs under still gets its options checked; the call then fails.
    pool
    |> Call.new!(
      command,
      args,
      opts,
      :request,
      "PortBridge.Pool.request/4",
      {__MODULE__, Target.config(__MODULE__, pool)}
    )
    |> Call.run()
  end

  @doc """
  Sends a request without waiting (see `PortBridge.Request`). Multiplexed: straight
  to the Worker. Exclusive: a task under `PortBridge.TaskSupervisor` holds the
  checkout and relays the request's events and reply; it ends at the request's
  deadline or when the caller dies, whichever comes first.
  """
  @spec async_request(atom, String.t() | atom, map, keyword) :: Request.t() | {:error, Error.t()}
  def async_request(pool, command, args \\ %{}, opts \\ []) do
    # A name nothing runs under still gets its options checked; the call then fails.
    pool
    |> Call.new!(
      command,
      args,
      opts,
      :async,
      "PortBridge.Pool.async_request/4",
      {__MODULE__, Target.config(__MODULE__, pool)}
    )
    |> Call.async()
  end

  defp resolve(name) do
    case lookup(name) do
      {:ok, pool} -> {:ok, pool}
      :error -> {:error, not_running(name)}
    end
  end

  defp not_running(name) do
    Error.new(:communication, "pool_not_running", "no PortBridge.Pool named #{inspect(name)}")
  end

  # A nil config: the call named a pool that does not run (request/4, async_request/4).
  @impl PortBridge.Target
  def default_timeout(nil), do: Options.default_timeout()
  def default_timeout(pool), do: pool.timeout

  @impl PortBridge.Target
  def journal(nil), do: nil
  def journal(%{journal: nil}), do: nil
  def journal(%{journal: journal}), do: {Local, journal}

  @impl PortBridge.Target
  def call(pool, %Call{} = call), do: serve(pool, call, :call)

  @impl PortBridge.Target
  def async(pool, %Call{} = call), do: serve(pool, call, :async)

  # The call on the session's Worker (or the least loaded), waited for (`:call`) or
  # not (`:async`); a nil pool: the call named a pool that does not run.
  defp serve(nil, %Call{target: name}, _how), do: {:error, not_running(name)}

  defp serve(pool, call, how) do
    index = pick(pool, call.session_id)
    call = %{call | pool: pool.name}

    case pool.strategy do
      :multiplexed -> apply(Worker, how, [elem(pool.workers, index), call])
      :exclusive -> apply(Exclusive, how, [pool, index, call])
    end
  end

  @doc false
  # The Worker (0-based) of a pool of `size` that serves a session: the same on every
  # node (PortBridge.Cluster routes to a remote pool's Worker with it).
  @spec index(String.t(), pos_integer) :: non_neg_integer
  def index(session_id, size), do: :erlang.phash2(session_id, size)

  # 0-based: a session's Worker, or the least loaded one. Multiplexed, ties go to the
  # lowest index: one caller at a time keeps meeting the same, warm, Python (the
  # pings of issue 10's benchmark), and concurrent load still spreads. Exclusive, a
  # Worker's load is 0 or 1 (the callers waiting for it are NimblePool's), so ties
  # are the rule: the scan starts one further each time, spreading the waiters.
  defp pick(%{strategy: :multiplexed} = pool, nil), do: least_loaded(pool, 0)

  defp pick(pool, nil),
    do: least_loaded(pool, :atomics.add_get(pool.load, pool.size + 1, 1))

  defp pick(pool, session_id), do: index(session_id, pool.size)

  defp least_loaded(%{size: 1}, _start), do: 0

  defp least_loaded(pool, start) do
    Enum.reduce(0..(pool.size - 1), {nil, nil}, fn offset, {best, best_load} ->
      index = rem(start + offset, pool.size)
      load = :atomics.get(pool.load, index + 1)
      if best_load == nil or load < best_load, do: {index, load}, else: {best, best_load}
    end)
    |> elem(0)
  end

  ## Introspection

  @doc """
  Per Worker: its registered name, pid (nil while restarting), status, requests in
  flight and consecutive start failures. `{:error, %PortBridge.Error{}}` when no pool
  runs under `name`.
  """
  @spec info(atom) :: [map] | {:error, Error.t()}
  def info(name) do
    with {:ok, pool} <- resolve(name) do
      for i <- 1..pool.size do
        worker = elem(pool.workers, i - 1)
        pid = GenServer.whereis(worker)
        info = if pid, do: safe_info(pid), else: %{}

        %{
          shard: i,
          name: worker,
          pid: pid,
          status: info[:status],
          os_pid: info[:os_pid],
          in_flight: :atomics.get(pool.load, i),
          start_failures: info[:start_failures] || 0
        }
      end
    end
  end

  defp safe_info(pid) do
    Worker.info(pid)
  catch
    :exit, _ -> %{}
  end

  @doc """
  The Worker (1-based) a session's requests go to; `{:error, %PortBridge.Error{}}`
  when no pool runs under `name`.
  """
  @spec shard_for(atom, String.t()) :: pos_integer | {:error, Error.t()}
  def shard_for(name, session_id) do
    with {:ok, pool} <- resolve(name), do: pick(pool, session_id) + 1
  end

  @doc false
  # The registered names of the pool's Workers ([] when no pool runs under `name`).
  @spec workers(atom | map) :: [atom]
  def workers(%{workers: workers}), do: Tuple.to_list(workers)

  def workers(name) do
    case lookup(name) do
      {:ok, pool} -> workers(pool)
      :error -> []
    end
  end
end
