defmodule PortBridge.DSPyEvaluateTest do
  # The DSPy commands added for issue 12 (evaluation, the new optimisers, typed inputs,
  # adapters) through PortBridge.DSPy, against a real worker and the offline LM.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @train for i <- 0..5,
             do: %{inputs: %{question: "What is #{i} + #{i}?"}, outputs: %{answer: "#{2 * i}"}}

  setup_all :start_dspy_worker

  setup %{worker: worker} do
    session = "t-#{System.unique_integer([:positive])}"
    {:ok, _} = DSPy.configure_lm(worker, model: "offline", session_id: session)

    {:ok, _} =
      DSPy.create_program(worker,
        signature: "question -> answer",
        program_id: "qa",
        session_id: session
      )

    %{session: session}
  end

  test "evaluate_program scores each example and streams progress", %{worker: worker, session: s} do
    {:ok, %{"demos" => 2}} =
      DSPy.optimize_program(worker, "qa",
        optimizer: "LabeledFewShot",
        trainset: Enum.take(@train, 2),
        session_id: s
      )

    parent = self()

    assert {:ok, %{"score" => score, "results" => results, "count" => 6, "errors" => 0}} =
             DSPy.evaluate_program(worker, "qa",
               devset: @train,
               num_threads: 2,
               session_id: s,
               on_event: fn event -> send(parent, {:event, event}) end
             )

    assert_in_delta score, 100 * 2 / 6, 0.01
    assert Enum.map(results, & &1["score"]) == [1.0, 1.0, 0, 0, 0, 0]
    assert_received {:event, {"progress", %{"done" => 6, "total" => 6}}}
  end

  test "an LM judge is declared as data", %{worker: worker, session: s} do
    judge = %{
      judge: %{
        signature: %{inputs: %{gold: "str", answer: "str"}, outputs: %{correct: "bool"}},
        inputs: %{gold: "example.answer", answer: "prediction.answer"},
        score: "correct"
      }
    }

    assert {:ok, %{"metric" => "judge", "count" => 6}} =
             DSPy.evaluate_program(worker, "qa", devset: @train, metric: judge, session_id: s)

    assert {:error, %PortBridge.Error{category: :validation}} =
             DSPy.evaluate_program(worker, "qa",
               devset: @train,
               metric: %{judge: %{judge.judge | score: "gold"}},
               session_id: s
             )
  end

  test "MIPROv2 tunes a program that then exports", %{worker: worker, session: s} do
    assert {:ok, %{"optimizer" => "MIPROv2", "instructions" => %{"self" => _}}} =
             DSPy.optimize_program(worker, "qa",
               optimizer: "MIPROv2",
               trainset: @train,
               options: %{auto: "light", max_bootstrapped_demos: 1, max_labeled_demos: 1},
               session_id: s,
               timeout: 120_000
             )

    assert {:ok, %{"optimizations" => [%{"optimizer" => "MIPROv2"}]}} =
             DSPy.export_program(worker, "qa", session_id: s)
  end

  test "history inputs and a per-program adapter", %{worker: worker, session: s} do
    signature = %{inputs: %{history: "history", question: "str"}, outputs: %{answer: "str"}}

    assert {:ok, %{"adapter" => "json"}} =
             DSPy.create_program(worker,
               signature: signature,
               program_id: "chat",
               adapter: "json",
               session_id: s
             )

    history = %{messages: [%{question: "Your name?", answer: "Port"}]}

    assert {:ok, %{"outputs" => %{"answer" => answer}}} =
             DSPy.execute_program(worker, "chat", %{history: history, question: "Hi"},
               session_id: s
             )

    assert is_binary(answer)
  end
end
