defmodule PortBridge.Pool do
  @moduledoc """
  A pool of `portbridge worker` Ports on NimblePool, for exclusive use: each
  request checks a port out, talks to it directly (frames go from the Port to the
  caller, never through a pool process) and checks it back in.

      children = [
        {PortBridge.Pool, name: MyApp.PythonPool, size: 4, python: "/srv/venv/bin/python"}
      ]

      {:ok, result} = PortBridge.request(MyApp.PythonPool, "echo", %{x: 1})

  ## Shards and sessions

  NimblePool cannot hand out one particular worker, so the pool is `:size` shards,
  each a NimblePool of exactly one Port (as Finch's hash strategy shards its pools).
  A request with a `:session_id` goes to shard `:erlang.phash2(session_id, size)`:
  all of a session's requests reach the worker that holds its programs and LM
  configuration, and run one at a time. Requests without a session go round-robin.

  When a shard's worker dies (killed, crashed, or replaced after an error whose
  recovery is `restart_worker`), the shard starts a fresh one and the pool rebuilds
  the sessions it held from what it recorded, see `PortBridge.Sessions` (on by
  default, `recover_sessions: false` turns it off).

  ## Starting workers

  Workers start when the pool starts (`lazy: false`, default) or at their first
  checkout (`lazy: true`), in a task, so a slow start never blocks the pool. A
  failed start (the executable exits before `ready`, or no `ready` within
  `:ready_timeout`) is retried after `start_backoff_min * 2^(n-1)` ms (capped at
  `start_backoff_max`); after `:max_start_failures` in a row the shard stops with
  `{:worker_start_failed, %PortBridge.Error{}}`, its waiting callers get that
  error, and the pool's supervisor restarts it, up to `:max_restarts` in
  `:max_seconds`, beyond which the pool itself exits and the failure reaches your
  supervision tree.

  ## Options

    * `:name` - required, an atom; the name requests use.
    * `:size` - workers (shards), default `System.schedulers_online()`.
    * `:lazy` - start workers at first use (default `false`).
    * `:pool_timeout` - default ms to wait for a free worker (5_000).
    * `:timeout` - default ms to wait for a reply (#{PortBridge.default_timeout()}).
    * `:recover_sessions` - record sessions and rebuild them on fresh workers (true).
    * `:max_start_failures` (5), `:start_backoff_min` (100), `:start_backoff_max`
      (5_000), `:max_restarts` (3), `:max_seconds` (60): see above.
    * the spawn options of a worker: `:python`, `:worker_args`, `:executable`,
      `:args`, `:format`, `:env`, `:cd`, `:ready_timeout` (see `PortBridge.Worker`).

  Needs the `:nimble_pool` dependency; `available?/0` tells whether this build has it.
  """

  use Supervisor
  alias PortBridge.{Channel, Error, Options, Request, Sessions}

  # Without NimblePool this module still compiles; start_link/1 says what is missing.
  @compile {:no_warn_undefined, [NimblePool, PortBridge.Pool.Shard]}

  @available Code.ensure_loaded?(NimblePool)

  # Recompile (this file, and PortBridge.Pool.Shard with it) when NimblePool comes or
  # goes (NIMBLE_POOL_PATH set or unset, PORTBRIDGE_DEPS switched).
  @doc false
  def __mix_recompile__?, do: Code.ensure_loaded?(NimblePool) != @available

  @pool_keys [
    :name,
    :size,
    :lazy,
    :pool_timeout,
    :timeout,
    :recover_sessions,
    :max_start_failures,
    :start_backoff_min,
    :start_backoff_max,
    :max_restarts,
    :max_seconds
  ]

  @doc "True when this build of port_bridge was compiled with NimblePool."
  @spec available?() :: boolean
  def available?, do: @available

  @doc "Starts a pool; see the module doc for the options."
  @spec start_link(keyword) :: Supervisor.on_start()
  def start_link(opts) do
    unless @available do
      raise ArgumentError,
            "PortBridge.Pool needs NimblePool: add {:nimble_pool, \"~> 1.1\"} to your deps " <>
              "(offline: NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout, see elixir_client/README.md); " <>
              "PortBridge.Worker needs nothing more"
    end

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
    name = Keyword.get(opts, :name)

    unless is_atom(name) and name not in [nil, true, false],
      do: raise(ArgumentError, ":name must be an atom, got: #{inspect(name)}")

    case Keyword.keys(opts) -- (@pool_keys ++ Options.spawn_keys()) do
      [] -> :ok
      unknown -> raise ArgumentError, "unknown PortBridge.Pool options: #{inspect(unknown)}"
    end

    size = Options.pos_integer!(opts, :size, System.schedulers_online())

    %{
      name: name,
      size: size,
      lazy: Keyword.get(opts, :lazy, false) == true,
      pool_timeout: Options.timeout!(opts, :pool_timeout, 5_000),
      timeout: Options.timeout!(opts, :timeout, PortBridge.default_timeout()),
      sessions: if(Keyword.get(opts, :recover_sessions, true), do: Module.concat(name, Sessions)),
      spawn: Options.spawn_opts(Keyword.take(opts, Options.spawn_keys())),
      max_start_failures: Options.pos_integer!(opts, :max_start_failures, 5),
      backoff_min: Options.pos_integer!(opts, :start_backoff_min, 100),
      backoff_max: Options.pos_integer!(opts, :start_backoff_max, 5_000),
      max_restarts: Options.non_neg_integer!(opts, :max_restarts, 3),
      max_seconds: Options.pos_integer!(opts, :max_seconds, 60)
    }
  end

  @impl Supervisor
  def init(config) do
    shards = List.to_tuple(for i <- 1..config.size, do: Module.concat(config.name, "Shard#{i}"))
    key = {__MODULE__, config.name}

    # Counters survive shard restarts, so backoff and the failure limit carry over.
    {counter, failures} =
      case :persistent_term.get(key, nil) do
        %{size: size, counter: counter, failures: failures} when size == config.size ->
          {counter, failures}

        _ ->
          {:atomics.new(1, []), :counters.new(config.size, [:atomics])}
      end

    for i <- 1..config.size, do: :counters.put(failures, i, 0)

    entry = %{
      name: config.name,
      shards: shards,
      size: config.size,
      counter: counter,
      failures: failures,
      sessions: config.sessions,
      pool_timeout: config.pool_timeout,
      timeout: config.timeout,
      max_start_failures: config.max_start_failures
    }

    if :persistent_term.get(key, nil) != entry, do: :persistent_term.put(key, entry)

    sessions =
      if config.sessions,
        do: [{Sessions, config.sessions}],
        else: []

    shard_specs =
      for i <- 1..config.size do
        shard_config =
          config
          |> Map.take([:spawn, :max_start_failures, :backoff_min, :backoff_max])
          |> Map.merge(%{pool: config.name, index: i, failures: failures})

        %{
          id: {:shard, i},
          start:
            {NimblePool, :start_link,
             [
               [
                 worker: {PortBridge.Pool.Shard, shard_config},
                 pool_size: 1,
                 lazy: config.lazy,
                 name: elem(shards, i - 1)
               ]
             ]}
        }
      end

    Supervisor.init(sessions ++ shard_specs,
      strategy: :one_for_one,
      max_restarts: config.max_restarts,
      max_seconds: config.max_seconds
    )
  end

  @doc false
  # The pool registered under `name`, if any: how PortBridge tells pools from workers.
  @spec lookup(term) :: {:ok, map} | :error
  def lookup(name) when is_atom(name) do
    case :persistent_term.get({__MODULE__, name}, nil) do
      nil -> :error
      pool -> {:ok, pool}
    end
  end

  def lookup(_), do: :error

  @doc """
  Sends a request through a checkout of the pool's shard for `:session_id` (any
  shard, round-robin, without one). Options as `PortBridge.request/4`.
  """
  @spec request(atom | map, String.t() | atom, map, keyword) :: {:ok, term} | {:error, Error.t()}
  def request(pool, command, args \\ %{}, opts \\ [])

  def request(name, command, args, opts) when is_atom(name) do
    case lookup(name) do
      {:ok, pool} ->
        request(pool, command, args, opts)

      :error ->
        {:error,
         Error.new(
           :communication,
           "pool_not_running",
           "no PortBridge.Pool named #{inspect(name)}"
         )}
    end
  end

  def request(%{} = pool, command, args, opts) do
    index = shard_index(pool, opts[:session_id])
    shard = elem(pool.shards, index)
    pool_timeout = Keyword.get(opts, :pool_timeout, pool.pool_timeout)
    opts = Keyword.put_new(opts, :timeout, pool.timeout)

    try do
      NimblePool.checkout!(
        shard,
        :checkout,
        fn {pool_pid, _}, channel -> run(pool, pool_pid, channel, command, args, opts) end,
        pool_timeout
      )
    catch
      :exit, {reason, {NimblePool, :checkout, _}} ->
        {:error, checkout_error(reason, pool, index, pool_timeout)}
    end
  end

  defp shard_index(pool, nil), do: rem(:atomics.add_get(pool.counter, 1, 1), pool.size)
  defp shard_index(pool, session_id), do: :erlang.phash2(session_id, pool.size)

  # In the caller, holding the port.
  defp run(pool, pool_pid, channel, command, args, opts) do
    # Port.connect linked us to the port: a port that breaks must not take us down.
    Process.unlink(channel.port)

    {result, checkin} =
      Sessions.run(pool.sessions, channel, command, args, opts, &Channel.exchange/4)

    checkin =
      case result do
        {:error, %Error{recovery: :restart_worker}} when checkin == :ok ->
          {:remove, :restart_worker}

        _ ->
          checkin
      end

    {result, hand_back(channel, pool_pid, checkin)}
  end

  # Connect the port back to the pool before checkin (or an idle worker's exit would
  # reach us instead of the pool), and take its stray frames off our mailbox.
  defp hand_back(channel, pool_pid, checkin) do
    checkin =
      try do
        Port.connect(channel.port, pool_pid)
        checkin
      rescue
        # The port closed, or the pool is gone (then nobody else would close it:
        # we are not linked to it, so it would outlive us).
        ArgumentError ->
          Channel.close(channel)
          {:remove, :closed}
      end

    flush(channel.port)
    checkin
  end

  defp flush(port) do
    receive do
      {^port, _} -> flush(port)
    after
      0 -> :ok
    end
  end

  defp checkout_error(:timeout, pool, index, pool_timeout) do
    failures = :counters.get(pool.failures, index + 1)

    hint =
      if failures > 0,
        do: "its worker failed to start #{failures} time(s) in a row (see the logs)",
        else:
          "its worker was busy: pass a larger :pool_timeout, or give the pool more workers (:size)"

    Error.new(
      :overloaded,
      "pool_timeout",
      "no worker of pool #{inspect(pool.name)} (shard #{index + 1} of #{pool.size}) was free within #{pool_timeout} ms: #{hint}",
      %{
        "pool" => inspect(pool.name),
        "shard" => index + 1,
        "pool_timeout_ms" => pool_timeout,
        "start_failures" => failures
      }
    )
  end

  defp checkout_error({:worker_start_failed, %Error{} = error}, _pool, _index, _pool_timeout),
    do: error

  defp checkout_error(reason, pool, index, _pool_timeout) do
    Error.new(
      :communication,
      "pool_not_running",
      "pool #{inspect(pool.name)} shard #{index + 1} is not running (#{inspect(reason)}): stopped, or restarting",
      %{"pool" => inspect(pool.name), "shard" => index + 1, "reason" => inspect(reason)}
    )
  end

  @doc """
  Sends a request without waiting: a task under `PortBridge.TaskSupervisor` does the
  checkout and forwards the request's events and reply to the caller (see
  `PortBridge.Request`).
  """
  @spec async_request(atom | map, String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(pool, command, args \\ %{}, opts \\ []) do
    caller = self()

    {:ok, pid} =
      Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
        receive do
          {:"$port_bridge_ref", ref} ->
            opts =
              [
                owner: caller,
                cancel_tag: ref,
                on_event: fn {name, data} -> send(ref, {ref, {:event, name, data}}) end
              ] ++ opts

            send(ref, {ref, {:reply, request(pool, command, args, opts)}})
        end
      end)

    ref = :erlang.monitor(:process, pid, alias: :demonitor)
    send(pid, {:"$port_bridge_ref", ref})
    timeout = Keyword.get(opts, :timeout, pool_default(pool, :timeout))
    pool_timeout = Keyword.get(opts, :pool_timeout, pool_default(pool, :pool_timeout))

    Request.new(
      pid,
      ref,
      fn -> send(pid, {ref, :cancel}) end,
      add_timeouts(timeout, pool_timeout)
    )
  end

  defp pool_default(pool, key) do
    case if(is_atom(pool), do: lookup(pool), else: {:ok, pool}) do
      {:ok, pool} -> Map.fetch!(pool, key)
      :error -> 5_000
    end
  end

  defp add_timeouts(:infinity, _), do: :infinity
  defp add_timeouts(_, :infinity), do: :infinity
  defp add_timeouts(a, b), do: a + b

  @doc """
  Per shard: its NimblePool process (nil while restarting) and its worker's
  consecutive start failures.
  """
  @spec info(atom) :: [map]
  def info(name) do
    {:ok, pool} = lookup(name)

    for i <- 1..pool.size do
      shard = elem(pool.shards, i - 1)

      %{
        shard: i,
        name: shard,
        pid: GenServer.whereis(shard),
        start_failures: :counters.get(pool.failures, i)
      }
    end
  end

  @doc "The shard (1-based) a session's requests go to."
  @spec shard_for(atom, String.t()) :: pos_integer
  def shard_for(name, session_id) do
    {:ok, pool} = lookup(name)
    shard_index(pool, session_id) + 1
  end
