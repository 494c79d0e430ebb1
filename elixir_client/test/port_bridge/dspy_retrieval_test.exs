defmodule PortBridge.DSPyRetrievalTest do
  # Retrieval through PortBridge.DSPy against real workers: the offline embedder and LM,
  # an index held in a session, retrieve, a retrieve -> generate program, and a pool
  # session that keeps its index when its Python dies.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  @corpus [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Elixir language runs on the BEAM virtual machine."
  ]

  setup_all :start_dspy_worker

  setup do
    %{session: "r-#{System.unique_integer([:positive])}"}
  end

  test "an index is built from a corpus and searched", %{worker: worker, session: s} do
    assert {:ok, %{"model" => "offline", "dimensions" => 128}} =
             DSPy.configure_embedder(worker, model: "offline", dimensions: 128, session_id: s)

    parent = self()

    assert {:ok, %{"index_id" => "kb", "count" => 3, "dimensions" => 128}} =
             DSPy.create_index(worker, @corpus,
               index_id: "kb",
               session_id: s,
               on_event: &send(parent, {:event, &1})
             )

    assert_received {:event, {"progress", %{"embedded" => 3, "total" => 3}}}

    assert {:ok, %{"passages" => [passage], "indices" => [1], "scores" => [score]}} =
             DSPy.retrieve(worker, "kb", "the capital of Germany", k: 1, session_id: s)

    assert passage == Enum.at(@corpus, 1) and score > 0
    assert {:ok, [%{"index_id" => "kb", "count" => 3}]} = DSPy.list_indexes(worker, session_id: s)
    assert {:ok, %{"deleted" => true}} = DSPy.delete_index(worker, "kb", session_id: s)

    assert {:error, %PortBridge.Error{category: :not_found, code: "unknown_index"}} =
             DSPy.retrieve(worker, "kb", "x", session_id: s)
  end

  test "a retrieve -> generate program runs RAG from data", %{worker: worker, session: s} do
    {:ok, _} = DSPy.configure_lm(worker, model: "offline", session_id: s)
    {:ok, _} = DSPy.configure_embedder(worker, model: "offline", session_id: s)
    {:ok, _} = DSPy.create_index(worker, @corpus, index_id: "kb", k: 1, session_id: s)

    assert {:ok, %{"retrieve" => %{"index_id" => "kb", "context" => "context"}}} =
             DSPy.create_program(worker,
               signature: "context, question -> answer",
               module: "ChainOfThought",
               program_id: "rag",
               retrieve: %{index_id: "kb", query: "question", context: "context"},
               session_id: s
             )

    assert {:ok, %{"outputs" => %{"answer" => answer}, "retrieved" => retrieved}} =
             DSPy.execute_program(worker, "rag", %{question: "Where does Elixir run?"},
               session_id: s
             )

    assert is_binary(answer)
    assert retrieved["passages"] == [Enum.at(@corpus, 2)]
  end

  test "on a pool, a session's embedder and index are rebuilt on a fresh Python" do
    name = :"retrieval_pool_#{System.unique_integer([:positive])}"
    start_supervised!({PortBridge.Pool, [name: name, size: 1] ++ dspy_worker_opts()}, id: name)
    s = "survivor"

    {:ok, _} = DSPy.configure_embedder(name, model: "offline", session_id: s)
    {:ok, %{"index_id" => id}} = DSPy.create_index(name, @corpus, session_id: s)
    {:ok, before} = DSPy.retrieve(name, id, "capital of France", session_id: s)

    old_pid = ping_pid(name, session_id: s)
    kill9(old_pid)
    assert_os_pid_exited(old_pid)

    assert {:ok, ^before} =
             DSPy.retrieve(name, id, "capital of France", session_id: s, retry: true)

    assert ping_pid(name, session_id: s) != old_pid

    {:ok, %{"deleted" => true}} = DSPy.delete_index(name, id, session_id: s)
    assert {:ok, []} = DSPy.list_indexes(name, session_id: s)
  end
end
