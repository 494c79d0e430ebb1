defmodule PortBridge.Pool do
  @pool_schema [
    name: [type: :atom, required: true, doc: "the name requests use"],
    size: [type: :pos_integer, default_doc: "`System.schedulers_online()`", doc: "Workers"],
    strategy: [
      type: {:in, [:multiplexed, :exclusive]},
      default: :multiplexed,
      doc: "`:multiplexed` or `:exclusive`, see above"
    ],
    lazy: [type: :boolean, default: false, doc: "start each Python at its Worker's first request"],
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
    max_start_failures: [
      type: :pos_integer,
      default: 5,
      doc: "failed starts in a row before a Worker stops (and its supervisor restarts it)"
    ],
    start_backoff_min: [
      type: :pos_integer,
      default: 100,
      doc: "ms after a Worker's failed start, doubling"
    ],
    start_backoff_max: [type: :pos_integer, default: 5_000, doc: "the longest such wait, in ms"],
    max_restarts: [
      type: :non_neg_integer,
      default: 3,
      doc: "Worker restarts in `:max_seconds` beyond which the pool itself exits"
    ],
    max_seconds: [type: :pos_integer, default: 60, doc: "see `:max_restarts`"]
  ]
  @schema @pool_schema ++ PortBridge.Options.spawn_schema()
  @defaults PortBridge.Schema.defaults(@pool_schema)

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
  before any request reaches it: `PortBridge.DSPy` records what builds state
  (`configure_lm`, programs) in the pool's `PortBridge.Records`, and each Worker
  replays it when its Python is ready (`recover_sessions: false` turns this off).

  ## Options

  Checked at `start_link/1`: an unknown option or one of the wrong type is an
  `ArgumentError` that names it.

  #{PortBridge.Schema.docs(@schema)}
  """

  use Supervisor
  alias PortBridge.{Error, Options, Records, Request, Schema, Worker}

  # Without NimblePool this module still compiles; the exclusive strategy says what
  # is missing.
  @compile {:no_warn_undefined, [NimblePool]}

  @available Code.ensure_loaded?(NimblePool)

  # Recompile when NimblePool comes or goes (NIMBLE_POOL_PATH set or unset).
  @doc false
  def __mix_recompile__?, do: Code.ensure_loaded?(NimblePool) != @available

  @request_schema Options.request_schema()
  @async_schema Options.async_schema()

  @type strategy :: :multiplexed | :exclusive

  @doc "True when this build of port_bridge was compiled with NimblePool (the `:exclusive` strategy)."
  @spec available?() :: boolean
  def available?, do: @available

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
    Schema.validate!(opts, @schema, "PortBridge.Pool.start_link/1")
    opts = Keyword.merge(@defaults, Enum.reject(opts, &is_nil(elem(&1, 1))))
    strategy = opts[:strategy]

    if strategy == :exclusive and not @available do
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
      strategy: strategy,
      lazy: opts[:lazy],
      pool_timeout: opts[:pool_timeout],
      timeout: opts[:timeout],
      recover_sessions: opts[:recover_sessions],
      spawn: spawn_opts,
      worker: Keyword.take(opts, [:max_start_failures, :start_backoff_min, :start_backoff_max]),
      max_restarts: opts[:max_restarts],
      max_seconds: opts[:max_seconds]
    }
  end

  @impl Supervisor
  def init(config) do
    %{name: name, size: size} = config
    workers = List.to_tuple(for i <- 1..size, do: Module.concat(name, "Worker#{i}"))
    shards = List.to_tuple(for i <- 1..size, do: Module.concat(name, "Shard#{i}"))
    records = if config.recover_sessions, do: Module.concat(name, Records)
    # Slots 1..size: requests in each Worker (kept by the Worker); size + 1: where
    # the least-loaded scan starts, so that ties spread.
    load = :atomics.new(size + 1, [])

    pool = %{
      name: name,
      size: size,
      strategy: config.strategy,
      workers: workers,
      shards: shards,
      load: load,
      records: records,
      pool_timeout: config.pool_timeout,
      timeout: config.timeout
    }

    # How PortBridge.request tells a pool's name from a Worker's; the entry goes
    # with this supervisor.
    {:ok, _} = Registry.register(PortBridge.Registry, name, {:pool, pool})

    worker_specs =
      for i <- 1..size do
        on_ready =
          if records, do: [on_ready: {Records, :replay, [records, i - 1, size]}], else: []

        opts =
          [
            name: elem(workers, i - 1),
            pool: name,
            respawn: true,
            lazy: config.lazy,
            load: {load, i}
          ] ++
            on_ready ++ config.worker ++ config.spawn

        Supervisor.child_spec({Worker, opts}, id: {:worker, i})
      end

    shard_specs =
      if config.strategy == :exclusive do
        for i <- 1..size do
          %{
            id: {:shard, i},
            start:
              {NimblePool, :start_link,
               [
                 [
                   worker: {PortBridge.Pool.Checkout, elem(workers, i - 1)},
                   pool_size: 1,
                   name: elem(shards, i - 1)
                 ]
               ]}
          }
        end
      else
        []
      end

    records_specs = if records, do: [{Records, records}], else: []

    Supervisor.init(records_specs ++ worker_specs ++ shard_specs,
      strategy: :one_for_one,
      max_restarts: config.max_restarts,
      max_seconds: config.max_seconds
    )
  end

  @doc false
  # The pool registered under `name`, if any.
  @spec lookup(term) :: {:ok, map} | :error
  def lookup(name) when is_atom(name) do
    case Registry.lookup(PortBridge.Registry, name) do
      [{_pid, {:pool, pool}}] -> {:ok, pool}
      _ -> :error
    end
  end

  def lookup(_), do: :error

  @doc """
  Sends a request to the pool's Worker for `:session_id` (without one, the least
  loaded) and waits for its reply. Options as `PortBridge.request/4`.
  """
  @spec request(atom | map, String.t() | atom, map, keyword) :: {:ok, term} | {:error, Error.t()}
  def request(pool, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @request_schema, "PortBridge.Pool.request/4")

    with {:ok, pool} <- resolve(pool) do
      {opts, deadline} = budget(pool, opts)
      index = pick(pool, opts[:session_id])

      case pool.strategy do
        :multiplexed ->
          Worker.request(elem(pool.workers, index), command, args, opts)

        :exclusive ->
          checkout(pool, index, opts, deadline, fn worker ->
            Worker.request(worker, command, args, opts)
          end)
      end
    end
  end

  @doc """
  Sends a request without waiting (see `PortBridge.Request`). Multiplexed: straight
  to the Worker. Exclusive: a task under `PortBridge.TaskSupervisor` holds the
  checkout and relays the request's events and reply; it ends at the request's
  deadline or when the caller dies, whichever comes first.
  """
  @spec async_request(atom | map, String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(pool, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @async_schema, "PortBridge.Pool.async_request/4")

    with {:ok, pool} <- resolve(pool) do
      {opts, deadline} = budget(pool, opts)
      index = pick(pool, opts[:session_id])

      case pool.strategy do
        :multiplexed -> Worker.async_request(elem(pool.workers, index), command, args, opts)
        :exclusive -> async_checkout(pool, index, command, args, opts, deadline)
      end
    end
  end

  defp resolve(%{} = pool), do: {:ok, pool}

  defp resolve(name) do
    case lookup(name) do
      {:ok, pool} ->
        {:ok, pool}

      :error ->
        {:error,
         Error.new(
           :communication,
           "pool_not_running",
           "no PortBridge.Pool named #{inspect(name)}"
         )}
    end
  end

  # The request's one deadline, fixed now unless the caller fixed it earlier.
  # (`pool`: the pool's name, for telemetry.)
  defp budget(pool, opts) do
    opts = Keyword.put_new(opts, :timeout, pool.timeout)
    deadline = Keyword.get_lazy(opts, :deadline, fn -> Request.deadline(opts[:timeout]) end)
    {Keyword.merge(opts, deadline: deadline, pool: pool.name), deadline}
  end

  # 0-based: a session's Worker, or the least loaded one. Multiplexed, ties go to the
  # lowest index: one caller at a time keeps meeting the same, warm, Python (the
  # pings of issue 10's benchmark), and concurrent load still spreads. Exclusive, a
  # Worker's load is 0 or 1 (the callers waiting for it are NimblePool's), so ties
  # are the rule: the scan starts one further each time, spreading the waiters.
  defp pick(%{strategy: :multiplexed} = pool, nil), do: least_loaded(pool, 0)

  defp pick(pool, nil),
    do: least_loaded(pool, :atomics.add_get(pool.load, pool.size + 1, 1))

  defp pick(pool, session_id), do: Records.index(session_id, pool.size)

  defp least_loaded(pool, start) do
    Enum.reduce(0..(pool.size - 1), {nil, nil}, fn offset, {best, best_load} ->
      index = rem(start + offset, pool.size)
      load = :atomics.get(pool.load, index + 1)
      if best_load == nil or load < best_load, do: {index, load}, else: {best, best_load}
    end)
    |> elem(0)
  end

  ## Exclusive

  defp checkout(pool, index, opts, deadline, fun) do
    pool_timeout = Keyword.get(opts, :pool_timeout, pool.pool_timeout)
    wait = min_timeout(pool_timeout, Request.remaining(deadline))

    try do
      NimblePool.checkout!(
        elem(pool.shards, index),
        :checkout,
        fn _from, worker -> {fun.(worker), :ok} end,
        wait
      )
    catch
      :exit, {:timeout, {NimblePool, :checkout, _}} ->
        {:error, checkout_timeout(pool, index, opts, wait, pool_timeout)}

      :exit, {reason, {NimblePool, :checkout, _}} ->
        {:error, not_running(pool, index, reason)}
    end
  end

  defp min_timeout(:infinity, b), do: b
  defp min_timeout(a, :infinity), do: a
  defp min_timeout(a, b), do: min(a, b)

  defp async_checkout(pool, index, command, args, opts, deadline) do
    caller = self()
    ref = :erlang.alias()

    {:ok, pid} =
      Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
        relay(pool, index, command, args, opts, deadline, caller, ref)
      end)

    monitor = Process.monitor(pid)
    Request.new(pid, ref, fn -> send(pid, {ref, :cancel}) end, opts[:timeout], deadline, monitor)
  end

  # The task of an exclusive async request: holds the checkout, relays the inner
  # request's events and reply to the caller's alias. Linked to the caller, so that
  # it dies with it wherever it is (even waiting for a checkout, where NimblePool
  # then forgets it); it ends at the deadline or on cancel otherwise.
  defp relay(pool, index, command, args, opts, deadline, caller, ref) do
    Process.link(caller)

    result =
      checkout(pool, index, opts, deadline, fn worker ->
        case Worker.async_request(worker, command, args, opts) do
          %Request{} = inner -> relay_loop(inner, ref)
          {:error, _} = error -> error
        end
      end)

    if result, do: send(ref, {ref, {:reply, result}})
    Process.unlink(caller)
  end

  defp relay_loop(%Request{ref: inner_ref, monitor: inner_mon} = inner, ref) do
    receive do
      {^inner_ref, {:event, _, _} = event} ->
        send(ref, {ref, event})
        relay_loop(inner, ref)

      {^inner_ref, {:reply, result}} ->
        Process.demonitor(inner_mon, [:flush])
        result

      {:DOWN, ^inner_mon, _, _, _} = down ->
        # Request.await turns it into its error, as for any caller.
        send(self(), down)
        Request.await(inner)

      {^ref, :cancel} ->
        Request.cancel(inner)
        nil
    after
      Request.remaining(inner.deadline) -> Request.await(inner)
    end
  end

  defp checkout_timeout(pool, index, opts, wait, pool_timeout) do
    if wait == pool_timeout do
      Error.new(
        :overloaded,
        "pool_timeout",
        "no worker of pool #{inspect(pool.name)} (shard #{index + 1} of #{pool.size}) was free within " <>
          "#{pool_timeout} ms: pass a larger :pool_timeout, or give the pool more workers (:size)",
        %{"pool" => inspect(pool.name), "shard" => index + 1, "pool_timeout_ms" => pool_timeout}
      )
    else
      %{Request.timeout_error(opts[:timeout]) | code: "checkout_timeout"}
      |> Map.update!(:message, &("waiting for a free worker: " <> &1))
    end
  end

  defp not_running(pool, index, reason) do
    Error.new(
      :communication,
      "pool_not_running",
      "pool #{inspect(pool.name)} shard #{index + 1} is not running (#{inspect(reason)}): stopped, or restarting",
      %{"pool" => inspect(pool.name), "shard" => index + 1, "reason" => inspect(reason)}
    )
  end

  ## Introspection

  @doc """
  Per Worker: its registered name, pid (nil while restarting), status, requests in
  flight and consecutive start failures.
  """
  @spec info(atom) :: [map]
  def info(name) do
    {:ok, pool} = lookup(name)

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

  defp safe_info(pid) do
    Worker.info(pid)
  catch
    :exit, _ -> %{}
  end

  @doc "The Worker (1-based) a session's requests go to."
  @spec shard_for(atom, String.t()) :: pos_integer
  def shard_for(name, session_id) do
    {:ok, pool} = lookup(name)
    pick(pool, session_id) + 1
  end

  @doc false
  # The registered names of the pool's Workers.
  @spec workers(atom | map) :: [atom]
  def workers(pool) do
    {:ok, pool} = resolve(pool)
    Tuple.to_list(pool.workers)
  end
end

if Code.ensure_loaded?(NimblePool) do
  defmodule PortBridge.Pool.Checkout do
    @moduledoc false
    # The NimblePool worker of one shard of an :exclusive PortBridge.Pool. The
    # resource is the name of a PortBridge.Worker (supervised beside it by the pool):
    # NimblePool only decides who may use it, one caller at a time; the Worker owns
    # the Port, its restarts and the request itself.

    @behaviour NimblePool

    @impl NimblePool
    def init_worker(worker), do: {:ok, worker, worker}

    @impl NimblePool
    def handle_checkout(:checkout, _from, worker, pool_state),
      do: {:ok, worker, worker, pool_state}

    @impl NimblePool
    def handle_checkin(:ok, _from, worker, pool_state), do: {:ok, worker, pool_state}

    @impl NimblePool
    def terminate_worker(_reason, _worker, pool_state), do: {:ok, pool_state}
  end
end