end

if Code.ensure_loaded?(NimblePool) do
  defmodule PortBridge.Pool.Shard do
    @moduledoc false
    # The NimblePool worker of one shard of a PortBridge.Pool: its resource is the
    # Port itself (a PortBridge.Channel), handed to the caller on checkout with
    # Port.connect and connected back to the pool by the caller before checkin.
    #
    # Starting a worker is asynchronous (Python takes ~50 ms to be ready and would
    # block the pool): a task spawns it, waits for `ready`, connects the port to the
    # pool and unlinks. Consecutive failed starts are counted in a counter shared
    # with PortBridge.Pool (for its error messages); each retry waits
    # base * 2^(failures - 1) ms (capped), and after :max_start_failures the shard
    # stops, which its supervisor sees (NimblePool alone would retry at once, forever).

    @behaviour NimblePool
    require Logger
    alias PortBridge.{Channel, Error, Reaper}

    # `gave_up` belongs to this run of the shard (the failure counter outlives it).
    @impl NimblePool
    def init_pool(config), do: {:ok, Map.put(config, :gave_up, :atomics.new(1, []))}

    @impl NimblePool
    def init_worker(config) do
      pool = self()
      {:async, fn -> start_worker(pool, config) end, config}
    end

    defp start_worker(pool, config) do
      # This shard gave up and asked its pool to stop; NimblePool may have queued
      # one more start before the stop lands. Start nothing: this task is linked
      # to the pool and ends with it.
      if :atomics.get(config.gave_up, 1) == 1, do: Process.sleep(:infinity)

      failures = :counters.get(config.failures, config.index)
      if failures > 0, do: Process.sleep(backoff(failures, config))

      case Channel.open(config.spawn, pool) do
        {:ok, channel} ->
          :counters.put(config.failures, config.index, 0)
          Port.connect(channel.port, pool)
          Process.unlink(channel.port)
          channel

        {:error, error} ->
          :counters.add(config.failures, config.index, 1)
          failures = failures + 1

          Logger.warning(
            "portbridge pool #{inspect(config.pool)} shard #{config.index}: worker start failed " <>
              "(#{failures} in a row): #{Exception.message(error)}"
          )

          if failures >= config.max_start_failures do
            :atomics.put(config.gave_up, 1, 1)

            error = %{
              error
              | details:
                  Map.merge(error.details, %{
                    "consecutive_failures" => failures,
                    "shard" => config.index
                  })
            }

            # Not from this task: the pool's exit would kill it mid-call.
            spawn(fn -> GenServer.stop(pool, {:worker_start_failed, error}) end)
          end

          # NimblePool starts another attempt; init_worker makes it wait first.
          exit({:shutdown, error})
      end
    end

    @doc false
    def backoff(failures, %{backoff_min: min, backoff_max: max}) do
      min(min * Integer.pow(2, min(failures - 1, 30)), max)
    end

    @impl NimblePool
    def handle_checkout(:checkout, {caller, _}, channel, config) do
      Port.connect(channel.port, caller)
      Process.unlink(channel.port)
      {:ok, channel, channel, config}
    rescue
      ArgumentError -> {:remove, :closed, config}
    end

    @impl NimblePool
    def handle_checkin(:ok, _from, channel, config), do: {:ok, channel, config}
    def handle_checkin({:remove, reason}, _from, _channel, config), do: {:remove, reason, config}

    # Only idle workers get here (NimblePool's rule); the port is connected to the pool.
    @impl NimblePool
    def handle_info({port, {:exit_status, status}}, %Channel{port: port} = channel) do
      Reaper.forget(channel.os_pid)

      Logger.warning(
        "portbridge worker #{channel.os_pid} exited with status #{status} while idle; replacing it"
      )

      {:remove, {:exit_status, status}}
    end

    def handle_info({:EXIT, port, reason}, %Channel{port: port}),
      do: {:remove, {:port_closed, reason}}

    def handle_info({port, {:data, payload}}, %Channel{port: port} = channel) do
      case Channel.decode(channel, payload) do
        {:error, %Error{}} -> {:remove, :undecodable_frame}
        frame -> log_stray(channel, frame)
      end
    end

    def handle_info(_message, channel), do: {:ok, channel}

    defp log_stray(channel, frame) do
      Channel.stray(channel, frame)
      {:ok, channel}
    end

    @impl NimblePool
    def terminate_worker(_reason, channel, config) do
      Channel.close(channel)
      {:ok, config}
    end
  end
end
