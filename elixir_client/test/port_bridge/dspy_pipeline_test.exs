defmodule PortBridge.DSPyPipelineTest do
  # Pipelines as data from Elixir, against real workers (offline LM and embedder): a
  # multi-hop pipeline runs, traces its steps and streams with each step's predictor
  # named; bad bindings come back as validation errors naming the path; on a pool, a
  # pipeline (with what it learned) survives the death of its Python.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @corpus [
    "Paris is the capital of France.",
    "The Seine flows through Paris.",
    "Berlin is the capital of Germany."
  ]
  @multi_hop %{
    module: "Pipeline",
    signature: "question -> answer",
    steps: [
      %{
        name: "hop",
        repeat: 2,
        collect: %{context: "search.passages"},
        steps: [
          %{
            name: "generate_query",
            module: "ChainOfThought",
            signature: "context, question -> query",
            inputs: %{context: "hop.context"}
          },
          %{name: "search", retrieve: %{index_id: "kb", query: "generate_query.query", k: 1}}
        ]
      },
      %{
        name: "generate_answer",
        module: "ChainOfThought",
        signature: "context, question -> answer",
        inputs: %{context: "hop.context"}
      }
    ]
  }
  @question %{question: "What flows through the capital of France?"}

  setup_all :start_dspy_worker

  setup do
    %{session: "pipe-#{System.unique_integer([:positive])}"}
  end

  # The scope a pipeline runs in: the offline LM, the offline embedder, the corpus as "kb".
  defp scope(target, s) do
    {:ok, _} = DSPy.configure_lm(target, model: "offline", session_id: s)
    {:ok, _} = DSPy.configure_embedder(target, model: "offline", session_id: s)
    {:ok, _} = DSPy.create_index(target, @corpus, index_id: "kb", session_id: s)
  end

  defp create(target, s, declaration, id \\ "mh") do
    DSPy.create_program(target, Keyword.new(declaration) ++ [program_id: id, session_id: s])
  end

  test "a multi-hop pipeline runs, traces its steps and streams", %{worker: w, session: s} do
    scope(w, s)

    assert {:ok, %{"module" => "Pipeline", "predictors" => predictors}} = create(w, s, @multi_hop)
    assert predictors == ["generate_query.predict", "generate_answer.predict"]

    assert {:ok, %{"outputs" => %{"answer" => answer}, "trace" => trace}} =
             DSPy.execute_program(w, "mh", @question, trace: true, session_id: s)

    assert Enum.map(trace, &{&1["step"], &1["iteration"]}) == [
             {"generate_query", 0},
             {"search", 0},
             {"generate_query", 1},
             {"search", 1},
             {"generate_answer", nil}
           ]

    assert List.last(trace)["outputs"]["answer"] == answer

    chunks = for {:chunk, chunk} <- DSPy.stream(w, "mh", @question, session_id: s), do: chunk
    assert chunks |> Enum.map(& &1["predictor"]) |> Enum.uniq() == predictors

    streamed =
      for %{"predictor" => "generate_answer.predict", "field" => "answer", "text" => t} <- chunks,
          into: "",
          do: t

    assert streamed == answer
  end

  test "a bad binding is a validation error naming its path", %{worker: w, session: s} do
    [hop, answer] = @multi_hop.steps
    bad = %{@multi_hop | steps: [hop, %{answer | inputs: %{context: "search.passage"}}]}

    assert {:error,
            %PortBridge.Error{category: :validation, code: "unknown_field", details: details}} =
             create(w, s, bad)

    assert details["path"] == "args.steps[1].inputs.context"
  end

  test "on a pool, a pipeline and what it learned survive a killed Python" do
    name = :"pipeline_pool_#{System.unique_integer([:positive])}"
    start_supervised!({PortBridge.Pool, [name: name, size: 1] ++ dspy_worker_opts()}, id: name)
    s = "survivor"
    scope(name, s)
    {:ok, _} = create(name, s, @multi_hop)

    # Each program change is recorded as export_program returns it, and replayed by import.
    trainset = [%{inputs: @question, outputs: %{answer: "The Seine."}}]

    assert {:ok, %{"demos" => 2}} =
             DSPy.optimize_program(name, "mh",
               optimizer: "LabeledFewShot",
               trainset: trainset,
               session_id: s
             )

    {:ok, before} = DSPy.execute_program(name, "mh", @question, session_id: s)

    old_pid = ping_pid(name, session_id: s)
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    assert {:ok, after_restart} =
             DSPy.execute_program(name, "mh", @question, session_id: s, retry: true)

    assert ping_pid(name, session_id: s) != old_pid
    assert after_restart["outputs"] == before["outputs"]

    assert {:ok, %{"module" => "Pipeline", "demos" => 2, "predictors" => [_, _]}} =
             DSPy.get_program(name, "mh", session_id: s)
  end
end
