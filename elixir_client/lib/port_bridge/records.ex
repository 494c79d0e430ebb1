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

  alias PortBridge.Keeper

  @type table :: atom
  @type kind :: :lm | :embedder | :index | :program
  @type step :: {String.t(), map, keyword}

  @doc false
  def child_spec(table),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [table]}}

  @doc false
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
  def steps(table, session_id) do
    table
    |> :ets.match_object({{scope(session_id), :_, :_}, :_})
    |> Enum.sort()
    |> Enum.map(&to_step/1)
  end

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

  @doc "Whether a session (nil: the global scope) has recorded state."
  @spec any?(table, String.t() | nil) :: boolean
  def any?(table, session_id) do
    :ets.match_object(table, {{scope(session_id), :_, :_}, :_}, 1) != :"$end_of_table"
  end

  @doc "The worker (0-based) of a pool of `size` that holds a session."
  @spec index(String.t(), pos_integer) :: non_neg_integer
  def index(session_id, size), do: :erlang.phash2(session_id, size)

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

  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  # Gives `table` to the caller if this process holds it: :ok or :none.
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
