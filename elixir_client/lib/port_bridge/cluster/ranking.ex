defmodule PortBridge.Cluster.Ranking do
  @moduledoc false
  # Who is in a cluster, and which member a session belongs to: the members are the
  # nodes whose pool of the cluster is live (the processes that joined the cluster's
  # :pg group), and a session's owner is the member that ranks highest for it by
  # rendezvous (highest random weight) hashing. Every node computes the same ranking
  # from the same members, with no coordination. Pure but for reading :pg.

  # The :pg scope of every cluster; started by the :port_bridge application.
  @scope :port_bridge_clusters

  @spec scope() :: atom
  def scope, do: @scope

  @doc false
  # The nodes of the :pg group `name` (a cluster's pools, or its limiters), sorted.
  @spec nodes(term) :: [node]
  def nodes(name) do
    :pg.get_members(@scope, name) |> Enum.map(&node/1) |> Enum.uniq() |> Enum.sort()
  end

  @doc false
  @spec owner_of(String.t(), [node]) :: node | nil
  def owner_of(_session_id, []), do: nil
  def owner_of(session_id, nodes), do: Enum.max_by(nodes, &weight(session_id, &1))

  @doc false
  # The first `n` of `nodes` in the session's ranking: where its records live.
  @spec top(String.t(), [node], non_neg_integer) :: [node]
  def top(session_id, nodes, n),
    do: nodes |> Enum.sort_by(&weight(session_id, &1), :desc) |> Enum.take(n)

  # phash2 is the same on every node and OTP release; the node name breaks
  # (improbable) ties.
  defp weight(session_id, node), do: {:erlang.phash2({session_id, node}, 4_294_967_296), node}
end
