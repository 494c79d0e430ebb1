defmodule PortBridge.Limiter.Membership do
  @moduledoc false
  # Where a model's budget lives in a cluster: the limiters of a PortBridge.Cluster's
  # nodes join one :pg group (in the cluster's scope), and a model's budget is held
  # by the member that ranks highest for it by rendezvous hashing, as a session's
  # owner is chosen (Cluster.owner_of/2). Read from :pg when needed (an ETS read):
  # no process of its own. A Limiter without a cluster holds every budget itself.
  #
  # The functions take the Limiter's state: `cluster` (nil outside a cluster),
  # `nodes` (the members last seen), `changed_at` (when they last changed, monotonic
  # us) and `horizon` (how far ahead leases go).

  alias PortBridge.{Cluster, RateLimit}
  alias PortBridge.Cluster.Ranking
  alias PortBridge.Limiter.{Queue, Window}

  @doc false
  # Joins the group of `cluster`'s limiters (the calling process).
  @spec join(atom) :: :ok
  def join(cluster), do: :pg.join(Cluster.scope(), group(cluster), self())

  @doc false
  # The limiters of `cluster`, on every node.
  @spec limiters(atom) :: [pid]
  def limiters(cluster), do: :pg.get_members(Cluster.scope(), group(cluster))

  defp group(cluster), do: {PortBridge.Limiter, cluster}

  @doc false
  # The state with the members as they are now (and when they last changed).
  @spec refresh(map, integer) :: map
  def refresh(%{cluster: nil} = state, _now), do: state

  def refresh(state, now) do
    nodes = Ranking.nodes(group(state.cluster))
    if nodes == state.nodes, do: state, else: %{state | nodes: nodes, changed_at: now}
  end

  @doc false
  # The node that holds `model`'s budget.
  @spec owner(map, String.t()) :: node
  def owner(%{cluster: nil}, _model), do: node()
  def owner(state, model), do: Cluster.owner_of("rate limit of " <> model, state.nodes) || node()

  @doc false
  # :local when this node holds the budget, else {:remote, the owner's limiter}.
  @spec route(map, String.t()) :: :local | {:remote, pid | nil}
  def route(%{cluster: nil}, _model), do: :local

  def route(state, model) do
    case owner(state, model) do
      owner when owner == node() -> :local
      owner -> {:remote, Enum.find(limiters(state.cluster), &(node(&1) == owner))}
    end
  end

  @doc false
  # A budget that another node may have held: nothing starts before `until`, past
  # the start times and leases it may have granted.
  @spec hold(Queue.t(), integer) :: Queue.t()
  def hold(m, until),
    do: %{m | budget: RateLimit.hold_until(m.budget, until), window: Window.hold(m.window, until)}

  @doc false
  # A model's queue as ownership changes: a node that takes a budget over from
  # another starts it past the leases the previous owner may have granted.
  @spec takeover(map, String.t(), Queue.t()) :: Queue.t()
  def takeover(%{cluster: nil}, _model, m), do: m

  def takeover(state, model, m) do
    case owner(state, model) do
      owner when owner == m.owner ->
        m

      owner when owner == node() ->
        hold(%{m | owner: owner}, state.changed_at + state.horizon)

      owner ->
        %{m | owner: owner}
    end
  end

  @doc false
  # The state with a queue for `model` (PortBridge.Limiter.Queue), created at its
  # first admission; new limits replace the old ones.
  @spec ensure(map, String.t(), PortBridge.RateLimit.limits(), integer) :: map
  def ensure(state, model, limits, now) do
    case state.models do
      %{^model => %{budget: %{limits: ^limits}}} ->
        state

      %{^model => m} ->
        put_in(state.models[model], Queue.set_limits(m, limits))

      %{} ->
        m = Queue.new(limits)
        m = %{m | owner: owner(state, model)}
        # A budget born just after the members changed may have been another
        # node's, whose leases can still run: start it past them.
        m =
          if state.cluster && now - state.changed_at < state.horizon,
            do: hold(m, state.changed_at + state.horizon),
            else: m

        put_in(state.models[model], m)
    end
  end
end
