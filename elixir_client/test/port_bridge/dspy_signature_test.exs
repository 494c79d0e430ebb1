defmodule PortBridge.DSPySignatureTest do
  # `use PortBridge.DSPy.Signature`: the wire map, the struct, casting answers into
  # it, and mistakes as compile errors. No Python: this is the client's own work.
  use ExUnit.Case, async: true

  alias PortBridge.DSPy.Types
  alias PortBridge.Error
  alias PortBridge.TestModules.{Item, QA, Triage}

  test "__signature__/0 is the worker's map form, fields in the order declared" do
    assert Triage.__signature__() == %{
             "name" => "Triage",
             "instructions" => "Classify a support ticket.",
             "inputs" => [
               %{"name" => "ticket", "type" => "str", "desc" => "the ticket text"},
               %{
                 "name" => "items",
                 "type" => %{
                   "list" => %{"object" => Item.__signature__(:wire_fields), "name" => "Item"}
                 },
                 "desc" => ""
               }
             ],
             "outputs" => [
               %{"name" => "urgent", "type" => "bool", "desc" => ""},
               %{
                 "name" => "category",
                 "type" => %{"literal" => ["billing", "bug", "other"]},
                 "desc" => ""
               },
               %{"name" => "tags", "type" => "list[str]", "desc" => ""},
               %{"name" => "level", "type" => %{"literal" => ["low", "high"]}, "desc" => ""},
               %{"name" => "scores", "type" => "dict[str, float]", "desc" => ""},
               %{
                 "name" => "item",
                 "type" => %{
                   "optional" => %{"object" => Item.__signature__(:wire_fields), "name" => "Item"}
                 },
                 "desc" => ""
               }
             ]
           }

    assert Item.__signature__(:wire_fields) == [
             %{"name" => "sku", "type" => "str", "desc" => "the article number"},
             %{"name" => "qty", "type" => "optional[int]", "desc" => ""}
           ]

    refute Map.has_key?(QA.__signature__(), "instructions")
  end

  test "the module is a struct of its outputs" do
    assert %Triage{} |> Map.from_struct() |> Map.keys() |> Enum.sort() ==
             Enum.sort([:urgent, :category, :tags, :level, :scores, :item])

    refute Map.has_key?(%Triage{}, :ticket)
  end

  test "answers are cast into the struct; what does not fit is an output_parse error" do
    good = %{
      "urgent" => true,
      "category" => "bug",
      "tags" => ["crash"],
      "level" => "high",
      "scores" => %{"a" => 1, "b" => 0.5},
      "item" => %{"sku" => "X-1"}
    }

    assert {:ok,
            %Triage{
              urgent: true,
              category: "bug",
              tags: ["crash"],
              level: :high,
              scores: %{"a" => 1.0, "b" => 0.5},
              item: %Item{sku: "X-1", qty: nil}
            }} = cast(good)

    assert {:ok, %Triage{item: nil}} = cast(Map.put(good, "item", nil))

    for {field, bad, path} <- [
          {"urgent", "yes", "Triage.urgent"},
          {"category", "feature", "Triage.category"},
          {"tags", ["ok", 3], "Triage.tags[1]"},
          {"level", "medium", "Triage.level"},
          {"scores", %{"a" => "high"}, "Triage.scores.a"},
          {"item", %{"qty" => 2}, "Triage.item.sku"}
        ] do
      assert {:error,
              %Error{category: :output_parse, code: "output_cast", details: %{"path" => ^path}}} =
               cast(Map.put(good, field, bad)),
             "#{field}: #{inspect(bad)}"
    end

    assert {:error, %Error{message: "Triage.urgent: expected a boolean, got nothing"}} =
             cast(Map.delete(good, "urgent"))
  end

  test "structs given as inputs travel as maps" do
    assert Types.dump(%{items: [%Item{sku: "A", qty: 1}]}) == %{
             items: [%{"sku" => "A", "qty" => 1}]
           }
  end

  test "mistakes are compile errors that name the field" do
    for {body, message} <- [
          {"input :q, :str", ~r/input :q of .*unknown type :str/},
          {"input :q, :string\n output :q, :integer", ~r/the field :q is declared twice/},
          {"input :demos, :string", ~r/:demos is reserved by DSPy/},
          {"output :model_name, :string", ~r/:model_name is reserved by DSPy/},
          {"input :q?, :string", ~r/a field name is an atom like :question/},
          {"output :a, {:enum, []}", ~r/\{:enum, values\} takes a non-empty list/},
          {"output :a, {:list, String}", ~r/String is not a PortBridge.DSPy.Signature module/},
          {"output :a, :string, doc: \"x\"", ~r/the only option of a field is :desc/},
          {"output :a, {:list, PortBridge.TestModules.Triage}", ~r/Triage has inputs/}
        ] do
      code = "defmodule PortBridge.BadSignature do\nuse PortBridge.DSPy.Signature\n#{body}\nend"
      error = assert_raise CompileError, fn -> Code.compile_string(code) end
      assert Exception.message(error) =~ message
    end
  end

  test "a program module's mistakes are compile errors too" do
    for {opts, message} <- [
          {"signature: PortBridge.TestModules.QA, modul: \"Predict\"",
           ~r/unknown option :modul .*\(did you mean :module\?\)/},
          {"signature: String", ~r/String is not a PortBridge.DSPy.Signature module/},
          {"signature: PortBridge.TestModules.QA, module: \"Guess\"",
           ~r/:module .*expected one of/},
          # An exposed dspy.Module class has no signature: DSPy.create_program/2 builds it.
          {"signature: PortBridge.TestModules.QA, module: \"myprogs.MultiHop\"",
           ~r/:module .*expected one of/},
          {"signature: PortBridge.TestModules.QA, init: %{hops: 2}", ~r/unknown option :init/},
          {"signature: PortBridge.TestModules.Triage, optimized: \"test/support/fixtures/qa_optimized.json\"",
           ~r/qa_optimized.json has the inputs \["question"\]/},
          {"signature: PortBridge.TestModules.QA, module: \"ChainOfThought\", optimized: \"test/support/fixtures/qa_optimized.json\"",
           ~r/holds a Predict program; this module is a ChainOfThought/},
          {"signature: PortBridge.TestModules.QA, optimized: \"test/support/fixtures/none.json\"",
           ~r/cannot read .*none.json/}
        ] do
      code = "defmodule PortBridge.BadProgram do\nuse PortBridge.DSPy.Program, #{opts}\nend"
      error = assert_raise CompileError, fn -> Code.compile_string(code) end
      assert Exception.message(error) =~ message
    end
  end

  test "a program's id is its name and a hash of its definition" do
    alias PortBridge.TestModules.{QAThought, TriageProgram}
    assert QAThought.program_id() =~ ~r/^PortBridge\.TestModules\.QAThought-[0-9a-f]{12}$/
    refute QAThought.program_id() == TriageProgram.program_id()
  end

  defp cast(outputs),
    do: Types.cast_fields(Triage, Triage.__signature__(:cast), outputs, "Triage")
end
