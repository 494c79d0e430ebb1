defmodule PortBridge.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      PortBridge.Reaper,
      PortBridge.CircuitBreaker,
      {Task.Supervisor, name: PortBridge.TaskSupervisor}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: PortBridge.Supervisor)
  end
end
