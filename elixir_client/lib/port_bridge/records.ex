defmodule PortBridge.Records do
  @moduledoc """
  Storage of what rebuilds sessions on a fresh Python: per scope (a session, or the
  global scope), the requests that recreate its state, in order.

  Plain storage: it knows no command and sends no request. What builds state, and the
  order of its pieces, is the DSPy layer's to say (`PortBridge.DSPy.Recorder`); how the
  records reach Pythons is a journal's (`PortBridge.Journal`).

  One ETS table per pool (and one of replicas per cluster member), named, owned by a
  process of this module that does nothing else. Rows are
  `{{scope, key}, {command, args}}`: `scope` is `:global` (sorting first) or
  `{:session, id}`, `key` is the caller's and orders a scope's rows (the DSPy layer uses
  `{0, nil}` for the LM, `{3, program_id}` for a program). A session's version (used
  by a cluster to keep the newest copy) is a row `{{:version, id}, n}`.

  ## Restarts

  `PortBridge.Keeper` is the table's heir. When this process dies and its pool's
  supervisor restarts it, the new one takes the records back. A pool started anew
  under the same name (its supervisor restarted, or a test that starts the same name
  again) starts with an empty table, unless it is started with `adopt_records: true`:
  then it takes the records of the previous pool of that name. Records nobody takes
  are dropped after the Keeper's hold time.
  """

  use GenServer
  require Logger

  alias PortBridge.Keeper

  @type table :: atom
  @type scope :: String.t() | nil
  @type step :: {String.t(), map, keyword}
  @typedoc "A change to a scope's records."
  @type op :: {:put, term, {String.t(), map}} | {:delete, term, term} | :delete_scope
  @typedoc "A session's rows (`rows/2`) and their version (0: never versioned)."
  @type snapshot :: {non_neg_integer, [tuple]}

  @doc false
  # `opts`: table (its name), instance (the pool's supervisor: a restart of this process
  # within it takes the records back), adopt (take those of a previous pool of the name).
  def child_spec(opts),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}}

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, Map.new(opts))

  ## Writing and reading (any process)

  @doc "Records the request that rebuilds `key` of a scope."
  @spec put(table, scope, term, {String.t(), map}) :: :ok
  def put(table, session_id, key, {command, args}) do
    :ets.insert(table, {{scope(session_id), key}, {command, args}})
    :ok
  end

  @doc "Forgets one piece of a scope's state."
  @spec delete(table, scope, term) :: :ok
  def delete(table, session_id, key) do
    :ets.delete(table, {scope(session_id), key})
    :ok
  end

  @doc "Forgets a whole scope (its version stays: see `forget/2`)."
  @spec delete_scope(table, scope) :: :ok
  def delete_scope(table, session_id) do
    :ets.match_delete(table, {{scope(session_id), :_}, :_})
    :ok
  end

  @doc "Applies an `t:op/0` to a scope."
  @spec change(table, scope, op) :: :ok
  def change(table, session_id, {:put, key, step}), do: put(table, session_id, key, step)
  def change(table, session_id, {:delete, key, _undo}), do: delete(table, session_id, key)
  def change(table, session_id, :delete_scope), do: delete_scope(table, session_id)

  @doc "The requests that rebuild one scope, in order."
  @spec steps(table, scope) :: [step]
  def steps(table, session_id), do: steps_of(rows(table, session_id))

  @doc """
  The requests that rebuild the global scope and every session for which `mine?`
  is true, the global scope first; [] when the table is gone.
  """
  @spec steps_where(table, (String.t() -> boolean)) :: [step]
  def steps_where(table, mine?) do
    case :ets.whereis(table) do
      :undefined ->
        []

      _ ->
        for {{scope, _key}, _} = row <- :ets.tab2list(table),
            scope == :global or (match?({:session, _}, scope) and mine?.(elem(scope, 1))),
            do: to_step(row)
    end
  end

  @doc "Whether a scope has recorded state."
  @spec any?(table, scope) :: boolean
  def any?(table, session_id) do
    :ets.match_object(table, {{scope(session_id), :_}, :_}, 1) != :"$end_of_table"
  end

  ## Snapshots: a session's rows with a version, as PortBridge.Cluster copies them
  ## between nodes.

  @doc "A scope's rows, as `install/4` takes them."
  @spec rows(table, scope) :: [tuple]
  def rows(table, session_id), do: :ets.match_object(table, {{scope(session_id), :_}, :_})

  @doc "A session's rows and version, or nil when the table knows nothing of it."
  @spec snapshot(table, String.t()) :: snapshot | nil
  def snapshot(table, session_id) do
    case {version(table, session_id), rows(table, session_id)} do
      {0, []} -> nil
      {version, rows} -> {version, rows}
    end
  end

  @doc "Replaces a scope's rows (and, for a session, sets its version)."
  @spec install(table, scope, non_neg_integer, [tuple]) :: :ok
  def install(table, session_id, version, rows) do
    delete_scope(table, session_id)
    :ets.insert(table, rows)
    if session_id != nil, do: set_version(table, session_id, version)
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
    rows = :ets.select(table, [{{{{:session, :"$1"}, :_}, :_}, [], [:"$1"]}])
    versions = :ets.select(table, [{{{:version, :"$1"}, :_}, [], [:"$1"]}])
    Enum.uniq(rows ++ versions)
  end

  @doc "The requests that rebuild a scope from its rows, in order."
  @spec steps_of([tuple]) :: [step]
  def steps_of(rows), do: rows |> Enum.sort() |> Enum.map(&to_step/1)

  defp to_step({{:global, _}, {command, args}}), do: {command, args, []}
  defp to_step({{{:session, id}, _}, {command, args}}), do: {command, args, [session_id: id]}

  defp scope(nil), do: :global
  defp scope(session_id), do: {:session, session_id}

  ## The owner

  @impl true
  def init(%{table: table} = opts) do
    Process.flag(:trap_exit, true)

    case Keeper.claim(table, opts[:instance], opts[:adopt] == true) do
      :ok ->
        Logger.info("portbridge: #{inspect(table)} taken back with its records",
          portbridge_records: table
        )

      :none ->
        :ets.new(table, [:named_table, :public, :ordered_set, read_concurrency: true])
    end

    {:ok, watch_keeper(%{table: table, instance: opts[:instance], keeper: nil})}
  end

  # The heir is the Keeper running now; a Keeper that restarts gets named again.
  defp watch_keeper(state) do
    case Process.whereis(Keeper) do
      nil ->
        Process.send_after(self(), :keeper, 50)
        state

      pid ->
        :ets.setopts(state.table, {:heir, pid, {state.table, state.instance}})
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
