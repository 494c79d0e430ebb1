defmodule PortBridge.DSPyAgentsTest do
  # DSPy agents with Elixir tools, Elixir rewards and Elixir metrics (issue 11), through
  # PortBridge.DSPy against a real worker and the offline LM, which drives a short
  # ReAct trajectory: one declared tool with schema-valid arguments, then finish.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @add %{
    name: "add",
    description: "Adds two integers.",
    parameters: %{
      type: "object",
      properties: %{a: %{type: "integer"}, b: %{type: "integer"}},
      required: ["a", "b"]
    }
  }

  setup_all :start_dspy_worker

  setup :offline_session

  test "a ReAct agent calls an Elixir tool and returns its trajectory", %{worker: w, session: s} do
    {:ok, %{"module" => "ReAct", "tools" => [%{"name" => "add"}]}} =
      DSPy.create_program(w,
        signature: "question -> answer",
        module: "ReAct",
        tools: [@add],
        max_iters: 3,
        program_id: "agent",
        session_id: s
      )

    parent = self()

    add = fn %{"a" => a, "b" => b} = args ->
      send(parent, {:tool, args})
      a + b
    end

    assert {:ok, %{"outputs" => %{"trajectory" => trajectory, "answer" => answer}}} =
             DSPy.execute_program(w, "agent", %{question: "add two numbers"},
               tools: %{"add" => add},
               session_id: s
             )

    assert_received {:tool, %{"a" => a, "b" => b}}
    assert trajectory["tool_name_0"] == "add" and trajectory["observation_0"] == a + b
    assert trajectory["tool_name_1"] == "finish"
    assert answer =~ Integer.to_string(a + b)
  end

  test "one tools list, with functions and typed parameters, serves create and execute", %{
    worker: w,
    session: s
  } do
    parent = self()

    tools = [
      %{
        name: "add",
        description: "Adds two integers.",
        parameters: [a: :integer, b: :integer],
        fun: fn %{"a" => a, "b" => b} = args ->
          send(parent, {:tool, args})
          a + b
        end
      }
    ]

    {:ok, %{"tools" => [declared]}} =
      DSPy.create_program(w,
        signature: "question -> answer",
        module: "ReAct",
        tools: tools,
        program_id: "agent",
        session_id: s
      )

    assert declared["parameters"]["properties"] == %{
             "a" => %{"type" => "integer"},
             "b" => %{"type" => "integer"}
           }

    assert {:ok, %{"outputs" => %{"trajectory" => %{"tool_name_0" => "add"} = trajectory}}} =
             DSPy.execute_program(w, "agent", %{question: "add"}, tools: tools, session_id: s)

    assert_received {:tool, %{"a" => a, "b" => b}}
    assert trajectory["observation_0"] == a + b

    assert_raise ArgumentError, ~r/the tool "add" has no :fun/, fn ->
      DSPy.execute_program(w, "agent", %{question: "add"}, tools: [@add], session_id: s)
    end

    assert_raise ArgumentError, ~r/parameter :a of the tool "add": unknown type :int/, fn ->
      DSPy.create_program(w,
        signature: "question -> answer",
        module: "ReAct",
        tools: [%{name: "add", parameters: [a: :int]}],
        session_id: s
      )
    end
  end

  test "streaming interleaves chunk events with the tool's callback", %{worker: w, session: s} do
    {:ok, _} =
      DSPy.create_program(w,
        signature: "question -> answer",
        module: "ReAct",
        tools: [@add],
        program_id: "agent",
        session_id: s
      )

    events =
      w
      |> DSPy.stream("agent", %{question: "add them"},
        tools: %{"add" => fn %{"a" => a, "b" => b} -> a + b end},
        session_id: s
      )
      |> Enum.to_list()

    assert {:ok, %{"outputs" => %{"trajectory" => %{"tool_name_0" => "add"}}}} = List.last(events)
    assert Enum.any?(events, &match?({:chunk, %{"predictor" => "react"}}, &1))
    assert Enum.any?(events, &match?({:chunk, %{"predictor" => "extract.predict"}}, &1))
  end

  test "BestOfN asks an Elixir reward; evaluate_program an Elixir metric", %{
    worker: w,
    session: s
  } do
    {:ok, _} =
      DSPy.create_program(w,
        signature: "question -> answer",
        module: "BestOfN",
        N: 3,
        reward_fn: %{callback: "reward"},
        threshold: 2.0,
        program_id: "best",
        session_id: s
      )

    parent = self()

    reward = fn inputs, prediction ->
      send(parent, {:reward, inputs, prediction})
      0.5
    end

    assert {:ok, %{"outputs" => %{"answer" => _}}} =
             DSPy.execute_program(w, "best", %{question: "Hi?"}, reward: reward, session_id: s)

    for _ <- 1..3, do: assert_received({:reward, %{"question" => "Hi?"}, %{"answer" => _}})

    {:ok, _} =
      DSPy.create_program(w, signature: "question -> answer", program_id: "qa", session_id: s)

    metric = fn %{"inputs" => %{"question" => q}}, %{"answer" => _} ->
      if q == "one", do: 1, else: %{"score" => 0.25, "feedback" => "too long"}
    end

    devset = [
      %{inputs: %{question: "one"}, outputs: %{answer: "1"}},
      %{inputs: %{question: "two"}, outputs: %{answer: "2"}}
    ]

    assert {:ok, %{"score" => 62.5, "metric" => "metric"}} =
             DSPy.evaluate_program(w, "qa", devset: devset, metric: metric, session_id: s)
  end
end
