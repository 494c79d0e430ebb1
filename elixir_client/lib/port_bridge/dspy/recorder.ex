defmodule PortBridge.DSPy.Recorder do
  @moduledoc false
  # What the DSPy layer does so that sessions outlive their Python processes, and,
  # on a cluster, their nodes.
  #
  # Only this layer knows which commands build state: `configure_lm` (a scope's LM),
  # `configure_embedder` and `create_index` (retrieval: the corpus is recorded and
  # embedded again on replay), and the program commands (`create_program`,
  # `import_program`, `optimize_program`: the program as `export_program` returns it
  # afterwards, definition and learned state); `delete_program`, `delete_index` and
  # `end_session` forget. Each success becomes a change (a PortBridge.Records op) written where the target
  # keeps its records:
  #
  #   * a pool: its PortBridge.Records table; each Worker replays it on every fresh
  #     Python (its :on_ready), so recovery costs nothing on the request path;
  #   * a cluster: the session's owner node and the nodes it would move to (see
  #     PortBridge.Cluster), which rebuild it wherever it moves.
  #
  # The global scope must be the same on every Worker (requests without a session go
  # to any of them): a change to it runs on the (local) pool's first Worker, then
  # reaches the others (on a cluster: the Workers of every node) the same way a
  # replay does.
  #
  # A session the Python worker dropped on its own (idle TTL) is rebuilt on demand:
  # a request that fails because its scope is gone, while the records have it, is
  # replayed and retried once. Everything, follow-ups included, comes out of the
  # request's one :timeout.
  #
  # Targets other than a pool or cluster with recover_sessions (a bare Worker) are
  # passed through untouched.

  require Logger
  alias PortBridge.{Call, Cluster, Error, Pool, Records, Worker}

  @program_commands ~w(create_program import_program optimize_program)
  @state_commands ~w(configure_lm configure_embedder create_index delete_index delete_program) ++
                    @program_commands
  # Without a session these run on the (local) pool's first Worker: the one where a
  # change of the global scope happens first (and is exported from).
  @first_worker_commands ["export_program" | @state_commands]

  @spec run(Call.t()) :: {:ok, term} | {:error, Error.t()}
  def run(%Call{} = call) do
    case store(call) do
      nil ->
        Call.run(call)

      store ->
        result = run(store, call)
        result = rebuild_if_lost(store, call, result)
        with {:ok, value} <- result, do: record(store, call, value)
        result
    end
  end

  # Where a target keeps its records: {:pool, pool}, {:cluster, cluster} or nil.
  defp store(%Call{module: Pool, config: %{records: table} = pool}) when table != nil,
    do: {:pool, pool}

  defp store(%Call{module: Cluster, config: %{records: table} = cluster}) when table != nil,
    do: {:cluster, cluster}

  defp store(_call), do: nil

  # A change of the global scope runs on one Worker, then reaches the others.
  defp run(store, call) do
    if call.session_id == nil and call.command in @first_worker_commands,
      do: Call.run(Call.to(call, Worker, first_worker(store))),
      else: Call.run(call)
  end

  defp local_pool({:pool, pool}), do: pool
  defp local_pool({:cluster, cluster}), do: cluster.pool

  defp first_worker(store), do: hd(Pool.workers(local_pool(store)))

  ## Rebuilding a scope the Python worker dropped

  defp rebuild_if_lost(store, call, {:error, %Error{} = error} = result) do
    scope = call.session_id

    if lost_scope?(error) and rebuild(store, scope, call) == :ok do
      Logger.info(
        "portbridge: #{describe(scope)} was gone from its worker; rebuilt it from the records"
      )

      Call.run(%{call | retry: nil})
    else
      result
    end
  end

  defp rebuild_if_lost(_store, _call, result), do: result

  # What a worker answers when it no longer has a scope the records have.
  defp lost_scope?(%Error{category: :not_found, code: code}),
    do: code in ["unknown_program", "unknown_session", "unknown_index"]

  defp lost_scope?(%Error{code: code})
       when code in ["no_lm_configured", "no_embedder_configured"],
       do: true

  defp lost_scope?(_), do: false

  # :ok when the scope had records and they were sent again. The global scope's go
  # to every Worker of the (local) pool; a session's to its Worker, wherever it is.
  defp rebuild({_kind, %{records: table}} = store, nil, call) do
    if Records.any?(table, nil) do
      workers = Pool.workers(local_pool(store))
      Records.replicate(workers, Records.steps(table, nil), budget(call))
    else
      :none
    end
  end

  defp rebuild({:pool, pool}, scope, call) do
    if Records.any?(pool.records, scope),
      do: Records.rebuild(pool.name, scope, Records.steps(pool.records, scope), budget(call)),
      else: :none
  end

  defp rebuild({:cluster, cluster}, scope, call), do: Cluster.rebuild(cluster, scope, call)

  defp budget(call), do: [timeout: call.timeout, deadline: call.deadline]

  ## Recording

  defp record(store, %Call{command: "end_session"} = call, _value) do
    case call.args["session_id"] || call.session_id do
      nil -> :ok
      session_id -> write(store, session_id, :delete_scope, call)
    end
  end

  defp record(store, call, value) do
    case change(store, call, call.command, call.args, value) do
      nil -> :ok
      op -> write(store, call.session_id, op, call)
    end
  end

  defp change(_store, _call, "configure_lm", args, _value),
    do: {:put, :lm, nil, "configure_lm", args}

  defp change(store, call, command, _args, %{"program_id" => program_id})
       when command in @program_commands and is_binary(program_id) do
    export = Call.derive(call, "export_program", %{"program_id" => program_id})

    case run(store, export) do
      {:ok, %{"program" => program}} ->
        args = %{"program" => program, "program_id" => program_id, "replace" => true}
        {:put, :program, program_id, "import_program", args}

      other ->
        Logger.warning(
          "portbridge: cannot record program #{inspect(program_id)} of #{describe(call.session_id)} " <>
            "for recovery: #{inspect(other, limit: 5)}"
        )

        nil
    end
  end

  defp change(_store, _call, "delete_program", args, _value),
    do: {:delete, :program, args["program_id"]}

  defp change(_store, _call, "configure_embedder", args, _value),
    do: {:put, :embedder, nil, "configure_embedder", args}

  defp change(_store, _call, "create_index", args, %{"index_id" => index_id}) do
    args = Map.merge(args, %{"index_id" => index_id, "replace" => true})
    {:put, :index, index_id, "create_index", args}
  end

  defp change(_store, _call, "delete_index", %{"index_id" => index_id}, _value),
    do: {:delete, :index, index_id}

  defp change(_store, _call, _command, _args, _value), do: nil

  # A change is written where the target keeps its records; one of the global scope
  # also reaches the Workers that did not run it.
  defp write({:pool, pool}, scope, op, call) do
    Records.change(pool.records, scope, op)

    step = Records.step(op)
    if scope == nil and step, do: Records.replicate(tl(Pool.workers(pool)), [step], budget(call))

    :ok
  end

  defp write({:cluster, cluster}, scope, op, call), do: Cluster.record(cluster, scope, op, call)

  defp describe(nil), do: "the global scope"
  defp describe(session_id), do: "session #{inspect(session_id)}"
end
