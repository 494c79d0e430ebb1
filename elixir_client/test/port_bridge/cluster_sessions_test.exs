defmodule PortBridge.ClusterSessionsTest do
  # DSPy sessions in a PortBridge.Cluster across real nodes (OTP's :peer), each with
  # its own Python worker and DSPy (offline LM): what moves when a node joins, and
  # what survives when one is killed.
  use PortBridge.TestCase, async: true

  import PortBridge.ClusterCase
  alias PortBridge.{Cluster, DSPy, Records}

  for group <- [:cluster, :dspy], reason = skip_reason(group), do: @moduletag(skip: reason)
  @moduletag timeout: 180_000

  @trainset for {q, a} <- [{"1 + 1?", "2"}, {"2 + 2?", "4"}],
                do: %{inputs: %{question: q}, outputs: %{answer: a}}

  defp on(node, fun, args), do: :erpc.call(node, DSPy, fun, args, :infinity)

  defp build_session(node, name, session) do
    {:ok, _} = on(node, :configure_lm, [name, [model: "offline", session_id: session]])

    {:ok, _} =
      on(node, :create_program, [
        name,
        [
          signature: "question -> answer",
          module: "ChainOfThought",
          program_id: "qa",
          session_id: session
        ]
      ])

    {:ok, %{"demos" => 2}} =
      on(node, :optimize_program, [
        name,
        "qa",
        [optimizer: "LabeledFewShot", trainset: @trainset, session_id: session]
      ])

    execute(node, name, session)
  end

  defp execute(node, name, session) do
    {:ok, %{"outputs" => outputs}} =
      on(node, :execute_program, [
        name,
        "qa",
        %{question: "7 + 1?"},
        [session_id: session, retry: true]
      ])

    outputs
  end

  # The session's state on whichever Python serves it: the learned demos, and the
  # records its owner replays on a fresh Python (the LM first).
  defp assert_state(node, name, session, outputs) do
    assert execute(node, name, session) == outputs

    assert {:ok, %{"demos" => 2, "module" => "ChainOfThought"}} =
             on(node, :get_program, [name, "qa", [session_id: session]])

    owner = Cluster.owner(name, session)
    {:ok, cluster} = :erpc.call(owner, Cluster, :lookup, [name])

    assert [
             {"configure_lm", %{"model" => "offline"}, _},
             {"import_program", %{"program_id" => "qa"}, _}
           ] = :erpc.call(owner, Records, :steps, [cluster.records, session])
  end

  test "sessions move with their state when a node joins, and survive when it is killed" do
    {peer_a, a} = start_peer("dspy")
    {peer_b, b} = start_peer("dspy")
    on_exit(fn -> Enum.each([peer_a, peer_b], &stop_peer/1) end)

    name = :"dspy_cluster_#{System.unique_integer([:positive])}"
    opts = [name: name, pool: dspy_worker_opts(size: 1)]
    connect_all([node(), a, b])
    start_supervised!({Cluster, opts}, id: name)
    start_cluster(a, opts)
    await_members([node(), a], name, [node(), a])

    # The global scope, before the third node exists: it must get it when it joins.
    {:ok, _} = DSPy.configure_lm(name, model: "offline")
    {:ok, _} = DSPy.create_program(name, signature: "text -> label", program_id: "g")

    # Sessions of which some stay where they are and some move to b when it joins.
    after_join = [node(), a, b]
    candidates = for i <- 1..200, do: "user-#{i}"
    {to_b, elsewhere} = Enum.split_with(candidates, &(Cluster.owner_of(&1, after_join) == b))
    moving = Enum.take(to_b, 3)
    staying = Enum.take(elsewhere, 3)

    outputs =
      Map.new(moving ++ staying, fn session ->
        # Built from a's side and ours alike.
        builder = if rem(:erlang.phash2(session), 2) == 0, do: a, else: node()
        {session, build_session(builder, name, session)}
      end)

    start_cluster(b, opts)
    await_members(after_join, name, after_join)
    [b_python] = python_pids(b, name)

    # The global scope reached b before it joined: its Worker runs the global program.
    assert {:ok, %{"outputs" => %{"label" => _}}} =
             on(b, :execute_program, [name, "g", %{text: "hi"}, []])

    for session <- moving ++ staying, from <- [b, node()] do
      assert_state(from, name, session, outputs[session])
    end

    for session <- moving, do: assert(ping_pid(name, session_id: session) == b_python)
    for session <- staying, do: assert(ping_pid(name, session_id: session) != b_python)

    # A session first built while b owns it: its records start on b, and are copied
    # to the node it moves to if b goes.
    fresh = Enum.find(candidates -- (moving ++ staying), &(Cluster.owner_of(&1, after_join) == b))
    outputs = Map.put(outputs, fresh, build_session(node(), name, fresh))

    kill9(os_pid(b))
    await_members([node(), a], name, [node(), a])
    assert_os_pid_exited(b_python, 10_000)

    for session <- [fresh | moving ++ staying], from <- [a, node()] do
      assert_state(from, name, session, outputs[session])
    end
  end
end
