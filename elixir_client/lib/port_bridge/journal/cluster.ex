defmodule PortBridge.Journal.Cluster do
  @moduledoc """
  The journal of a `PortBridge.Cluster` (see `PortBridge.Journal`): a session's
  records are kept by its owner node, which applies each change and pushes it to the
  next nodes in the session's ranking (`PortBridge.Cluster.Replication`); the global
  scope is recorded on every member, each of which sends it to its own Workers.
  The journal is the cluster's config (its name, pool, tables and processes).
  """

  @behaviour PortBridge.Journal

  require Logger
  alias PortBridge.{Call, Journal, Pool, Records}
  alias PortBridge.Cluster.{Ranking, Rpc}

  @impl Journal
  def record(cluster, %Call{session_id: nil} = call, op) do
    [node() | Ranking.nodes(cluster.name)]
    |> Enum.uniq()
    |> Enum.map(fn node ->
      Task.async(fn ->
        {node, Rpc.ask(cluster.replication, node, {:global, op, node == node()}, call)}
      end)
    end)
    |> Task.await_many(:infinity)
    |> Enum.each(fn {node, result} ->
      warn_unrecorded(cluster, result, "the global scope", node)
    end)
  end

  def record(cluster, %Call{session_id: session_id} = call, op) do
    node = owner(cluster, session_id)
    result = Rpc.ask(cluster.replication, node, {:record, session_id, op}, call)
    warn_unrecorded(cluster, result, "session #{inspect(session_id)}", node)
  end

  defp warn_unrecorded(_cluster, {:ok, _}, _scope, _node), do: :ok

  defp warn_unrecorded(cluster, {:error, error}, scope, node) do
    Logger.warning(
      "portbridge: cluster #{inspect(cluster.name)}: a change of #{scope} was not recorded on " <>
        "#{node}: #{Exception.message(error)}",
      portbridge_cluster: cluster.name,
      portbridge_pool: cluster.pool
    )
  end

  # The global scope: sent again to every local Worker. A session: its owner sends its
  # records again to the Python that serves it.
  @impl Journal
  def rebuild(cluster, %Call{session_id: nil} = call) do
    if Records.any?(cluster.records, nil) do
      steps = Records.steps(cluster.records, nil)
      Journal.replicate(Pool.workers(cluster.pool), steps, call)
    else
      :none
    end
  end

  def rebuild(cluster, %Call{session_id: session_id} = call) do
    node = owner(cluster, session_id)

    case Rpc.ask(cluster.replication, node, {:ensure, session_id, true}, call) do
      {:ok, :rebuilt} -> :ok
      {:ok, _} -> :none
      {:error, _} = error -> error
    end
  end

  @impl Journal
  def first_worker(cluster), do: hd(Pool.workers(cluster.pool))

  defp owner(cluster, session_id),
    do: Ranking.owner_of(session_id, Ranking.nodes(cluster.name)) || node()
end
