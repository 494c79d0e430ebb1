defmodule PortBridge.Journal do
  @moduledoc """
  Where a target keeps the recorded state of its sessions, and how that state reaches
  its Pythons: the one home of session recovery.

  A Python worker keeps a session's LM configuration and programs in memory; when it
  dies they are gone. The layer that knows which commands build state (the DSPy layer,
  `PortBridge.DSPy.Recorder`) turns each success into a change (`t:PortBridge.Records.op/0`)
  and hands it to the target's journal, which keeps it (`PortBridge.Records`) and brings
  Pythons up to date:

    * `PortBridge.Journal.Local` - a pool's: its Workers replay the records on every
      fresh Python before anything else reaches it.
    * `PortBridge.Journal.Cluster` - a cluster's: a session's records live on its owner
      node and the next ones in its ranking, and follow it when it moves.

  A target says which journal it has through `c:PortBridge.Target.journal/1`.
  """

  alias PortBridge.{Call, Error, Records}
  require Logger

  @doc """
  Keeps `op`, a change of the scope of `call` (its session, or the global scope) that
  `call` made. A change of the global scope also reaches the Workers that did not run it.
  """
  @callback record(journal :: term, Call.t(), Records.op()) :: :ok

  @doc """
  Sends the recorded state of the scope of `call` again to the Python that serves it
  (that Python dropped it): `:ok`, `:none` when nothing is recorded, or an error.
  """
  @callback rebuild(journal :: term, Call.t()) :: :ok | :none | {:error, Error.t()}

  @doc "The Worker on which a change of the global scope runs first."
  @callback first_worker(journal :: term) :: GenServer.server()

  ## What the journals share

  @doc false
  # Sends `steps` to each of `workers` at once, within the budget of `call`; a step that
  # fails is logged, and the others still go.
  @spec replicate([GenServer.server()], [Records.step()], Call.t()) :: :ok
  def replicate(workers, steps, %Call{} = call) do
    workers
    |> Enum.map(fn worker ->
      Task.async(fn ->
        for {command, args, opts} <- steps do
          step =
            Call.new(
              worker,
              command,
              args,
              [timeout: call.timeout, deadline: call.deadline] ++ opts
            )

          case Call.run(step) do
            {:ok, _} ->
              :ok

            {:error, error} ->
              Logger.warning(
                "portbridge: #{command} did not reach #{inspect(worker)}: #{Exception.message(error)}",
                portbridge_worker: worker,
                portbridge_session_id: opts[:session_id]
              )
          end
        end
      end)
    end)
    |> Task.await_many(:infinity)

    :ok
  end

  @doc false
  # Sends a session's `steps`, in order, to `target` (a pool, which routes them to the
  # session's Worker) within the budget of `call`: :ok, or the first error (the steps
  # after it are not sent).
  @spec resend(term, String.t(), [Records.step()], Call.t()) :: :ok | {:error, Error.t()}
  def resend(target, session_id, steps, %Call{} = call) do
    opts = [timeout: call.timeout, deadline: call.deadline, session_id: session_id]

    Enum.reduce_while(steps, :ok, fn {command, args, _}, :ok ->
      case Call.run(Call.new(target, command, args, opts)) do
        {:ok, _} -> {:cont, :ok}
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  @doc false
  # The request that brings a Worker that already has a scope's earlier state up to
  # date with `op` (what a change of the global scope sends to the other Workers).
  @spec step(Records.op()) :: Records.step() | nil
  def step({:put, _key, {command, args}}), do: {command, args, []}
  def step({:delete, _key, {command, args}}), do: {command, args, []}
  def step(_op), do: nil
end
