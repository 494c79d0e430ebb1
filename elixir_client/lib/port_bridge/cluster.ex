defmodule PortBridge.Cluster do
  @schema [
    name: [type: :atom, required: true, doc: "the name requests use (and the `:pg` group)"],
    pool: [
      type: :keyword_list,
      default: [],
      doc: "the options of the local `PortBridge.Pool` (except `:name`; `:multiplexed` only)"
    ],
    replicas: [
      type: :pos_integer,
      default: 2,
      doc: "nodes that hold a session's records, owner included"
    ],
    overflow_at: [
      type: :pos_integer,
      default_doc: "the Python's `--max-concurrency`",
      doc:
        "requests in flight per local Worker at which a request without a session may go to another node"
    ],
    gossip_interval: [
      type: :pos_integer,
      default: 100,
      doc: "ms between reports of free slots to the other members"
    ],
    drop_after: [
      type: :pos_integer,
      default: 60_000,
      doc: "ms a node keeps a session that moved away before ending it on its Python"
    ],
    settle: [
      type: :pos_integer,
      default: 5_000,
      doc:
        "ms after a membership change during which an owner that has no record of a session asks the other members for one"
    ]
  ]

  @moduledoc """
  One pool per node, under one name, across the nodes of a distributed Erlang
  cluster: a session's requests reach the same Python from whichever node they
  start, and a session outlives the node it lived on.

      # the same child on every node
      children = [
        {PortBridge.Cluster, name: MyApp.Python, pool: [size: 2, python: "/srv/venv/bin/python"]}
      ]

      {:ok, _} = PortBridge.DSPy.configure_lm(MyApp.Python, model: "offline", session_id: "u-42")
      PortBridge.Cluster.members(MyApp.Python)
      #=> [:"a@host", :"b@host"]

  `PortBridge.request/4`, `async_request/4`, `stream/4` and `PortBridge.DSPy` take the
  cluster's name as they take a pool's.

  ## Routing

  Every node runs a `PortBridge.Pool` (`pool:` takes its options; the strategy is
  `:multiplexed`) and a member process that joins the `:pg` group of the cluster's
  name once its pool is up: `members/1` lists the nodes whose pool is live.

    * A request with a `:session_id` goes to the session's owner: the member that
      ranks highest for it by rendezvous (highest random weight) hashing,
      `:erlang.phash2({session_id, node})`. Every node computes the same owner from
      the same members, with no coordination; when a node joins, only the sessions
      it now ranks highest for move to it, and when one leaves, only its own move,
      each to the member that ranked second. On the owner, the pool's Worker is
      chosen as in a pool. A remote request goes straight to that Worker: the caller
      sends to its pid, the reply comes straight back (no process in between).
    * A request without a session stays on the caller's node, unless every local
      Worker already has `:overflow_at` requests in flight (by default the Python's
      `--max-concurrency`, from its `ready` event): then it goes to the Worker with
      the most free slots on the node with the most, as members last reported
      (every `:gossip_interval` ms, only when it changed). When every node is
      saturated, it stays local and queues in the local Python.

  ## What moves, and when

  A session's state (its LM and programs, as `PortBridge.DSPy` records them) is kept
  on `:replicas` nodes (2 by default): its owner, which replays it on every fresh
  Python of its pool, and the next ones in the session's ranking, which only hold
  the records. Each change is applied by the owner and pushed to the others with a
  version.

    * Node leaves (stopped, crashed, cut off): requests in flight there fail with
      `communication` (retryable: `retry: true` sends them again, to the new owner).
      Its sessions' new owner is the member that ranked second, which holds their
      records: the session's next request rebuilds it there first (in that
      request's `:timeout`). Members re-replicate the records of the sessions that
      lost a copy.
    * Node joins: the sessions that now rank it first move to it: their holders push
      the records to it, and each one's next request rebuilds it there. The old
      owner keeps the session's state on its Python for `:drop_after` ms (requests
      still in flight there finish), then ends it.
    * The first request of a session from a node, after each membership change,
      asks the owner whether it has the session (one round trip); the answer is
      cached until the members change again.

  With `replicas: 1` a session's records live only on its owner and die with it.
  The global scope (an LM configured without a session, programs created without
  one) is recorded on every member and sent to every Worker; a joining node takes
  it from a member before it joins.

  ## Deadlines, partitions

  `:timeout` is one budget across nodes: checking the owner, rebuilding a moved
  session, sending, waiting. The remote Worker gets the deadline translated to its
  own monotonic clock (the offset is measured when members meet). A node that is
  slow, suspended or cut off cannot hold a caller past its timeout: every wait on
  another node is bounded by the caller's deadline. Until the connection to such a
  node is declared down (`net_ticktime`, 60 s by default), it is still a member, and
  the requests of the sessions it owns get `timeout` errors.

  ## Options

  Checked at `start_link/1`: an unknown option or one of the wrong type is an
  `ArgumentError` that names it.

  #{PortBridge.Schema.docs(@schema)}
  """

  use Supervisor
  @behaviour PortBridge.Target

  alias PortBridge.{
    Call,
    Callbacks,
    Error,
    Options,
    Pool,
    Records,
    Request,
    Schema,
    Target,
    Worker
  }

  alias PortBridge.Cluster.{Membership, Ranking, Replication, Rpc}

  @doc false
  # The :pg scope of every cluster; started by the :port_bridge application.
  @spec scope() :: atom
  defdelegate scope, to: Ranking

  @doc "Starts the cluster's local pool and member; see the module doc for the options."
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
    opts = Schema.validate!(opts, @schema, "PortBridge.Cluster.start_link/1", defaults: true)
    name = opts[:name]
    pool_opts = opts[:pool]

    if Keyword.has_key?(pool_opts, :name),
      do:
        raise(
          ArgumentError,
          "the :pool option of PortBridge.Cluster.start_link/1 takes no :name (the cluster names its pool)"
        )

    if Keyword.get(pool_opts, :strategy, :multiplexed) != :multiplexed do
      raise ArgumentError,
            "a PortBridge.Cluster's pools are :multiplexed (requests from other nodes go " <>
              "straight to a Worker); got strategy: #{inspect(pool_opts[:strategy])}"
    end

    overflow_at = opts[:overflow_at]

    pool = Module.concat(name, Pool)

    %{
      name: name,
      pool: pool,
      pool_opts: [name: pool, limiter_cluster: name] ++ pool_opts,
      membership: Module.concat(name, Membership),
      replication: Module.concat(name, Replication),
      routes: Module.concat(name, Routes),
      ensured: Module.concat(name, Ensured),
      records:
        if(Keyword.get(pool_opts, :recover_sessions, true) != false,
          do: Module.concat(pool, Records)
        ),
      replica_table: Module.concat(name, Replicas),
      adopt_records: Keyword.get(pool_opts, :adopt_records, false),
      replicas: opts[:replicas],
      overflow_at: overflow_at,
      gossip_interval: opts[:gossip_interval],
      drop_after: opts[:drop_after],
      settle: opts[:settle],
      timeout: Keyword.get(pool_opts, :timeout) || Options.default_timeout()
    }
  end

  @impl Supervisor
  def init(config) do
    # Owned by this supervisor: they live as long as the cluster on this node, and
    # callers read them without asking any process. routes: {:epoch, n} (bumped at
    # each membership change), {:capacity, n}, {{:node, node}, info} and
    # {{:free, node}, total, slots} of the other members. ensured: {session, owner,
    # epoch}, the sessions this node has checked with their owner.
    :ets.new(config.routes, [:named_table, :public, :set, read_concurrency: true])
    :ets.insert(config.routes, {:epoch, 0})

    :ets.new(config.ensured, [
      :named_table,
      :public,
      :set,
      read_concurrency: true,
      write_concurrency: true
    ])

    cluster = Map.drop(config, [:pool_opts])
    :ok = Target.register(config.name, __MODULE__, cluster)

    # The replicas table and the process that keeps the node's records current, when
    # sessions are recorded; rest_for_one: a pool that restarts takes the rest (and the
    # node's :pg entry) with it.
    records_specs =
      if config.records do
        [
          {Records, table: config.replica_table, instance: self(), adopt: config.adopt_records},
          {Replication, cluster}
        ]
      else
        []
      end

    Supervisor.init(
      [{Pool, config.pool_opts}] ++ records_specs ++ [{Membership, cluster}],
      strategy: :rest_for_one
    )
  end

  @doc false
  # The cluster registered under `name`, if any.
  @spec lookup(term) :: {:ok, map} | :error
  def lookup(name) do
    if config = Target.config(__MODULE__, name), do: {:ok, config}, else: :error
  end

  ## Members and ranking

  @doc "The nodes whose pool of cluster `name` is live, sorted."
  @spec members(atom) :: [node]
  def members(name) do
    case lookup(name) do
      {:ok, cluster} -> Ranking.nodes(cluster.name)
      :error -> []
    end
  end

  @doc "The node that owns `session_id` among the live members of cluster `name` (nil: none)."
  @spec owner(atom, String.t()) :: node | nil
  def owner(name, session_id), do: owner_of(session_id, members(name))

  @doc false
  @spec owner_of(String.t(), [node]) :: node | nil
  defdelegate owner_of(session_id, nodes), to: Ranking

  ## Requests

  @doc """
  Sends a request through the cluster and waits for its reply. Options as
  `PortBridge.request/4`.
  """
  @spec request(atom, String.t() | atom, map, keyword) :: {:ok, term} | {:error, Error.t()}
  def request(cluster, command, args \\ %{}, opts \\ []) do
    # A name nothing runs under still gets its options checked; the call then fails.
    cluster
    |> Call.new!(
      command,
      args,
      opts,
      :request,
      "PortBridge.Cluster.request/4",
      {__MODULE__, Target.config(__MODULE__, cluster)}
    )
    |> Call.run()
  end

  @doc "Sends a request through the cluster without waiting (see `PortBridge.Request`)."
  @spec async_request(atom, String.t() | atom, map, keyword) :: Request.t() | {:error, Error.t()}
  def async_request(cluster, command, args \\ %{}, opts \\ []) do
    # A name nothing runs under still gets its options checked; the call then fails.
    cluster
    |> Call.new!(
      command,
      args,
      opts,
      :async,
      "PortBridge.Cluster.async_request/4",
      {__MODULE__, Target.config(__MODULE__, cluster)}
    )
    |> Call.async()
  end

  # A nil config: the call named a cluster that does not run (request/4, async_request/4).
  @impl PortBridge.Target
  def default_timeout(nil), do: Options.default_timeout()
  def default_timeout(cluster), do: cluster.timeout

  @impl PortBridge.Target
  def journal(%{records: table} = cluster) when table != nil,
    do: {PortBridge.Journal.Cluster, cluster}

  def journal(_cluster), do: nil

  @impl PortBridge.Target
  def call(nil, %Call{target: name}), do: {:error, not_running(name)}

  def call(cluster, %Call{} = call) do
    with {:ok, route} <- route(cluster, call) do
      case route do
        {:local, pool} ->
          Pool.call(pool, call)

        {:remote, _pid, _offset} = remote ->
          case remote_request(remote, call) do
            %Request{} = request -> Request.await(request, call.on_event)
            {:error, _} = error -> error
          end
      end
    end
  end

  @impl PortBridge.Target
  def async(nil, %Call{target: name}), do: {:error, not_running(name)}

  def async(cluster, %Call{} = call) do
    with {:ok, route} <- route(cluster, call) do
      case route do
        {:local, pool} -> Pool.async(pool, call)
        {:remote, _pid, _offset} = remote -> remote_request(remote, call)
      end
    end
  end

  defp not_running(name) do
    Error.new(
      :communication,
      "cluster_not_running",
      "no PortBridge.Cluster named #{inspect(name)}"
    )
  end

  # {:ok, {:local, pool}} or {:ok, {:remote, worker_pid, clock_offset}}.
  defp route(cluster, call) do
    case call.session_id do
      nil -> sessionless(cluster)
      session_id -> session_route(cluster, session_id, call)
    end
  end

  defp session_route(cluster, session_id, call) do
    # The epoch first: a membership change after this read makes the check stale.
    epoch = :ets.lookup_element(cluster.routes, :epoch, 2)

    case Ranking.nodes(cluster.name) do
      [] ->
        local(cluster)

      nodes ->
        owner = owner_of(session_id, nodes)

        with :ok <- ensure(cluster, session_id, owner, epoch, call) do
          if owner == node(), do: local(cluster), else: remote(cluster, owner, session_id, call)
        end
    end
  end

  # The owner has the session (rebuilt if it moved) before the first request from
  # this node in this epoch reaches it.
  defp ensure(%{records: nil}, _session_id, _owner, _epoch, _call), do: :ok

  defp ensure(cluster, session_id, owner, epoch, call) do
    case :ets.lookup(cluster.ensured, session_id) do
      [{_, ^owner, ^epoch}] ->
        :ok

      _ ->
        with {:ok, _} <- Rpc.ask(cluster.replication, owner, {:ensure, session_id, false}, call) do
          :ets.insert(cluster.ensured, {session_id, owner, epoch})
          :ok
        end
    end
  end

  defp remote(cluster, node, session_id, call) do
    with {:ok, info} <- Membership.node_info(cluster, node, call) do
      case elem(info.workers, Pool.index(session_id, info.size)) do
        pid when is_pid(pid) -> {:ok, {:remote, pid, info.offset}}
        nil -> {:error, not_running(cluster, node)}
      end
    end
  end

  defp local(cluster) do
    case Pool.lookup(cluster.pool) do
      {:ok, pool} -> {:ok, {:local, pool}}
      :error -> {:error, not_running(cluster, node())}
    end
  end

  defp sessionless(cluster) do
    with {:ok, {:local, pool}} = local <- local(cluster) do
      if saturated?(cluster, pool), do: {:ok, overflow(cluster) || {:local, pool}}, else: local
    end
  end

  defp saturated?(cluster, pool) do
    case :ets.lookup(cluster.routes, :capacity) do
      [{_, capacity}] -> Enum.all?(1..pool.size, &(:atomics.get(pool.load, &1) >= capacity))
      [] -> false
    end
  end

  # The Worker with the most free slots on the member with the most, by the last
  # reports; nil when no other member has one.
  defp overflow(cluster) do
    candidates =
      for node <- Ranking.nodes(cluster.name),
          node != node(),
          [{_, total, slots}] <- [:ets.lookup(cluster.routes, {:free, node})],
          total > 0,
          [{_, info}] <- [:ets.lookup(cluster.routes, {:node, node})],
          do: {total, node, slots, info}

    with [_ | _] <- candidates,
         {_, _, slots, info} = Enum.max(candidates),
         {_, index} = slots |> Tuple.to_list() |> Enum.with_index() |> Enum.max(),
         pid when is_pid(pid) <- elem(info.workers, index) do
      {:remote, pid, info.offset}
    else
      _ -> nil
    end
  end

  # The Worker on the other node keeps the request's deadline on its own monotonic
  # clock; the caller keeps it on ours. The callbacks registered for the session on
  # this node go with the request (the other node's registry does not have them).
  defp remote_request({:remote, pid, offset}, %Call{deadline: deadline} = call) do
    remote_deadline = if deadline == :infinity, do: :infinity, else: deadline + offset

    callbacks =
      case Callbacks.registered(call.session_id) do
        registered when registered == %{} -> call.callbacks
        registered -> Map.merge(registered, call.callbacks)
      end

    case Worker.async(pid, %{call | deadline: remote_deadline, callbacks: callbacks}) do
      %Request{} = request -> %{request | deadline: deadline}
      {:error, _} = error -> error
    end
  end

  defp not_running(cluster, node) do
    Error.new(
      :communication,
      "not_running",
      "the pool of cluster #{inspect(cluster.name)} on #{node} is not running (starting, or restarting)",
      %{"cluster" => inspect(cluster.name), "node" => Atom.to_string(node)}
    )
  end
end
