defmodule PortBridge.Journal.Local do
  @moduledoc """
  The journal of a `PortBridge.Pool` (see `PortBridge.Journal`): the pool's
  `PortBridge.Records` table, replayed by each Worker on every fresh Python (the
  global scope, and the sessions that hash to that Worker) before anything else
  reaches it, so recovery costs nothing on the request path.

  The global scope must be the same on every Worker (requests without a session go to
  any of them): a change to it runs on the first Worker, then reaches the others.
  """

  @behaviour PortBridge.Journal

  alias PortBridge.{Call, Journal, Records}

  @enforce_keys [:table, :pool, :workers]
  defstruct [:table, :pool, :workers]

  @typedoc "`table`: the Records table; `pool`: the pool's name; `workers`: its Workers' names."
  @type t :: %__MODULE__{table: Records.table(), pool: atom, workers: tuple}

  @impl Journal
  def record(%__MODULE__{} = journal, %Call{session_id: scope} = call, op) do
    Records.change(journal.table, scope, op)
    step = Journal.step(op)

    if scope == nil and step do
      [_first | others] = Tuple.to_list(journal.workers)
      Journal.replicate(others, [step], call)
    end

    :ok
  end

  @impl Journal
  def rebuild(%__MODULE__{table: table} = journal, %Call{session_id: nil} = call) do
    if Records.any?(table, nil),
      do: Journal.replicate(Tuple.to_list(journal.workers), Records.steps(table, nil), call),
      else: :none
  end

  def rebuild(%__MODULE__{table: table} = journal, %Call{session_id: session_id} = call) do
    if Records.any?(table, session_id),
      do: Journal.resend(journal.pool, session_id, Records.steps(table, session_id), call),
      else: :none
  end

  @impl Journal
  def first_worker(%__MODULE__{workers: workers}), do: elem(workers, 0)

  @doc false
  # What a fresh Python of a Worker rebuilds: the global scope and the sessions for
  # which `mine?` holds (the pool knows which sessions a Worker serves).
  @spec replay(t, (String.t() -> boolean)) :: [Records.step()]
  def replay(%__MODULE__{table: table}, mine?), do: Records.steps_where(table, mine?)
end
