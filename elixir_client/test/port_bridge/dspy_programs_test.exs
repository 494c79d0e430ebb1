defmodule PortBridge.DSPyProgramsTest do
  # A dspy.Module the worker's operator exposed (bridge.sdk's @program, in
  # test/support/python/pb_programs.py), driven from Elixir through a real pool:
  # created by name with an `init` (DSPy.create_program, whose options come from the
  # worker's schemas), run with an Elixir callback and progress events, optimised, and
  # rebuilt on a fresh Python from the pool's records (export -> import).
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool}

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @python_path Path.expand("../support/python", __DIR__)

  setup_all do
    name = :"programs_pool_#{System.unique_integer([:positive])}"

    opts =
      dspy_worker_opts(
        worker_args: ["--expose", "pb_programs"],
        env: %{"PYTHONPATH" => @python_path}
      )

    start_supervised!({Pool, [name: name, size: 1] ++ opts}, id: name)
    %{pool: name}
  end

  defp search(%{"query" => query}), do: ["a passage about #{query}"]

  defp run(pool, session, question) do
    me = self()

    DSPy.execute_program(pool, "mh", %{question: question},
      session_id: session,
      callbacks: %{"search" => &search/1},
      on_event: fn event -> send(me, {:event, event}) end
    )
  end

  test "an exposed dspy.Module runs with its init, Elixir callbacks and progress, and survives its Python",
       %{pool: pool} do
    session = "multi-hop"
    {:ok, _} = DSPy.configure_lm(pool, model: "offline", session_id: session)

    # Recorded by PortBridge.DSPy: the program as export_program returns it (module, init, demos).
    assert {:ok,
            %{
              "module" => "pb_programs.MultiHop",
              "init" => %{"hops" => 3},
              "predictors" => predictors
            }} =
             DSPy.create_program(pool,
               module: "pb_programs.MultiHop",
               init: %{hops: 3},
               program_id: "mh",
               session_id: session
             )

    assert predictors == ["generate_query.predict", "generate_answer.predict"]

    assert {:ok, %{"outputs" => %{"answer" => _, "reasoning" => _}}} =
             run(pool, session, "Who wrote DSPy?")

    for hop <- 1..3, do: assert_received({:event, {"progress", %{"done" => ^hop, "total" => 3}}})

    trainset = for i <- 1..2, do: %{inputs: %{question: "Q#{i}?"}, outputs: %{answer: "A#{i}"}}

    assert {:ok, %{"demos" => 4}} =
             DSPy.optimize_program(pool, "mh",
               optimizer: "LabeledFewShot",
               trainset: trainset,
               session_id: session
             )

    {:ok, %{"outputs" => outputs}} = run(pool, session, "Who wrote DSPy?")
    old_pid = ping_pid(pool, session_id: session)
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    # A fresh Python that exposes the same module gets the program back, learned demos included.
    assert {:ok, %{"outputs" => ^outputs}} =
             DSPy.execute_program(pool, "mh", %{question: "Who wrote DSPy?"},
               session_id: session,
               callbacks: %{"search" => &search/1},
               retry: true
             )

    assert ping_pid(pool, session_id: session) != old_pid

    assert {:ok, %{"module" => "pb_programs.MultiHop", "init" => %{"hops" => 3}, "demos" => 4}} =
             DSPy.get_program(pool, "mh", session_id: session)
  end

  test "init and inputs are checked against the hints; a class nobody exposed is not found", %{
    pool: pool
  } do
    session = "checks"

    assert {:error,
            %PortBridge.Error{category: :validation, details: %{"path" => "args.init.hops"}}} =
             DSPy.create_program(pool,
               module: "pb_programs.MultiHop",
               init: %{hops: "two"},
               session_id: session
             )

    assert {:error, %PortBridge.Error{category: :not_found, code: "unknown_module"}} =
             DSPy.create_program(pool,
               module: "pb_test_backend.ElixirTestBackend",
               session_id: session
             )

    # The wire command as PortBridge.DSPy sends it, for any client.
    {:ok, _} =
      PortBridge.request(
        pool,
        "create_program",
        %{module: "pb_programs.MultiHop", program_id: "mh"},
        session_id: session
      )

    assert {:error,
            %PortBridge.Error{category: :validation, details: %{"path" => "args.inputs.question"}}} =
             DSPy.execute_program(pool, "mh", %{question: 42}, session_id: session)
  end
end
