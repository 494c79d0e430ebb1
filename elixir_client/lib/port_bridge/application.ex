defmodule PortBridge.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      # Pool (and cluster) names -> their routing data; an entry goes with its pool.
      {Registry, keys: :unique, name: PortBridge.Registry},
      # The :pg scope in which every PortBridge.Cluster's members find each other.
      %{id: :pg, start: {:pg, :start_link, [PortBridge.Cluster.scope()]}},
      # The heir of the pools' session records (PortBridge.Records).
      PortBridge.Keeper,
      # Callbacks registered per session (PortBridge.Callbacks.register/2).
      PortBridge.Callbacks,
      PortBridge.Reaper,
      # Sends to other nodes that never block the sender (PortBridge.Courier).
      PortBridge.Courier,
      PortBridge.CircuitBreaker,
      # Admits the LM calls of Workers outside a pool (a pool has its own).
      {PortBridge.Limiter, name: PortBridge.Limiter},
      {Task.Supervisor, name: PortBridge.TaskSupervisor},
      # PortBridge.Test's stubs (idle unless a test sets one).
      PortBridge.Test.Stubs
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: PortBridge.Supervisor)
  end
end
