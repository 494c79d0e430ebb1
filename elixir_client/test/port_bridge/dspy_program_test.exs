defmodule PortBridge.DSPyProgramTest do
  # `use PortBridge.DSPy.Program` against the real worker and its offline LM (which
  # fills every output with a value of its type): typed results, creation on the
  # Python that serves the call (once per Python and scope), tools, streams, demos
  # from an optimised export; on a Worker and on a Pool, in sessions and globally.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Test}

  alias PortBridge.TestModules.{
    Adder,
    DraftThenAnswer,
    Item,
    QA,
    QAOptimized,
    QAThought,
    Triage,
    TriageProgram
  }

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all do
    # Some runs fail on purpose (scripted answers exhausted): the worker logs only what
    # is worse, so that its stderr stays off the report.
    worker =
      start_supervised!(
        {PortBridge.Worker, dspy_worker_opts(worker_args: ["--log-level", "critical"])}
      )

    {:ok, _} = DSPy.configure_lm(worker, model: "offline")
    %{worker: worker}
  end

  setup do
    %{session: "p-#{System.unique_integer([:positive])}"}
  end

  # A stubbed name that forwards every request to the worker and tells the test
  # which commands it saw: what reaches the wire, in order.
  defp counting(worker) do
    name = :"counting_#{System.unique_integer([:positive])}"
    me = self()

    Test.stub(name, fn command, args, %{session_id: session_id} ->
      send(me, {:sent, command})
      PortBridge.request(worker, command, args, session_id: session_id, timeout: 30_000)
    end)

    name
  end

  defp sent do
    receive do
      {:sent, command} -> [command | sent()]
    after
      0 -> []
    end
  end

  test "run/3 returns the signature's struct, created once per Python and scope", %{
    worker: w,
    session: s
  } do
    target = counting(w)
    inputs = %{ticket: "The app crashes", items: [%Item{sku: "A-1", qty: 2}]}

    assert {:ok, %Triage{} = triage} = TriageProgram.run(target, inputs, session_id: s)
    assert is_boolean(triage.urgent) and triage.category in ["billing", "bug", "other"]
    assert triage.level in [:low, :high] and is_list(triage.tags) and is_map(triage.scores)
    assert sent() == ["execute_program", "create_program", "execute_program"]

    # Found there: nothing but the run itself, however often.
    for _ <- 1..3, do: assert({:ok, %Triage{}} = TriageProgram.run(target, inputs, session_id: s))
    assert sent() == List.duplicate("execute_program", 3)

    # The worker holds the signature with the fields in the order declared.
    {:ok, program} = DSPy.get_program(w, TriageProgram.program_id(), session_id: s)
    assert program["summary"] =~ ~r/^ticket: str, items: list\[Item\] -> urgent: bool, category: /

    # The same definition again is no conflict; another scope gets its own.
    assert :ok = TriageProgram.create(w, session_id: s)
    assert {:ok, %Triage{}} = TriageProgram.run(target, inputs, session_id: s <> "-other")
    assert "create_program" in sent()
  end

  test "the global scope, and a session whose Python lost the program", %{worker: w, session: s} do
    assert {:ok, %QA{answer: answer}} = QAThought.run(w, %{question: "Why?"})
    assert is_binary(answer)

    assert {:ok, %QA{}, %{"outputs" => %{"reasoning" => _}, "usage" => _}} =
             QAThought.execute(w, %{question: "Why?"})

    {:ok, _} = DSPy.configure_lm(w, model: "offline", session_id: s)
    assert {:ok, %QA{}} = QAThought.run(w, %{"question" => "Why?"}, session_id: s)
    {:ok, _} = DSPy.delete_program(w, QAThought.program_id(), session_id: s)
    assert {:ok, %QA{}} = QAThought.run(w, %{question: "Why?"}, session_id: s)
  end

  test "scripted answers, given as the signature's own structs, come back as they were", %{
    worker: w,
    session: s
  } do
    answer = %Triage{
      urgent: true,
      category: "bug",
      tags: ["crash", "upload"],
      level: :high,
      scores: %{"severity" => 0.5},
      item: %Item{sku: "A-1", qty: nil}
    }

    {:ok, _} = DSPy.configure_lm(w, model: "scripted", answers: [answer, answer], session_id: s)
    inputs = %{ticket: "The app crashes", items: []}
    assert {:ok, ^answer} = TriageProgram.run(w, inputs, session_id: s)
    assert {:ok, ^answer} = TriageProgram.run(w, inputs, session_id: s)

    assert {:error, %PortBridge.Error{code: "scripted_answers_exhausted"}} =
             TriageProgram.run(w, inputs, session_id: s)
  end

  test "stream/3 gives the chunks, then the struct; stream!/3 the struct itself", %{
    worker: w,
    session: s
  } do
    items = QAThought.stream(w, %{question: "What is DSPy?"}, session_id: s) |> Enum.to_list()
    {chunks, [last]} = Enum.split_while(items, &match?({:chunk, _}, &1))
    assert chunks != []
    assert {:ok, %QA{answer: answer}} = last
    assert is_binary(answer)

    assert %QA{} = QAThought.stream!(w, %{question: "Again?"}, session_id: s) |> Enum.at(-1)
  end

  test "a ReAct program's tools are Elixir functions, declared at creation", %{
    worker: w,
    session: s
  } do
    Process.register(self(), :adder_test_listener)

    assert {:ok, %QA{answer: answer}, %{"outputs" => %{"trajectory" => trajectory}}} =
             Adder.execute(w, %{question: "add two numbers"}, session_id: s)

    assert_received {:added, a, b}
    assert trajectory["tool_name_0"] == "add" and answer =~ Integer.to_string(a + b)
  end

  test "a Pipeline program whose steps name signature modules", %{worker: w, session: s} do
    assert {:ok, %QA{}, %{"trace" => trace}} =
             DraftThenAnswer.execute(w, %{question: "Why?"}, session_id: s, trace: true)

    assert Enum.map(trace, & &1["step"]) == ["draft", "answer"]
    assert %{"draft" => _} = hd(trace)["outputs"]
  end

  test "demos and instructions come from the optimised export", %{worker: w, session: s} do
    # The offline LM answers a demo's own inputs with the demo's outputs.
    assert {:ok, %QA{answer: "Shakespeare"}} =
             QAOptimized.run(w, %{question: "Who wrote Hamlet?"}, session_id: s)

    {:ok, %{"demos" => 2}} = DSPy.get_program(w, QAOptimized.program_id(), session_id: s)
  end

  test "mistakes in inputs raise at once, naming the program's function", %{worker: w} do
    assert_raise ArgumentError, ~r/TriageProgram.run\/3 takes its inputs as a map.*Map.new/, fn ->
      TriageProgram.run(w, ticket: "x")
    end

    assert_raise ArgumentError, ~r/:tiket is not an input of .*Triage; its inputs are/, fn ->
      TriageProgram.run(w, %{tiket: "x"})
    end

    assert_raise ArgumentError, ~r/unknown option :sesion_id for .*QAThought.run\/3/, fn ->
      QAThought.run(w, %{question: "x"}, sesion_id: "s")
    end
  end

  test "an answer that does not fit the signature is an output_parse error (stubbed)" do
    Test.stub(:triage_stub, fn "execute_program", %{"inputs" => %{"ticket" => _}} ->
      {:ok, %{outputs: %{urgent: "very", category: "bug", tags: [], level: "low", scores: %{}}}}
    end)

    assert {:error,
            %PortBridge.Error{
              category: :output_parse,
              details: %{"path" => "PortBridge.TestModules.Triage.urgent"}
            }} = TriageProgram.run(:triage_stub, %{ticket: "x", items: []})
  end

  test "on a pool: global and session programs, and a Python that dies", %{session: s} do
    pool = :"program_pool_#{System.unique_integer([:positive])}"
    start_supervised!({PortBridge.Pool, dspy_worker_opts(name: pool, size: 2)})
    {:ok, _} = DSPy.configure_lm(pool, model: "offline")

    # Sessionless runs reach both Workers; each finds the program (the pool's journal
    # brought the global program to every Python) or creates it there.
    results = Task.async_stream(1..6, fn i -> QAThought.run(pool, %{question: "q#{i}"}) end)
    assert Enum.all?(results, &match?({:ok, {:ok, %QA{}}}, &1))

    {:ok, _} = DSPy.configure_lm(pool, model: "offline", session_id: s)
    assert {:ok, %QA{}} = QAThought.run(pool, %{question: "first"}, session_id: s)
    kill9(ping_pid(pool, session_id: s))
    assert {:ok, %QA{}} = QAThought.run(pool, %{question: "after"}, session_id: s, retry: true)
  end
end
