defmodule PortBridge.DSPy.Recorder do
  @moduledoc false
  # What the DSPy layer knows about its own state, and gives to the target's journal
  # (PortBridge.Journal) so that sessions outlive their Python processes, and, on a
  # cluster, their nodes.
  #
  # Which commands build state is data, below: `configure_lm` (a scope's LM),
  # `configure_embedder` and `create_index` (retrieval: the corpus is recorded and
  # embedded again on replay), and the program commands (`create_program`,
  # `import_program`, `optimize_program`: the program as `export_program` returns it
  # afterwards, definition and learned state); `delete_program`, `delete_index` and
  # `end_session` forget. A scope's pieces are kept in this order (the LM before the
  # programs that use it).
  #
  # A session the Python worker dropped on its own (idle TTL) is rebuilt on demand: a
  # request that fails because its scope is gone, while the journal has it, is
  # rebuilt and retried once. Everything, follow-ups included, comes out of the
  # call's one deadline.

  require Logger
  alias PortBridge.{Call, Error, Worker}

  # kind => its place among a scope's records.
  @order %{lm: 0, embedder: 1, index: 2, program: 3}
  @program_commands ~w(create_program import_program optimize_program)
  @state_commands ~w(configure_lm configure_embedder create_index delete_index delete_program) ++
                    @program_commands
  # Without a session these run on the journal's first Worker: the one where a change
  # of the global scope happens first (and is exported from).
  @first_worker_commands ["export_program" | @state_commands]
  # What a worker answers when it no longer has a scope the records have.
  @lost_codes ~w(unknown_program unknown_session unknown_index no_lm_configured no_embedder_configured)

  @spec run(Call.t()) :: {:ok, term} | {:error, Error.t()}
  def run(%Call{} = call) do
    case call.module.journal(call.config) do
      nil ->
        Call.run(call)

      journal ->
        result = run(journal, call)
        result = rebuild_if_lost(journal, call, result)
        with {:ok, value} <- result, do: record(journal, call, value)
        result
    end
  end

  # A change of the global scope runs on one Worker (the journal brings the others).
  defp run({module, journal}, call) do
    if call.session_id == nil and call.command in @first_worker_commands,
      do: Call.run(Call.to(call, Worker, module.first_worker(journal))),
      else: Call.run(call)
  end

  defp rebuild_if_lost({module, journal}, call, {:error, %Error{code: code}} = result)
       when code in @lost_codes do
    if module.rebuild(journal, call) == :ok do
      Logger.info(
        "portbridge: #{describe(call.session_id)} was gone from its worker; rebuilt it from the records",
        log_metadata(call)
      )

      Call.run(%{call | retry: nil})
    else
      result
    end
  end

  defp rebuild_if_lost(_journal, _call, result), do: result

  ## Recording

  # end_session forgets the session it names.
  defp record({module, journal}, %Call{command: "end_session"} = call, _value) do
    case call.args["session_id"] || call.session_id do
      nil -> :ok
      session_id -> module.record(journal, %{call | session_id: session_id}, :delete_scope)
    end
  end

  defp record({module, journal} = at, call, value) do
    case change(at, call, value) do
      nil -> :ok
      op -> module.record(journal, call, op)
    end
  end

  # The change a successful call makes to its scope's records (a Records op), or nil.
  defp change(_at, %Call{command: "configure_lm", args: args}, _value),
    do: {:put, key(:lm, nil), {"configure_lm", args}}

  defp change(_at, %Call{command: "configure_embedder", args: args}, _value),
    do: {:put, key(:embedder, nil), {"configure_embedder", args}}

  defp change(_at, %Call{command: "create_index", args: args}, %{"index_id" => id}) do
    args = Map.merge(args, %{"index_id" => id, "replace" => true})
    {:put, key(:index, id), {"create_index", args}}
  end

  defp change(_at, %Call{command: "delete_index", args: %{"index_id" => id}}, _value),
    do: {:delete, key(:index, id), {"delete_index", %{"index_id" => id}}}

  defp change(_at, %Call{command: "delete_program", args: args}, _value) do
    id = args["program_id"]
    {:delete, key(:program, id), {"delete_program", %{"program_id" => id}}}
  end

  defp change(at, %Call{command: command} = call, %{"program_id" => id})
       when command in @program_commands and is_binary(id) do
    case run(at, Call.derive(call, "export_program", %{"program_id" => id})) do
      {:ok, %{"program" => program}} ->
        args = %{"program" => program, "program_id" => id, "replace" => true}
        {:put, key(:program, id), {"import_program", args}}

      other ->
        Logger.warning(
          "portbridge: cannot record program #{inspect(id)} of #{describe(call.session_id)} " <>
            "for recovery: #{inspect(other, limit: 5)}",
          log_metadata(call)
        )

        nil
    end
  end

  defp change(_at, _call, _value), do: nil

  defp key(kind, item), do: {Map.fetch!(@order, kind), item}

  # Logged from the caller's process: the pool (or cluster) it named, and the session.
  defp log_metadata(call) do
    target = if is_atom(call.target), do: [portbridge_pool: call.target], else: []
    [portbridge_session_id: call.session_id] ++ target
  end

  defp describe(nil), do: "the global scope"
  defp describe(session_id), do: "session #{inspect(session_id)}"
end
