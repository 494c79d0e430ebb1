defmodule PortBridge.Cluster.Rpc do
  @moduledoc false
  # Questions between the processes of a cluster's members (PortBridge.Cluster.Membership,
  # PortBridge.Cluster.Replication), on any node. Neither side ever blocks on the other:
  # questions and answers go by PortBridge.Courier, and the asker keeps the deadline
  # of the call it asks for. A question reaches the process as `{:ask, from, request}`,
  # where `request` has the budget in ms appended; it answers with `answer/2`.

  alias PortBridge.{Call, Courier, Error, Request}

  @doc false
  # Asks `process` (a registered name) on `node`: its answer, or {:error, %Error{}}
  # (timeout at the call's deadline, or communication when nobody is there).
  @spec ask(atom, node, tuple, Call.t()) :: term | {:error, Error.t()}
  def ask(process, node, request, %Call{timeout: timeout, deadline: deadline}) do
    budget = Request.remaining(deadline)
    dest = {process, node}
    ref = :erlang.monitor(:process, dest, alias: :demonitor)

    Courier.deliver(dest, {:ask, ref, Tuple.append(request, budget)})

    receive do
      {^ref, answer} ->
        Process.demonitor(ref, [:flush])
        answer

      {:DOWN, ^ref, _, _, reason} ->
        {:error, unreachable(process, node, reason)}
    after
      budget ->
        Process.demonitor(ref, [:flush])
        {:error, Request.timeout_error(timeout)}
    end
  end

  @doc false
  @spec answer(reference, term) :: :ok
  def answer(from, answer), do: Courier.deliver(from, {from, answer})

  defp unreachable(process, node, reason) do
    Error.new(
      :communication,
      "member_unreachable",
      "#{inspect(process)} on #{node} did not answer: #{inspect(reason)}",
      %{"node" => Atom.to_string(node), "reason" => inspect(reason)}
    )
  end
end
