defmodule PortBridge.Sessions do
  @moduledoc """
  What a pool records about each session so it can rebuild it on a fresh worker.

  A worker keeps a session's LM configuration and programs in its memory; when the
  worker dies they are gone. For every scope (a session, or the global scope) the
  pool records, as requests succeed:

    * the arguments of the last `configure_lm`, and
    * each program as `export_program` returns it (definition and learned state:
      demos, instructions) after `create_program`, `import_program` and
      `optimize_program`; `delete_program` forgets it, `end_session` forgets the
      whole session,

  and which workers hold that state. Before a request of a scope runs on a worker
  that does not hold it (a replacement after a crash, another worker for the global
  scope), the recorded state is replayed there: `configure_lm`, then
  `import_program` for each program, under the same program ids. A request that
  fails with `not_found` (a program or session the worker no longer has: its
  session expired) while the record has state is replayed and retried once.

  Not recovered: requests that were in flight when the worker died (their callers
  got a `communication` error), LM call history and token usage (`lm_usage`), the
  DSPy cache, and anything created in ways the client does not see (state set by a
  backend command other than those above). Records live in an ETS table owned by
  the pool: they are lost if the pool itself stops, and API keys given to
  `configure_lm` are kept in memory there so they can be replayed.
  """

  use GenServer
  require Logger

  alias PortBridge.{Channel, Error}

  @program_commands ~w(create_program import_program optimize_program)
  # Workers remembered as holding a scope (older ones are long replaced).
  @max_holders 64

  @doc false
  # The store process owns the table and is registered under the table's name;
  # callers read the table directly and change it through the process, so that
  # concurrent changes to one scope (the global one, from several workers) never
  # overwrite each other.
  def start_link(table), do: GenServer.start_link(__MODULE__, table, name: table)

  @impl true
  def init(table) do
    ^table = :ets.new(table, [:named_table, :protected, :set, read_concurrency: true])
    {:ok, table}
  end

  @impl true
  def handle_call({:update, key, fun}, _from, table) do
    record =
      case :ets.lookup(table, key) do
        [{_, record}] -> record
        [] -> %{lm: nil, programs: %{}, built_on: []}
      end

    :ets.insert(table, {key, fun.(record)})
    {:reply, :ok, table}
  end

  def handle_call({:delete, key}, _from, table) do
    :ets.delete(table, key)
    {:reply, :ok, table}
  end

  @doc "The recorded state of a scope (`nil` for the global scope), or nil."
  @spec record(atom, String.t() | nil) :: map | nil
  def record(table, scope) do
    case :ets.lookup(table, key(scope)) do
      [{_, record}] -> record
      [] -> nil
    end
  end

  defp key(nil), do: :global
  defp key(session_id), do: {:session, session_id}

  @doc """
  Runs one request on a checked-out worker (`channel`), rebuilding its scope there
  first when needed, and records what the request changed. `exchange` is
  `PortBridge.Channel.exchange/4` (or anything with its contract).

  Returns `{result, checkin}` as `exchange` does.
  """
  def run(nil, channel, command, args, opts, exchange),
    do: exchange.(channel, command, args, opts)

  def run(table, channel, command, args, opts, exchange) do
    scope = opts[:session_id]
    command = to_string(command)
    exchange = within_deadline(exchange, Keyword.get(opts, :timeout, :infinity))

    case ensure_scopes(table, scope, channel, opts, exchange) do
      {:ok, :ok} ->
        {result, checkin} = exchange.(channel, command, args, opts)
        after_request(table, scope, channel, command, args, opts, exchange, {result, checkin})

      {:error, error, checkin} ->
        {{:error, error}, checkin}
    end
  end

  # One deadline for all a request does on the worker: rebuilding its scope, the
  # request itself, recording what it changed. Each exchange gets the time left, so
  # a caller never waits past its :timeout because a fresh worker had to be rebuilt.
  defp within_deadline(exchange, :infinity), do: exchange

  defp within_deadline(exchange, timeout) when is_integer(timeout) do
    deadline = Channel.deadline(timeout)

    fn channel, command, args, opts ->
      case Channel.remaining(deadline) do
        0 -> {{:error, deadline_used_up(timeout, command)}, :ok}
        left -> exchange.(channel, command, args, Keyword.put(opts, :timeout, left))
      end
    end
  end

  defp deadline_used_up(timeout, command) do
    Error.new(
      :timeout,
      "receive_timeout",
      "the request's :timeout (#{timeout} ms) ran out before #{command} could be sent: " <>
        "rebuilding its session on a fresh worker took the rest (pass a larger :timeout)",
      %{"timeout_ms" => timeout, "step" => command}
    )
  end

  defp after_request(table, scope, channel, command, args, opts, exchange, {result, checkin}) do
    case result do
      {:ok, value} ->
        record_change(table, scope, channel, command, args, value, opts, exchange)
        {result, checkin}

      {:error, %Error{} = error} when checkin == :ok ->
        # The worker lost the scope (its session expired): rebuild it once, retry once.
        if lost_scope?(error) and has_state?(record(table, scope)) do
          mark_stale(table, scope)

          case ensure_scopes(table, scope, channel, opts, exchange) do
            {:ok, :ok} -> exchange.(channel, command, args, opts)
            {:error, _error, checkin} -> {result, checkin}
          end
        else
          {result, checkin}
        end

      _ ->
        {result, checkin}
    end
  end

  # What a worker answers when it no longer has a scope the record has.
  defp lost_scope?(%Error{category: :not_found, code: code}),
    do: code in ["unknown_program", "unknown_session"]

  defp lost_scope?(%Error{code: "no_lm_configured"}), do: true
  defp lost_scope?(_), do: false

  ## Rebuilding

  # A session without its own LM uses the global one: build the global scope on the
  # worker first, then the session's.
  defp ensure_scopes(table, nil, channel, opts, exchange),
    do: ensure_built(table, nil, channel, opts, exchange)

  defp ensure_scopes(table, scope, channel, opts, exchange) do
    with {:ok, :ok} <-
           ensure_built(table, nil, channel, Keyword.delete(opts, :session_id), exchange) do
      ensure_built(table, scope, channel, opts, exchange)
    end
  end

  defp ensure_built(table, scope, channel, opts, exchange) do
    record = record(table, scope)

    if has_state?(record) and channel.port not in record.built_on do
      replay(table, scope, record, channel, opts, exchange)
    else
      {:ok, :ok}
    end
  end

  defp has_state?(nil), do: false
  defp has_state?(record), do: record.lm != nil or map_size(record.programs) > 0

  defp replay(table, scope, record, channel, opts, exchange) do
    steps =
      if(record.lm, do: [{"configure_lm", record.lm}], else: []) ++
        for {program_id, program} <- Enum.sort(record.programs),
            do:
              {"import_program",
               %{"program" => program, "program_id" => program_id, "replace" => true}}

    replay_opts = Keyword.take(opts, [:session_id, :timeout])

    result =
      Enum.reduce_while(steps, :ok, fn {command, args}, :ok ->
        case exchange.(channel, command, args, replay_opts) do
          {{:ok, _}, :ok} -> {:cont, :ok}
          {{:ok, _}, checkin} -> {:halt, {:error, command, nil, checkin}}
          {{:error, error}, checkin} -> {:halt, {:error, command, error, checkin}}
        end
      end)

    case result do
      :ok ->
        update(table, scope, fn record ->
          %{record | built_on: Enum.take([channel.port | record.built_on], @max_holders)}
        end)

        Logger.info(
          "portbridge: rebuilt #{describe(scope)} on worker #{channel.os_pid} (#{length(steps)} steps)"
        )

        {:ok, :ok}

      {:error, command, error, checkin} ->
        {:error, recovery_failed(scope, command, error), checkin}
    end
  end

  defp recovery_failed(scope, command, error) do
    base = error || Error.new(:communication, "worker_lost", "the worker was lost")

    %{
      base
      | code: "session_recovery_failed",
        message:
          "could not rebuild #{describe(scope)} on a fresh worker: #{command} failed: #{base.message}",
        details:
          Map.merge(base.details, %{
            "session_id" => scope,
            "step" => command,
            "cause_code" => base.code
          })
    }
  end

  defp describe(nil), do: "the global scope"
  defp describe(session_id), do: "session #{inspect(session_id)}"

  ## Recording

  defp record_change(table, scope, channel, "configure_lm", args, _result, _opts, _exchange) do
    changed(table, scope, channel, fn record -> %{record | lm: args} end)
  end

  defp record_change(table, scope, channel, command, _args, result, opts, exchange)
       when command in @program_commands do
    with %{"program_id" => program_id} <- result,
         {{:ok, %{"program" => program}}, _} <-
           exchange.(
             channel,
             "export_program",
             %{"program_id" => program_id},
             Keyword.take(opts, [:session_id, :timeout])
           ) do
      changed(table, scope, channel, fn record ->
        %{record | programs: Map.put(record.programs, program_id, program)}
      end)
    else
      other ->
        Logger.warning(
          "portbridge: cannot record the program of #{command} in #{describe(scope)} for recovery: #{inspect(other, limit: 5)}"
        )
    end
  end

  defp record_change(table, scope, channel, "delete_program", args, _result, _opts, _exchange) do
    program_id = args["program_id"] || args[:program_id]

    changed(table, scope, channel, fn record ->
      %{record | programs: Map.delete(record.programs, program_id)}
    end)
  end

  defp record_change(table, scope, _channel, "end_session", args, _result, _opts, _exchange) do
    case args["session_id"] || args[:session_id] || scope do
      nil -> :ok
      session_id -> GenServer.call(table, {:delete, key(session_id)})
    end
  end

  defp record_change(_table, _scope, _channel, _command, _args, _result, _opts, _exchange),
    do: :ok

  # A change made on `channel`'s worker: the other workers that held the scope are stale.
  defp changed(table, scope, channel, fun) do
    update(table, scope, fn record -> %{fun.(record) | built_on: [channel.port]} end)
  end

  defp mark_stale(table, scope),
    do: update(table, scope, fn record -> %{record | built_on: []} end)

  defp update(table, scope, fun), do: GenServer.call(table, {:update, key(scope), fun})
end
