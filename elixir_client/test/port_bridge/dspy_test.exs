defmodule PortBridge.DSPyTest do
  # PortBridge.DSPy end to end: the real worker, its real DSPy backend, the built-in
  # offline LM (deterministic, no network).
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all :start_dspy_worker

  setup :offline_session

  test "the moduledoc's example runs as written" do
    {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(DSPy)
    [example] = Regex.run(~r/```elixir\n(.*?)```/s, moduledoc, capture: :all_but_first)
    assert {_, _} = Code.eval_string(example)
  end

  test "a typed signature gives typed outputs", %{worker: worker, session: s} do
    signature = %{
      name: "Sizing",
      instructions: "Estimate the size of the thing.",
      inputs: %{thing: %{type: "str", desc: "what to size"}},
      outputs: %{
        size_cm: %{type: "int"},
        unit: %{literal: ["cm", "m"]},
        tags: %{type: "list[str]"}
      }
    }

    assert {:ok, %{"program_id" => id, "summary" => summary}} =
             DSPy.create_program(worker, signature: signature, session_id: s)

    assert summary =~ "size_cm: int"

    assert {:ok, %{"outputs" => outputs, "usage" => %{"offline" => %{"lm_calls" => 1}}}} =
             DSPy.execute_program(worker, id, %{thing: "a cat"}, session_id: s)

    assert %{"size_cm" => size, "unit" => unit, "tags" => tags} = outputs
    assert is_integer(size) and unit in ["cm", "m"] and is_list(tags)
  end

  test "streaming gives chunks, in order, then the result", %{worker: worker, session: s} do
    {:ok, _} =
      DSPy.create_program(worker, signature: "question -> answer", program_id: "qa", session_id: s)

    items =
      worker
      |> DSPy.stream("qa", %{question: "What is the capital of France?"}, session_id: s)
      |> Enum.to_list()

    {chunks, [{:ok, %{"outputs" => %{"answer" => answer}}}]} =
      Enum.split_while(items, &match?({:chunk, _}, &1))

    assert length(chunks) > 1

    assert chunks
           |> Enum.filter(&match?({:chunk, %{"field" => "answer"}}, &1))
           |> Enum.map_join(fn {:chunk, c} -> c["text"] end) =~ answer
  end

  test "optimisation reports progress; the program keeps its demos through export and import", %{
    worker: worker,
    session: s
  } do
    {:ok, _} =
      DSPy.create_program(worker, signature: "question -> answer", program_id: "qa", session_id: s)

    me = self()

    trainset =
      for {q, a} <- [{"1 + 1?", "2"}, {"2 + 2?", "4"}, {"3 + 3?", "6"}],
          do: %{inputs: %{question: q}, outputs: %{answer: a}}

    assert {:ok, %{"program_id" => "qa", "demos" => 3}} =
             DSPy.optimize_program(worker, "qa",
               optimizer: "LabeledFewShot",
               trainset: trainset,
               session_id: s,
               on_event: &send(me, &1)
             )

    assert_received {"progress", %{"done" => 0, "total" => 3}}
    assert_received {"progress", %{"done" => 3, "demos" => 3}}

    {:ok, program} = DSPy.export_program(worker, "qa", session_id: s)

    assert %{"format" => "portbridge.dspy.program", "state" => %{"predictors" => predictors}} =
             program

    assert [%{"demos" => [_, _, _]}] = Map.values(predictors)
    refute inspect(program) =~ "api_key"

    other = s <> "-copy"
    {:ok, _} = DSPy.configure_lm(worker, model: "offline", session_id: other)

    assert {:ok, %{"program_id" => "copy", "demos" => 3}} =
             DSPy.import_program(worker, program, program_id: "copy", session_id: other)

    {:ok, %{"outputs" => a}} =
      DSPy.execute_program(worker, "qa", %{question: "5 + 5?"}, session_id: s)

    {:ok, %{"outputs" => b}} =
      DSPy.execute_program(worker, "copy", %{question: "5 + 5?"}, session_id: other)

    assert a == b
  end

  test "programs belong to their session; list, get, delete, usage, end_session", %{
    worker: worker,
    session: s
  } do
    {:ok, %{"program_id" => id}} =
      DSPy.create_program(worker, signature: "text -> summary", session_id: s)

    assert {:ok, [%{"program_id" => ^id}]} = DSPy.list_programs(worker, session_id: s)

    assert {:ok, %{"program_id" => ^id, "module" => "Predict"}} =
             DSPy.get_program(worker, id, session_id: s)

    assert {:error, %Error{category: :not_found, code: "unknown_program"}} =
             DSPy.execute_program(worker, id, %{text: "x"}, session_id: s <> "-elsewhere")

    {:ok, _} = DSPy.execute_program(worker, id, %{text: "a long text"}, session_id: s)

    assert {:ok, %{"models" => %{"offline" => %{"lm_calls" => 1}}}} =
             DSPy.lm_usage(worker, session_id: s)

    assert {:ok, %{"deleted" => true}} = DSPy.delete_program(worker, id, session_id: s)
    assert {:ok, []} = DSPy.list_programs(worker, session_id: s)
    assert {:ok, %{"ended" => true}} = DSPy.end_session(worker, s)
  end

  test "mistakes come back as categorised errors, or as ArgumentError before sending", %{
    worker: worker,
    session: s
  } do
    assert {:error, %Error{category: :validation, code: "no_lm_configured"} = no_lm} =
             (fn ->
                fresh = s <> "-no-lm"

                {:ok, _} =
                  DSPy.create_program(worker,
                    signature: "q -> a",
                    program_id: "p",
                    session_id: fresh
                  )

                DSPy.execute_program(worker, "p", %{q: "x"}, session_id: fresh)
              end).()

    # Advice in Elixir terms; the worker's own (neutral) words kept in the details.
    assert no_lm.message =~
             ~s{call PortBridge.DSPy.configure_lm(target, model: "openai/gpt-4o-mini"}

    assert no_lm.details["worker_message"] =~ "configure one first"
    refute no_lm.details["worker_message"] =~ ~s({")

    assert {:error, %Error{category: :validation}} =
             DSPy.create_program(worker, signature: "not a signature", session_id: s)

    {:ok, _} = DSPy.create_program(worker, signature: "q -> a", program_id: "p", session_id: s)

    assert {:error, %Error{category: :validation}} =
             DSPy.execute_program(worker, "p", %{wrong: "x"}, session_id: s)

    assert_raise ArgumentError, ~r/configure_lm\/2 needs the option :model/, fn ->
      DSPy.configure_lm(worker, session_id: s)
    end

    assert_raise ArgumentError,
                 ~r/unknown option :modul for PortBridge.DSPy.create_program\/2 \(did you mean :module\?\)/,
                 fn ->
                   DSPy.create_program(worker, signature: "q -> a", modul: "Predict")
                 end
  end
end
