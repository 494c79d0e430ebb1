defmodule PortBridge.DSPyInteropTest do
  # What a DSPy user brings along, through the Elixir client and a real worker on the
  # offline LM: DSPy's typed string signatures, json-adapter programs with typed outputs
  # (answered and streamed as field text only), and DSPy's own saved state
  # (module.save's JSON) loaded into an existing program.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all :start_dspy_worker

  setup :offline_session

  test "a typed string signature gives typed outputs; code in a type is a validation error",
       %{worker: worker, session: s} do
    signature = "ticket -> level: Literal['low', 'high'], minutes: int, tags: list[str]"

    assert {:ok, %{"program_id" => id}} =
             DSPy.create_program(worker, signature: signature, adapter: "json", session_id: s)

    assert {:ok, %{"outputs" => %{"level" => level, "minutes" => minutes, "tags" => [_ | _]}}} =
             DSPy.execute_program(worker, id, %{ticket: "The app crashes"}, session_id: s)

    assert level in ["low", "high"] and is_integer(minutes)

    assert {:error, %PortBridge.Error{category: :validation, details: %{"path" => path}}} =
             DSPy.create_program(worker,
               signature: "ticket -> level: __import__('os')",
               session_id: s
             )

    assert path == "args.signature.outputs.level.type"
  end

  test "a json-adapter program streams each field's own text", %{worker: worker, session: s} do
    {:ok, _} =
      DSPy.create_program(worker,
        signature: "question -> answer, topic",
        adapter: "json",
        program_id: "qa",
        session_id: s
      )

    items =
      worker |> DSPy.stream("qa", %{question: ~s(Say "hi")}, session_id: s) |> Enum.to_list()

    {chunks, [{:ok, %{"outputs" => outputs}}]} = Enum.split(items, -1)

    for field <- ["answer", "topic"] do
      text = for {:chunk, %{"field" => ^field, "text" => t}} <- chunks, into: "", do: t
      assert text == outputs[field]
    end
  end

  test "DSPy's saved state loads into a program of the same structure", %{
    worker: worker,
    session: s
  } do
    {:ok, _} =
      DSPy.create_program(worker, signature: "question -> answer", program_id: "qa", session_id: s)

    # What a bare dspy.Predict("question -> answer") with one demo writes with module.save("qa.json").
    state = %{
      "traces" => [],
      "train" => [],
      "demos" => [%{"question" => "2 + 2?", "answer" => "4"}],
      "signature" => %{
        "instructions" => "Answer in one word.",
        "fields" => [
          %{"prefix" => "Question:", "description" => "${question}"},
          %{"prefix" => "Answer:", "description" => "${answer}"}
        ]
      },
      "lm" => nil,
      "metadata" => %{"dependency_versions" => %{"dspy" => "3.4.1"}}
    }

    assert {:ok, %{"demos" => 1, "dspy_state" => %{"ignored" => []}}} =
             PortBridge.request(worker, "import_program", %{program_id: "qa", dspy_state: state},
               session_id: s
             )

    # The offline LM repeats a demo's outputs for the demo's own inputs.
    assert {:ok, %{"outputs" => %{"answer" => "4"}}} =
             DSPy.execute_program(worker, "qa", %{question: "2 + 2?"}, session_id: s)

    other = put_in(state, ["signature", "fields"], [hd(state["signature"]["fields"])])

    assert {:error, %PortBridge.Error{category: :validation, message: message}} =
             PortBridge.request(worker, "import_program", %{program_id: "qa", dspy_state: other},
               session_id: s
             )

    assert message =~ "1 fields"
  end
end
