defmodule PortBridge.Test.Stubs do
  @moduledoc false
  # The table of PortBridge.Test's stubs: {owner pid, target} -> fun, and allowances
  # {:allowed, pid, target} -> owner. This process owns the table (public, read by
  # any caller without a message) and monitors every owner and allowed process, so a
  # stub goes with the test that set it. Started by the :port_bridge application; it
  # stays idle unless a test uses PortBridge.Test.

  use GenServer

  @table __MODULE__

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  @spec put(pid, term, function) :: :ok
  def put(owner, target, fun), do: GenServer.call(__MODULE__, {:put, owner, target, fun})

  @doc false
  @spec delete(pid, term) :: :ok
  def delete(owner, target) do
    :ets.delete(@table, {owner, target})
    :ok
  end

  @doc false
  @spec allow(pid, term, pid) :: :ok
  def allow(owner, target, pid), do: GenServer.call(__MODULE__, {:allow, owner, target, pid})

  @doc false
  # The stub of `target` for the calling process: its own, that of a process in its
  # `$callers` (the processes that started it), or one it was allowed to use.
  @spec find(term) :: function | nil
  def find(target) do
    Enum.find_value([self() | Process.get(:"$callers", [])], fn pid ->
      case :ets.lookup(@table, {pid, target}) do
        [{_, fun}] ->
          fun

        [] ->
          case :ets.lookup(@table, {:allowed, pid, target}) do
            [{_, owner}] -> with [{_, fun}] <- :ets.lookup(@table, {owner, target}), do: fun
            [] -> nil
          end
      end
    end)
  end

  @impl true
  def init(:ok) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    {:ok, MapSet.new()}
  end

  @impl true
  def handle_call({:put, owner, target, fun}, _from, watched) do
    :ets.insert(@table, {{owner, target}, fun})
    {:reply, :ok, watch(watched, owner)}
  end

  def handle_call({:allow, owner, target, pid}, _from, watched) do
    :ets.insert(@table, {{:allowed, pid, target}, owner})
    {:reply, :ok, watch(watched, pid)}
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, _reason}, watched) do
    :ets.match_delete(@table, {{pid, :_}, :_})
    :ets.match_delete(@table, {{:allowed, pid, :_}, :_})
    {:noreply, MapSet.delete(watched, pid)}
  end

  defp watch(watched, pid) do
    if MapSet.member?(watched, pid) do
      watched
    else
      Process.monitor(pid)
      MapSet.put(watched, pid)
    end
  end
end
