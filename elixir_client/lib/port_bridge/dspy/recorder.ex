defmodule PortBridge.DSPy.Recorder do
  @moduledoc false
  # What the DSPy layer does so that a pool's sessions outlive its Python processes.
  #
  # Only this layer knows which commands build state: `configure_lm` (a scope's LM),
  # `configure_embedder` and `create_index` (retrieval: the corpus is recorded and
  # embedded again on replay), and the program commands (`create_program`,
  # `import_program`, `optimize_program`: the program as `export_program` returns it
  # afterwards, definition and learned state); `delete_program`, `delete_index` and
  # `end_session` forget. It
  # writes them to the pool's PortBridge.Records; each Worker replays them on every
  # fresh Python (its :on_ready), so recovery costs nothing on the request path.
  #
  # The global scope must be the same on every Worker (requests without a session go
  # to any of them): a change to it runs on the pool's first Worker, then reaches
  # the others the same way a replay does.
  #
  # A session the Python worker dropped on its own (idle TTL) is rebuilt on demand:
  # a request that fails because its scope is gone, while the records have it, is
  # replayed and retried once. Everything, follow-ups included, comes out of the
  # request's one :timeout.
  #
  # Targets other than a pool with recover_sessions (a bare Worker) are passed
  # through untouched.

  require Logger
  alias PortBridge.{Error, Pool, Records, Request, Worker}

  @program_commands ~w(create_program import_program optimize_program)
  @state_commands ~w(configure_lm configure_embedder create_index delete_index delete_program) ++
                    @program_commands

  @spec request(GenServer.server(), String.t(), map, keyword) :: {:ok, term} | {:error, Error.t()}
  def request(target, command, args, opts) do
    case Pool.lookup(target) do
      {:ok, %{records: table} = pool} when table != nil ->
        timeout = Keyword.get(opts, :timeout, pool.timeout)
        opts = Keyword.merge(opts, timeout: timeout, deadline: Request.deadline(timeout))
        scope = opts[:session_id]

        result =
          if scope == nil and command in @state_commands,
            do: Worker.request(first_worker(pool), command, args, opts),
            else: PortBridge.request(target, command, args, opts)

        result = rebuild_if_lost(pool, target, command, args, opts, result)
        with {:ok, value} <- result, do: record(pool, command, args, value, opts)
        result

      _ ->
        PortBridge.request(target, command, args, opts)
    end
  end

  defp first_worker(pool), do: hd(Pool.workers(pool))
  defp other_workers(pool), do: tl(Pool.workers(pool))

  ## Rebuilding a scope the Python worker dropped

  defp rebuild_if_lost(pool, target, command, args, opts, {:error, %Error{} = error} = result) do
    scope = opts[:session_id]

    if lost_scope?(error) and Records.any?(pool.records, scope) do
      Logger.info(
        "portbridge: #{describe(scope)} is gone from its worker; rebuilding it from the records"
      )

      replay(pool, scope, opts)
      PortBridge.request(target, command, args, Keyword.delete(opts, :retry))
    else
      result
    end
  end

  defp rebuild_if_lost(_pool, _target, _command, _args, _opts, result), do: result

  # What a worker answers when it no longer has a scope the records have.
  defp lost_scope?(%Error{category: :not_found, code: code}),
    do: code in ["unknown_program", "unknown_session", "unknown_index"]

  defp lost_scope?(%Error{code: code}) when code in ["no_lm_configured", "no_embedder_configured"],
    do: true
  defp lost_scope?(_), do: false

  # A session's steps go to its Worker (through the pool); the global scope's to
  # every Worker.
  defp replay(pool, nil, opts),
    do: replicate(Pool.workers(pool), Records.steps(pool.records, nil), opts)

  defp replay(pool, scope, opts) do
    for {command, args, step_opts} <- Records.steps(pool.records, scope) do
      Pool.request(pool, command, args, Keyword.merge(opts, step_opts) |> Keyword.delete(:retry))
    end

    :ok
  end

  # Sends `steps` to each of `workers` at once, within the request's deadline.
  defp replicate(workers, steps, opts) do
    step_opts = Keyword.take(opts, [:timeout, :deadline])

    workers
    |> Enum.map(fn worker ->
      Task.async(fn ->
        for {command, args, extra} <- steps do
          case Worker.request(worker, command, args, step_opts ++ extra) do
            {:ok, _} ->
              :ok

            {:error, error} ->
              Logger.warning(
                "portbridge: #{command} did not reach #{inspect(worker)}: #{Exception.message(error)}"
              )
          end
        end
      end)
    end)
    |> Task.await_many(:infinity)

    :ok
  end

  ## Recording

  defp record(pool, "configure_lm", args, _value, opts) do
    scope = opts[:session_id]
    Records.put(pool.records, scope, :lm, nil, "configure_lm", args)
    if scope == nil, do: replicate(other_workers(pool), [{"configure_lm", args, []}], opts)
  end

  defp record(pool, "configure_embedder", args, _value, opts) do
    scope = opts[:session_id]
    Records.put(pool.records, scope, :embedder, nil, "configure_embedder", args)
    if scope == nil, do: replicate(other_workers(pool), [{"configure_embedder", args, []}], opts)
  end

  defp record(pool, "create_index", args, %{"index_id" => index_id}, opts) do
    scope = opts[:session_id]
    args = Map.merge(args, %{"index_id" => index_id, "replace" => true})
    Records.put(pool.records, scope, :index, index_id, "create_index", args)
    if scope == nil, do: replicate(other_workers(pool), [{"create_index", args, []}], opts)
  end

  defp record(pool, "delete_index", %{"index_id" => index_id} = args, _value, opts) do
    scope = opts[:session_id]
    Records.delete(pool.records, scope, :index, index_id)
    if scope == nil, do: replicate(other_workers(pool), [{"delete_index", args, []}], opts)
  end

  defp record(pool, command, _args, %{"program_id" => program_id}, opts)
       when command in @program_commands and is_binary(program_id) do
    scope = opts[:session_id]
    export_opts = Keyword.take(opts, [:session_id, :timeout, :deadline])

    exported =
      if scope == nil,
        do:
          Worker.request(
            first_worker(pool),
            "export_program",
            %{"program_id" => program_id},
            export_opts
          ),
        else: Pool.request(pool, "export_program", %{"program_id" => program_id}, export_opts)

    case exported do
      {:ok, %{"program" => program}} ->
        args = %{"program" => program, "program_id" => program_id, "replace" => true}
        Records.put(pool.records, scope, :program, program_id, "import_program", args)
        if scope == nil, do: replicate(other_workers(pool), [{"import_program", args, []}], opts)

      other ->
        Logger.warning(
          "portbridge: cannot record program #{inspect(program_id)} of #{describe(scope)} " <>
            "for recovery: #{inspect(other, limit: 5)}"
        )
    end
  end

  defp record(pool, "delete_program", args, _value, opts) do
    scope = opts[:session_id]
    program_id = args["program_id"]
    Records.delete(pool.records, scope, :program, program_id)

    if scope == nil,
      do:
        replicate(
          other_workers(pool),
          [{"delete_program", %{"program_id" => program_id}, []}],
          opts
        )
  end

  defp record(pool, "end_session", args, _value, opts) do
    case args["session_id"] || opts[:session_id] do
      nil -> :ok
      session_id -> Records.delete_scope(pool.records, session_id)
    end
  end

  defp record(_pool, _command, _args, _value, _opts), do: :ok

  defp describe(nil), do: "the global scope"
  defp describe(session_id), do: "session #{inspect(session_id)}"
end
