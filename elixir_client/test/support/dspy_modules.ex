# Signature and program modules the DSPy-native suites share (compiled with the tests).

defmodule PortBridge.TestModules.Item do
  use PortBridge.DSPy.Signature
  field(:sku, :string, desc: "the article number")
  field(:qty, {:optional, :integer})
end

defmodule PortBridge.TestModules.Triage do
  use PortBridge.DSPy.Signature, instructions: "Classify a support ticket."

  alias PortBridge.TestModules.Item

  input(:ticket, :string, desc: "the ticket text")
  input(:items, {:list, Item})
  output(:urgent, :boolean)
  output(:category, {:enum, ["billing", "bug", "other"]})
  output(:tags, {:list, :string})
  output(:level, {:enum, [:low, :high]})
  output(:scores, {:map, :float})
  output(:item, {:optional, Item})
end

defmodule PortBridge.TestModules.QA do
  use PortBridge.DSPy.Signature
  input(:question, :string)
  output(:answer, :string)
end

defmodule PortBridge.TestModules.TriageProgram do
  use PortBridge.DSPy.Program, signature: PortBridge.TestModules.Triage
end

defmodule PortBridge.TestModules.QAThought do
  use PortBridge.DSPy.Program, signature: PortBridge.TestModules.QA, module: "ChainOfThought"
end

defmodule PortBridge.TestModules.Adder do
  use PortBridge.DSPy.Program,
    signature: PortBridge.TestModules.QA,
    module: "ReAct",
    max_iters: 3,
    tools: [
      %{
        name: "add",
        description: "Adds two integers.",
        parameters: [a: :integer, b: :integer],
        fun: &PortBridge.TestModules.Adder.add/1
      }
    ]

  def add(%{"a" => a, "b" => b}) do
    if pid = Process.whereis(:adder_test_listener), do: send(pid, {:added, a, b})
    a + b
  end
end

defmodule PortBridge.TestModules.QAOptimized do
  # Demos and instructions from an exported, optimised program (LabeledFewShot over
  # two examples, made by a real worker from the same definition).
  use PortBridge.DSPy.Program,
    signature: PortBridge.TestModules.QA,
    optimized: "test/support/fixtures/qa_optimized.json"
end

defmodule PortBridge.TestModules.Py do
  # Functions for test/support/python/calc.py's commands, from the snapshot that
  # `mix port_bridge.commands --expose calc` wrote.
  use PortBridge.Commands, expose: ["calc"], snapshot: "test/support/fixtures/commands.json"
end

defmodule PortBridge.TestModules.StalePy do
  use PortBridge.Commands, expose: ["calc"], snapshot: "test/support/fixtures/commands_stale.json"
end

defmodule PortBridge.TestModules.Draft do
  use PortBridge.DSPy.Signature
  input(:question, :string)
  output(:draft, :string, desc: "a first answer")
end

defmodule PortBridge.TestModules.DraftThenAnswer do
  # A pipeline as data whose first step's signature is a module.
  use PortBridge.DSPy.Program,
    signature: PortBridge.TestModules.QA,
    module: "Pipeline",
    steps: [
      %{name: "draft", module: "Predict", signature: PortBridge.TestModules.Draft},
      %{
        name: "answer",
        module: "ChainOfThought",
        signature: "question, draft -> answer",
        inputs: %{draft: "draft.draft"}
      }
    ]
end
