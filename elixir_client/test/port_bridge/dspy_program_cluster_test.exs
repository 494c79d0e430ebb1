defmodule PortBridge.DSPyProgramClusterTest do
  # A program module on a PortBridge.Cluster of real nodes (OTP's :peer), each with
  # its own Python and DSPy (offline LM): run from every node, in sessions (created
  # on the session's owner) and in the global scope (on each node's Python).
  use PortBridge.TestCase, async: true

  import PortBridge.ClusterCase
  alias PortBridge.{Cluster, DSPy}
  alias PortBridge.TestModules.{QA, QAThought}

  for group <- [:cluster, :dspy], reason = skip_reason(group), do: @moduletag(skip: reason)
  @moduletag timeout: 180_000

  test "a program module runs from every node, in sessions and globally, created where it runs" do
    name = :"program_cluster_#{System.unique_integer([:positive])}"
    a = two_node_cluster("programs", name, dspy_worker_opts(size: 1))
    {:ok, _} = DSPy.configure_lm(name, model: "offline")

    # Sessions that live on either node, each run from both nodes.
    sessions =
      for owner <- [node(), a] do
        Enum.find(
          Stream.map(1..500, &"user-#{&1}"),
          &(Cluster.owner_of(&1, [node(), a]) == owner)
        )
      end

    for from <- [node(), a], scope <- [nil | sessions] do
      opts = if scope, do: [session_id: scope], else: []

      assert {:ok, %QA{answer: answer}} =
               :erpc.call(from, QAThought, :run, [name, %{question: "Why?"}, opts], 60_000),
             "from #{from} in #{inspect(scope)}"

      assert is_binary(answer)
    end

    # Each session's program was created once, on its owner's Python.
    for session <- sessions do
      assert {:ok, [%{"program_id" => id}]} = DSPy.list_programs(name, session_id: session)
      assert id == QAThought.program_id()
    end
  end
end
