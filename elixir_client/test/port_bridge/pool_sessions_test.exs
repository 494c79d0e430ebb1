defmodule PortBridge.PoolSessionsTest do
  # Session recovery in a pool: the real worker with its DSPy backend (offline LM).
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool, Records}

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  # Each worker imports DSPy (~1-2 s of CPU): the tests share one pool of two
  # workers (each uses its own sessions) unless they need other worker options.
  setup_all do
    %{pool: start_pool(size: 2)}
  end

  defp start_pool(opts) do
    name = :"dspy_pool_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, [name: name] ++ dspy_worker_opts(opts)}, id: name)
    name
  end

  @trainset for {q, a} <- [{"1 + 1?", "2"}, {"2 + 2?", "4"}],
                do: %{inputs: %{question: q}, outputs: %{answer: a}}

  defp build_session(pool, session) do
    {:ok, _} = DSPy.configure_lm(pool, model: "offline", session_id: session)

    {:ok, _} =
      DSPy.create_program(pool,
        signature: "question -> answer",
        module: "ChainOfThought",
        program_id: "qa",
        session_id: session
      )

    {:ok, %{"demos" => 2}} =
      DSPy.optimize_program(pool, "qa",
        optimizer: "LabeledFewShot",
        trainset: @trainset,
        session_id: session
      )

    {:ok, %{"outputs" => outputs}} =
      DSPy.execute_program(pool, "qa", %{question: "7 + 1?"}, session_id: session)

    outputs
  end

  test "a session survives the death of its worker: LM, program and learned demos are rebuilt", %{
    pool: pool
  } do
    outputs = build_session(pool, "survivor")
    old_pid = ping_pid(pool, session_id: "survivor")

    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    # retry: true covers the race where the dying port is handed out once more.
    assert {:ok, %{"outputs" => ^outputs}} =
             DSPy.execute_program(pool, "qa", %{question: "7 + 1?"},
               session_id: "survivor",
               retry: true
             )

    assert ping_pid(pool, session_id: "survivor") != old_pid

    assert {:ok, %{"demos" => 2, "module" => "ChainOfThought"}} =
             DSPy.get_program(pool, "qa", session_id: "survivor")
  end

  test "a session the worker dropped (idle TTL) is rebuilt on its next request" do
    pool = start_pool(size: 1, worker_args: ["--session-ttl", "0.2"])
    outputs = build_session(pool, "idle")

    # Wait (with a deadline) until the worker has expired the session.
    wait_until(fn ->
      {:ok, %{"sessions" => sessions}} = PortBridge.request(pool, "list_sessions")
      not Enum.any?(sessions, &(&1["session_id"] == "idle"))
    end)

    assert {:ok, %{"outputs" => ^outputs}} =
             DSPy.execute_program(pool, "qa", %{question: "7 + 1?"}, session_id: "idle")
  end

  test "the global LM and global programs are on every worker", %{pool: pool} do
    {:ok, _} = DSPy.configure_lm(pool, model: "offline")
    {:ok, _} = DSPy.create_program(pool, signature: "text -> label", program_id: "global_prog")

    # Sessions on both shards use the global LM without configuring one.
    sessions =
      Enum.uniq_by(for(i <- 1..20, do: "global-user-#{i}"), &Pool.shard_for(pool, &1))
      |> Enum.take(2)

    assert length(sessions) == 2

    for session <- sessions do
      {:ok, _} =
        DSPy.create_program(pool, signature: "q -> a", program_id: "p", session_id: session)

      assert {:ok, %{"model" => "offline"}} =
               DSPy.execute_program(pool, "p", %{q: "x"}, session_id: session)
    end

    # A request without a session may reach any worker: each runs the global program.
    workers = for %{name: name} <- Pool.info(pool), do: name
    assert length(workers) == 2

    for worker <- workers do
      assert {:ok, %{"outputs" => %{"label" => _}}} =
               PortBridge.Worker.request(worker, "execute_program", %{
                 program_id: "global_prog",
                 inputs: %{text: "hi"}
               })
    end

    assert {:ok, %{"outputs" => %{"label" => _}}} =
             DSPy.execute_program(pool, "global_prog", %{text: "hi"})
  end

  test "deleted programs and ended sessions are not rebuilt", %{pool: pool} do
    build_session(pool, "gone")
    table = Module.concat(pool, Records)

    assert [
             {"configure_lm", %{"model" => "offline"}, _},
             {"import_program", %{"program_id" => "qa"}, _}
           ] = Records.steps(table, "gone")

    {:ok, _} = DSPy.delete_program(pool, "qa", session_id: "gone")
    assert [{"configure_lm", _, _}] = Records.steps(table, "gone")

    {:ok, _} = DSPy.end_session(pool, "gone")
    assert Records.steps(table, "gone") == []

    assert {:error, %Error{category: :not_found, code: "unknown_program"}} =
             DSPy.execute_program(pool, "qa", %{question: "x"}, session_id: "gone")
  end

  test "a fresh Python is rebuilt once, when it is ready, not on every request" do
    pool = start_pool(size: 1)
    build_session(pool, "once")
    old_pid = ping_pid(pool, session_id: "once")
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    for _ <- 1..5 do
      assert {:ok, _} =
               DSPy.execute_program(pool, "qa", %{question: "7 + 1?"},
                 session_id: "once",
                 retry: true
               )
    end

    {:ok, %{"requests" => requests}} = PortBridge.request(pool, "stats", %{}, retry: true)
    assert requests["configure_lm"] == 1
    assert requests["import_program"] == 1
    assert requests["execute_program"] == 5
  end

  test "records survive the death of the process that owns them (issue 10, defect 7)" do
    pool = start_pool(size: 1)
    outputs = build_session(pool, "kept")
    [owner] = records_owner(pool)
    Process.exit(owner, :kill)
    wait_until(fn -> match?([new] when new != owner, records_owner(pool)) end)

    old_pid = ping_pid(pool, session_id: "kept")
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    assert {:ok, %{"outputs" => ^outputs}} =
             DSPy.execute_program(pool, "qa", %{question: "7 + 1?"},
               session_id: "kept",
               retry: true
             )
  end

  test "a stuck records process holds no request up (issue 10, defect 6)" do
    pool = start_pool(size: 1)
    build_session(pool, "unblocked")
    [owner] = records_owner(pool)
    :sys.suspend(owner)

    try do
      {elapsed_us, result} =
        :timer.tc(fn ->
          DSPy.create_program(pool,
            signature: "q -> a",
            program_id: "more",
            session_id: "unblocked",
            timeout: 5_000
          )
        end)

      assert {:ok, %{"program_id" => "more"}} = result
      assert elapsed_us < 5_000_000
    after
      :sys.resume(owner)
    end
  end

  test "a pool started again under the same name starts clean: boot code runs again" do
    name = :"dspy_pool_#{System.unique_integer([:positive])}"
    spec = {Pool, [name: name, size: 1] ++ dspy_worker_opts()}

    boot = fn ->
      {:ok, _} = DSPy.configure_lm(name, model: "offline", session_id: "boot")

      DSPy.create_program(name,
        signature: "question -> answer",
        program_id: "boot_qa",
        session_id: "boot"
      )
    end

    start_supervised!(spec, id: name)
    assert {:ok, %{"program_id" => "boot_qa"}} = boot.()
    stop_supervised!(name)

    start_supervised!(spec, id: name)
    assert Records.steps(Module.concat(name, Records), "boot") == []
    # Nothing of the previous pool's: creating the program again is no program_exists.
    assert {:ok, %{"program_id" => "boot_qa"}} = boot.()
  end

  test "adopt_records: true takes the previous pool's records and replays them" do
    name = :"dspy_pool_#{System.unique_integer([:positive])}"
    opts = [name: name, size: 1] ++ dspy_worker_opts()
    start_supervised!({Pool, opts}, id: name)
    outputs = build_session(name, "adopted")
    stop_supervised!(name)

    start_supervised!({Pool, [adopt_records: true] ++ opts}, id: name)

    assert [{"configure_lm", _, _}, {"import_program", _, _}] =
             Records.steps(Module.concat(name, Records), "adopted")

    assert {:ok, %{"outputs" => ^outputs}} =
             DSPy.execute_program(name, "qa", %{question: "7 + 1?"}, session_id: "adopted")
  end

  # The process that owns the pool's records table (its supervisor's child).
  defp records_owner(pool) do
    for {Records, pid, _, _} <- Supervisor.which_children(Module.concat(pool, Supervisor)),
        is_pid(pid),
        do: pid
  end

  test "rebuilding a session counts against the request's timeout, not on top of it" do
    pool = start_pool(size: 1)
    build_session(pool, "hurried")
    old_pid = ping_pid(pool, session_id: "hurried")
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    # Sent at once, the request waits for the fresh Python, which imports DSPy
    # (about a second) and replays the session before the request reaches it; the
    # request then needs another 1.3 s. Within 1.5 s in all, it can only end in a
    # timeout, and must end by then. (retry: true stays within the one budget.)
    started = System.monotonic_time(:millisecond)

    result =
      PortBridge.request(pool, "sleep", %{ms: 1300},
        session_id: "hurried",
        timeout: 1_500,
        retry: true
      )

    elapsed = System.monotonic_time(:millisecond) - started
    assert {:error, %Error{category: :timeout}} = result
    assert elapsed < 1_500 + 400, "the request took #{elapsed} ms"

    # The session is intact for the next, unhurried request.
    assert {:ok, %{"outputs" => _}} =
             DSPy.execute_program(pool, "qa", %{question: "7 + 1?"}, session_id: "hurried")
  end

  test "recover_sessions: false records nothing" do
    pool = start_pool(size: 1, recover_sessions: false)
    build_session(pool, "unrecorded")
    assert {:ok, %{records: nil}} = Pool.lookup(pool)
    assert :ets.whereis(Module.concat(pool, Records)) == :undefined
  end
end
