defmodule PortBridge.Records do
  @moduledoc """
  What a pool records to rebuild sessions on a fresh Python: per scope (a session,
  or the global scope), the requests that recreate its state.

  A Python worker keeps a session's LM configuration and programs in its memory;
  when it dies they are gone. The DSPy layer (`PortBridge.DSPy`, which knows which
  commands build state) writes here as its requests succeed; each `PortBridge.Worker`
  of the pool replays, on every fresh Python and before anything else reaches it,
  the global scope and the sessions that hash to it (its `:on_ready`).

  One ETS table per pool, `:public`, so callers write their own rows (one row per
  piece of state: no read-modify-write, no process in a request's path). It is owned
  by this process, which does nothing else; `PortBridge.Keeper` is its heir, so the
  records survive the death of this process (the next one takes them back) and the
  restart of the pool itself (taken back within the Keeper's hold time).

  Rows: `{{scope, order, item}, {command, args}}`, where `scope` is `:global` or
  `{:session, id}` (`:global` sorts first), `order` 0 for the LM configuration, 1
  for the embedder, 2 for retrieval indexes and 3 for programs, `item` nil, the
  index id or the program id. API keys given to `configure_lm` and
  `configure_embedder` are kept here, in memory, so they can be replayed; so is each
  index's corpus (replaying `create_index` embeds it again).
  """

  use GenServer
  require Logger

  alias PortBridge.{Call, Keeper}

  @type table :: atom
  @type kind :: :lm | :embedder | :index | :program
  @type step :: {String.t(), map, keyword}

  @doc false
  def child_spec(table),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [table]}}

  @doc false
  @spec start_link(atom) :: GenServer.on_start()
  def start_link(table), do: GenServer.start_link(__MODULE__, table)

  ## Writing and reading (any process)

  @doc "Records the request that rebuilds `item` of `kind` in a scope."
  @spec put(table, String.t() | nil, kind, term, String.t(), map) :: :ok
  def put(table, session_id, kind, item, command, args) do
    :ets.insert(table, {{scope(session_id), order(kind), item}, {command, args}})
    :ok
  end

  @doc "Forgets one piece of a scope's state."
  @spec delete(table, String.t() | nil, kind, term) :: :ok
  def delete(table, session_id, kind, item) do
    :ets.delete(table, {scope(session_id), order(kind), item})
    :ok
  end

  @doc "Forgets a whole scope."
  @spec delete_scope(table, String.t() | nil) :: :ok
  def delete_scope(table, session_id) do
    :ets.match_delete(table, {{scope(session_id), :_, :_}, :_})
    :ok
  end

  @doc "The requests that rebuild one scope, in order (the LM first, programs last)."
  @spec steps(table, String.t() | nil) :: [step]
  def steps(table, session_id), do: steps_of(rows(table, session_id))

  @doc """
  The requests that rebuild, on worker `index` (0-based) of a pool of `size`, the
  global scope and every session that hashes to it. A Worker's `:on_ready`.
  """
  @spec replay(table, non_neg_integer, pos_integer) :: [step]
  def replay(table, index, size) do
    case :ets.whereis(table) do
      :undefined ->
        []

      _ ->
        for {{scope, _, _}, _} = row <- :ets.tab2list(table),
            mine?(scope, index, size),
            do: to_step(row)
    end
  end

  @typedoc "A change to a scope's records, as the DSPy layer derives it from a request."
  @type op ::
          {:put, kind, term, String.t(), map}
          | {:delete, kind, term}
          | :delete_scope

  @doc "Applies an `t:op/0` to a scope."
  @spec change(table, String.t() | nil, op) :: :ok
  def change(table, session_id, {:put, kind, item, command, args}),
    do: put(table, session_id, kind, item, command, args)

  def change(table, session_id, {:delete, kind, item}), do: delete(table, session_id, kind, item)
  def change(table, session_id, :delete_scope), do: delete_scope(table, session_id)

  @doc """
  The request that brings a worker that already has a scope's earlier state up to
  date with `op` (what a change of the global scope sends to the other workers).
  """
  @spec step(op) :: step | nil
  def step({:put, _kind, _item, command, args}), do: {command, args, []}
  def step({:delete, :program, id}), do: {"delete_program", %{"program_id" => id}, []}
  def step({:delete, :index, id}), do: {"delete_index", %{"index_id" => id}, []}
  def step(_op), do: nil

  ## Snapshots: a session's rows with a version, as PortBridge.Cluster copies them
  ## between nodes. A version row, `{{:version, id}, n}`, matches none of the
  ## patterns above: steps and replays never see it.

  @typedoc "A session's rows (`rows/2`) and their version (0: never versioned)."
  @type snapshot :: {non_neg_integer, [tuple]}

  @doc "A scope's rows, as `install/4` takes them."
  @spec rows(table, String.t() | nil) :: [tuple]
  def rows(table, session_id), do: :ets.match_object(table, {{scope(session_id), :_, :_}, :_})

  @doc "A session's rows and version, or nil when the table knows nothing of it."
  @spec snapshot(table, String.t()) :: snapshot | nil
  def snapshot(table, session_id) do
    case {version(table, session_id), rows(table, session_id)} do
      {0, []} -> nil
      {version, rows} -> {version, rows}
    end
  end

  @doc "Replaces a scope's rows (and, for a session, sets its version)."
  @spec install(table, String.t() | nil, non_neg_integer, [tuple]) :: :ok
  def install(table, session_id, version, rows) do
    delete_scope(table, session_id)
    :ets.insert(table, rows)
    if session_id != nil, do: :ets.insert(table, {{:version, session_id}, version})
    :ok
  end

  @doc "Forgets a session, version included."
  @spec forget(table, String.t()) :: :ok
  def forget(table, session_id) do
    delete_scope(table, session_id)
    :ets.delete(table, {:version, session_id})
    :ok
  end

  @doc "A session's version: 0 when it has none."
  @spec version(table, String.t()) :: non_neg_integer
  def version(table, session_id) do
    case :ets.lookup(table, {:version, session_id}) do
      [{_, version}] -> version
      [] -> 0
    end
  end

  @doc "Sets a session's version."
  @spec set_version(table, String.t(), non_neg_integer) :: :ok
  def set_version(table, session_id, version) do
    :ets.insert(table, {{:version, session_id}, version})
    :ok
  end

  @doc "The sessions the table has rows or a version of."
  @spec sessions(table) :: [String.t()]
  def sessions(table) do
    rows = :ets.select(table, [{{{{:session, :"$1"}, :_, :_}, :_}, [], [:"$1"]}])
    versions = :ets.select(table, [{{{:version, :"$1"}, :_}, [], [:"$1"]}])
    Enum.uniq(rows ++ versions)
  end

  @doc "The requests that rebuild a scope from its rows, in order (the LM first)."
  @spec steps_of([tuple]) :: [step]
  def steps_of(rows), do: rows |> Enum.sort() |> Enum.map(&to_step/1)

  ## Sending steps

  @doc """
  Sends `steps` to each of `workers` at once, within the deadline of `opts`; a
  step that fails is logged, and the others still go.
  """
  @spec replicate([GenServer.server()], [step], keyword) :: :ok
  def replicate(workers, steps, opts) do
    step_opts = Keyword.take(opts, [:timeout, :deadline])

    workers
    |> Enum.map(fn worker ->
      Task.async(fn ->
        for {command, args, extra} <- steps do
          case Call.run(Call.new(worker, command, args, step_opts ++ extra)) do
            {:ok, _} ->
              :ok

            {:error, error} ->
              Logger.warning(
                "portbridge: #{command} did not reach #{inspect(worker)}: #{Exception.message(error)}"
              )
          end
        end
      end)
    end)
    |> Task.await_many(:infinity)

    :ok
  end

  @doc """
  Sends a session's `steps` to its Worker in the pool named `pool`, in order, within
  the deadline of `opts`: `:ok`, or the first error (the steps after it are not sent).
  """
  @spec rebuild(atom, String.t(), [step], keyword) :: :ok | {:error, PortBridge.Error.t()}
  def rebuild(pool, session_id, steps, opts) do
    opts = opts |> Keyword.take([:timeout, :deadline]) |> Keyword.put(:session_id, session_id)

    Enum.reduce_while(steps, :ok, fn {command, args, _}, :ok ->
      case Call.run(Call.new(pool, command, args, opts)) do
        {:ok, _} -> {:cont, :ok}
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  @doc "Whether a session (nil: the global scope) has recorded state."
  @spec any?(table, String.t() | nil) :: boolean
  def any?(table, session_id) do
    :ets.match_object(table, {{scope(session_id), :_, :_}, :_}, 1) != :"$end_of_table"
  end

  @doc "The worker (0-based) of a pool of `size` that holds a session."
  @spec index(String.t(), pos_integer) :: non_neg_integer
  def index(session_id, size), do: PortBridge.Pool.index(session_id, size)

  defp mine?(:global, _index, _size), do: true
  defp mine?({:session, id}, index, size), do: index(id, size) == index

  defp to_step({{:global, _, _}, {command, args}}), do: {command, args, []}
  defp to_step({{{:session, id}, _, _}, {command, args}}), do: {command, args, [session_id: id]}

  defp scope(nil), do: :global
  defp scope(session_id), do: {:session, session_id}

  defp order(:lm), do: 0
  defp order(:embedder), do: 1
  defp order(:index), do: 2
  defp order(:program), do: 3

  ## The owner

  @impl true
  def init(table) do
    Process.flag(:trap_exit, true)
    keeper = Process.whereis(Keeper)

    case Keeper.claim(table) do
      :ok ->
        receive do
          {:"ETS-TRANSFER", _tab, _from, ^table} -> :ok
        after
          5_000 -> :ok
        end

        Logger.info("portbridge: #{inspect(table)} taken back with its records")

      :none ->
        :ets.new(table, [:named_table, :public, :ordered_set, read_concurrency: true])
    end

    {:ok, watch_keeper(%{table: table, keeper: keeper})}
  end

  # The heir is the Keeper running now; a Keeper that restarts gets named again.
  defp watch_keeper(state) do
    case Process.whereis(Keeper) do
      nil ->
        Process.send_after(self(), :keeper, 50)
        state

      pid ->
        :ets.setopts(state.table, {:heir, pid, state.table})
        Process.monitor(pid)
        %{state | keeper: pid}
    end
  end

  @impl true
  def handle_info({:DOWN, _, :process, keeper, _}, %{keeper: keeper} = state),
    do: {:noreply, watch_keeper(%{state | keeper: nil})}

  def handle_info(:keeper, state), do: {:noreply, watch_keeper(state)}
  def handle_info(_other, state), do: {:noreply, state}
end

defmodule PortBridge.Keeper do
  @moduledoc false
  # The heir of every pool's records table (PortBridge.Records): holds a table whose
  # owner died until a new owner claims it, or for @hold_ms (then the pool is gone
  # for good and its records with it). Started by the :port_bridge application.
  # `timers`: table => the token of its pending expiry.

  use GenServer

  @hold_ms 60_000

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  # Gives `table` to the caller if this process holds it: :ok or :none.
  @spec claim(atom) :: :ok | :none
  def claim(table) do
    if Process.whereis(__MODULE__), do: GenServer.call(__MODULE__, {:claim, table}), else: :none
  end

  @impl true
  def init(:ok), do: {:ok, %{}}

  # The table passes to this process the moment its owner dies; the ETS-TRANSFER
  # message may still be on its way when the next owner claims it, so ownership is
  # asked of ETS, not of the messages seen so far.
  @impl true
  def handle_call({:claim, table}, {pid, _}, timers) do
    timers = Map.delete(timers, table)

    with tab when tab != :undefined <- :ets.whereis(table),
         true <- :ets.info(tab, :owner) == self() do
      :ets.give_away(tab, pid, table)
      {:reply, :ok, timers}
    else
      _ -> {:reply, :none, timers}
    end
  end

  @impl true
  def handle_info({:"ETS-TRANSFER", tab, _from, table}, timers) do
    if :ets.info(tab, :owner) == self() do
      token = make_ref()
      Process.send_after(self(), {:expire, table, token}, @hold_ms)
      {:noreply, Map.put(timers, table, token)}
    else
      {:noreply, timers}
    end
  end

  def handle_info({:expire, table, token}, timers) do
    with ^token <- timers[table],
         tab when tab != :undefined <- :ets.whereis(table),
         true <- :ets.info(tab, :owner) == self() do
      :ets.delete(tab)
    end

    {:noreply, Map.delete(timers, table)}
  end
end
