defmodule PortBridge.PoolSessionsTest do
  # Session recovery in a pool: the real worker with its DSPy backend (offline LM).
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool, Sessions}

  reasons = Enum.reject([skip_reason(:nimble_pool), skip_reason(:dspy)], &is_nil/1)
  if reasons != [], do: @moduletag(skip: Enum.join(reasons, "; "))

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

  test "the global LM reaches every worker; global programs follow to the worker that runs them",
       %{pool: pool} do
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

    # Round-robin requests without a session reach both workers; both run the global program.
    pids = for _ <- 1..4, uniq: true, do: ping_pid(pool)
    assert length(pids) == 2

    for _ <- 1..4,
        do:
          assert(
            {:ok, %{"outputs" => %{"label" => _}}} =
              DSPy.execute_program(pool, "global_prog", %{text: "hi"})
          )
  end

  test "deleted programs and ended sessions are not rebuilt", %{pool: pool} do
    build_session(pool, "gone")
    table = Module.concat(pool, Sessions)
    assert %{programs: %{"qa" => _}, lm: %{"model" => "offline"}} = Sessions.record(table, "gone")

    {:ok, _} = DSPy.delete_program(pool, "qa", session_id: "gone")
    assert %{programs: programs} = Sessions.record(table, "gone")
    assert programs == %{}

    {:ok, _} = DSPy.end_session(pool, "gone")
    assert Sessions.record(table, "gone") == nil

    assert {:error, %Error{category: :not_found, code: "unknown_program"}} =
             DSPy.execute_program(pool, "qa", %{question: "x"}, session_id: "gone")
  end

  test "rebuilding a session counts against the request's timeout, not on top of it" do
    pool = start_pool(size: 1)
    build_session(pool, "hurried")
    old_pid = ping_pid(pool, session_id: "hurried")
    kill9(old_pid)
    assert_os_pid_exited(old_pid)
    # A ping without a session rebuilds nothing: wait for the replacement worker
    # (a ping may still meet the dying port once: a communication error).
    wait_until(fn ->
      match?({:ok, %{"pid" => pid}} when pid != old_pid, PortBridge.request(pool, "ping"))
    end)

    # The fresh worker imports DSPy (about a second) before the session can be
    # replayed on it; the request then needs another 1.3 s. Within 1.5 s in all, it
    # can only end in a timeout, and must end by then. (No retry: each retry would
    # get a :timeout of its own.)
    started = System.monotonic_time(:millisecond)
    result = PortBridge.request(pool, "sleep", %{ms: 1300}, session_id: "hurried", timeout: 1_500)

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
    assert {:ok, %{sessions: nil}} = Pool.lookup(pool)
    assert :ets.whereis(Module.concat(pool, Sessions)) == :undefined
  end
end
