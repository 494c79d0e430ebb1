defmodule PortBridge.Courier do
  @moduledoc false
  # Messages to processes on other nodes, sent so that no caller, Worker or cluster
  # member is ever held up by a congested connection.
  #
  # Sending to another node can suspend the sender: when the connection's buffer
  # is full (the other node stalled, or is cut off and not yet declared down,
  # which takes up to net_ticktime), and, for a large message, until all its
  # fragments are queued, during which any further signal from the same sender to
  # the same process (a cancel, a demonitor) waits too. Measured: a caller that had
  # sent a few 400 KB requests to a suspended node stayed blocked 70 s in the
  # demonitor that follows its timeout.
  #
  # So messages for another node go through that node's courier: one process per
  # node, which sends them in the order it got them (a request before its cancel,
  # events before the reply), and may block in their place. The sender only makes
  # a local send. A courier ends when its node goes down, dropping what it still
  # holds (the connection is gone anyway); the next message starts a new one.
  # Monitors and aliases are not affected: the processes that own them still make
  # them, and they do not wait behind another process's messages.

  use GenServer

  @table __MODULE__

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  # Sends `message` to `dest` (a pid, an alias, or {name, node}) without ever
  # blocking the caller. Returns :ok.
  @spec deliver(pid | reference | {atom, node}, term) :: :ok
  def deliver(dest, message) do
    case dest_node(dest) do
      node when node == node() ->
        send(dest, message)

      node ->
        send(courier(node), {:deliver, dest, message})
    end

    :ok
  end

  defp dest_node({name, node}) when is_atom(name) and is_atom(node), do: node
  defp dest_node(pid_or_ref), do: node(pid_or_ref)

  defp courier(node) do
    case :ets.lookup(@table, node) do
      [{_, pid}] -> pid
      [] -> GenServer.call(__MODULE__, {:courier, node})
    end
  end

  ## The registry of couriers (node => pid)

  @impl true
  def init(:ok) do
    :ets.new(@table, [:named_table, :protected, :set, read_concurrency: true])
    {:ok, %{}}
  end

  @impl true
  def handle_call({:courier, node}, _from, monitors) do
    case :ets.lookup(@table, node) do
      [{_, pid}] ->
        {:reply, pid, monitors}

      [] ->
        pid = spawn(fn -> start_courier(node) end)
        :ets.insert(@table, {node, pid})
        {:reply, pid, Map.put(monitors, Process.monitor(pid), node)}
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, pid, _}, monitors) do
    {node, monitors} = Map.pop(monitors, ref)
    :ets.delete_object(@table, {node, pid})
    {:noreply, monitors}
  end

  ## A courier

  defp start_courier(node) do
    # {:nodedown, node} at once if there is no connection (and none can be made).
    Node.monitor(node, true)
    relay(node)
  end

  defp relay(node) do
    receive do
      {:deliver, dest, message} ->
        send(dest, message)
        relay(node)

      {:nodedown, ^node} ->
        :ok
    end
  end
end
