defmodule PortBridge.TestStubTest do
  # PortBridge.Test.stub/2: a target answers from an Elixir function, at the wire level,
  # for the process that set it and those it starts. No Python anywhere here.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Error, Test}

  # A name nothing runs under: only a stub can answer it.
  @target :"stubbed_#{__MODULE__}"

  test "request/4 reaches the function with the args as the worker gets them" do
    me = self()

    Test.stub(@target, fn command, args ->
      send(me, {:asked, command, args})
      {:ok, %{answer: 42, items: [:a, {1, 2} |> Tuple.to_list()]}}
    end)

    assert {:ok, %{"answer" => 42, "items" => ["a", [1, 2]]}} =
             PortBridge.request(@target, "mathcmds.add", %{a: 1, nested: %{b: [2]}})

    assert_received {:asked, "mathcmds.add", %{"a" => 1, "nested" => %{"b" => [2]}}}

    error = Error.new(:validation, "invalid_args", "args.a: is required")
    Test.stub(@target, fn _command, _args -> {:error, error} end)
    assert {:error, ^error} = PortBridge.request(@target, "mathcmds.add", %{})
    assert_raise Error, ~r/validation\/invalid_args/, fn -> PortBridge.request!(@target, "x") end
  end

  test "whichever function a call comes through, a stub answers it" do
    Test.stub(@target, fn "ping", _ -> {:ok, %{"pong" => "stubbed"}} end)

    for result <- [
          PortBridge.Worker.request(@target, "ping"),
          PortBridge.Pool.request(@target, "ping"),
          PortBridge.Cluster.request(@target, "ping"),
          PortBridge.Request.await(PortBridge.Pool.async_request(@target, "ping"))
        ] do
      assert {:ok, %{"pong" => "stubbed"}} = result
    end
  end

  test "a stub answers the processes the test starts, and not others" do
    Test.stub(@target, fn "ping", _ -> {:ok, %{"pong" => true}} end)

    assert {:ok, %{"pong" => true}} =
             Task.async(fn -> PortBridge.request(@target, "ping") end) |> Task.await()

    # A process started by no one here has no stub: the request meets the real target.
    parent = self()
    spawn(fn -> send(parent, {:outsider, PortBridge.request(@target, "ping")}) end)
    assert_receive {:outsider, {:error, %Error{code: "not_running"}}}, 5_000

    # Another test process may stub the same name its own way.
    spawn(fn ->
      Test.stub(@target, fn "ping", _ -> {:ok, %{"pong" => "theirs"}} end)
      send(parent, {:theirs, PortBridge.request(@target, "ping")})
    end)

    assert_receive {:theirs, {:ok, %{"pong" => "theirs"}}}, 5_000
    assert {:ok, %{"pong" => true}} = PortBridge.request(@target, "ping")
  end

  test "allow/3 lends a stub to a process that does not descend from the test" do
    Test.stub(@target, fn "ping", _ -> {:ok, %{"pong" => "lent"}} end)
    parent = self()

    helper =
      spawn(fn ->
        receive do
          :go -> send(parent, {:helper, PortBridge.request(@target, "ping")})
        end
      end)

    Test.allow(@target, self(), helper)
    send(helper, :go)
    assert_receive {:helper, {:ok, %{"pong" => "lent"}}}, 5_000
  end

  test "async_request/4 and stream/4 get the events the function emits, then its answer" do
    Test.stub(@target, fn "execute_program", %{"stream" => true} ->
      Test.emit("chunk", %{field: "answer", text: "Hel"})
      Test.emit("chunk", %{field: "answer", text: "lo"})
      {:ok, %{outputs: %{answer: "Hello"}}}
    end)

    request = PortBridge.async_request(@target, "execute_program", %{stream: true})
    me = self()

    assert {:ok, %{"outputs" => %{"answer" => "Hello"}}} =
             PortBridge.await(request, &send(me, &1))

    assert_received {"chunk", %{"text" => "Hel"}}

    assert [{:chunk, %{"text" => "Hel"}}, {:chunk, %{"text" => "lo"}}, {:ok, %{"outputs" => _}}] =
             @target |> DSPy.stream("qa", %{question: "hi"}) |> Enum.to_list()

    events = fn ->
      PortBridge.request(@target, "execute_program", %{stream: true}, on_event: &send(me, &1))
    end

    assert {:ok, _} = events.()
    assert_received {"chunk", %{"text" => "lo"}}
  end

  test "every PortBridge.DSPy path is stubbable; callback/2 runs the request's tools" do
    Test.stub(@target, fn
      "configure_lm", %{"model" => "offline"} ->
        {:ok, %{}}

      "create_program", %{"tools" => [%{"name" => "add"}]} ->
        {:ok, %{program_id: "agent"}}

      "execute_program", %{"program_id" => "agent", "inputs" => %{"question" => q}} ->
        sum = Test.callback("add", %{a: 2, b: 3})
        {:ok, %{outputs: %{answer: "#{q} #{sum}"}}}
    end)

    tools = [
      %{
        name: "add",
        parameters: [a: :integer, b: :integer],
        fun: fn %{"a" => a, "b" => b} -> a + b end
      }
    ]

    assert {:ok, %{}} = DSPy.configure_lm(@target, model: "offline", session_id: "s")

    assert {:ok, %{"program_id" => "agent"}} =
             DSPy.create_program(@target,
               signature: "question -> answer",
               module: "ReAct",
               tools: tools
             )

    assert {:ok, %{"outputs" => %{"answer" => "sum? 5"}}} =
             DSPy.execute_program(@target, "agent", %{question: "sum?"}, tools: tools)
  end

  test "a program module checks the shape of the reply it gets after creating its program too" do
    # The first execute_program finds no program; after create_program the worker
    # answers without "outputs": a protocol error on that path as on the first.
    {:ok, tries} = Agent.start_link(fn -> 0 end)

    Test.stub(@target, fn
      "execute_program", _args ->
        case Agent.get_and_update(tries, &{&1, &1 + 1}) do
          0 -> {:error, Error.new(:not_found, "unknown_program", "no program")}
          _ -> {:ok, %{"answer" => "no outputs map"}}
        end

      "create_program", _args ->
        {:ok, %{}}
    end)

    assert {:error, %Error{category: :protocol, code: "malformed_result"}} =
             PortBridge.TestModules.QAThought.run(@target, %{question: "Why?"})

    assert Agent.get(tries, & &1) == 2
  end

  test "PortBridge.DSPy tells the worker's errors in Elixir terms" do
    Test.stub(@target, fn
      "execute_program", %{"program_id" => id} ->
        {:error,
         Error.new(:not_found, "unknown_program", "no program #{inspect(id)} in this scope", %{
           "program_id" => id
         })}

      "create_program", %{"program_id" => id} ->
        {:error, Error.new(:validation, "program_exists", "exists", %{"program_id" => id})}
    end)

    assert {:error, %Error{code: "unknown_program", message: message, details: details}} =
             DSPy.execute_program(@target, "qa", %{question: "?"})

    assert message =~ "create it with PortBridge.DSPy.create_program/2"
    assert details["worker_message"] == ~s{no program "qa" in this scope}

    assert {:error, %Error{message: message}} =
             DSPy.create_program(@target, signature: "q -> a", program_id: "qa")

    assert message =~ "pass replace: true"

    # PortBridge.request/4 gives the worker's own words.
    assert {:error, %Error{message: ~s{no program "qa" in this scope}}} =
             PortBridge.request(@target, "execute_program", %{program_id: "qa"})
  end

  test "a stub that answers something else is a mistake, said as such" do
    Test.stub(@target, fn _, _ -> :ok end)

    assert_raise ArgumentError,
                 ~r/must answer \{:ok, result\} or \{:error, %PortBridge.Error\{\}\}/,
                 fn ->
                   PortBridge.request(@target, "ping")
                 end

    Test.stub(@target, fn _, _ -> raise "boom" end)
    request = PortBridge.async_request(@target, "ping")

    assert {:error, %Error{category: :internal, code: "stub_raised", message: "boom"}} =
             PortBridge.await(request)
  end

  test "a stub goes with the process that set it" do
    parent = self()

    {pid, ref} =
      spawn_monitor(fn ->
        Test.stub(@target, fn _, _ -> {:ok, %{}} end)
        send(parent, :stubbed)
      end)

    assert_receive :stubbed
    assert_receive {:DOWN, ^ref, :process, ^pid, :normal}
    # The table forgets it once the owner's DOWN reaches the table's process.
    wait_until(fn -> :ets.match(PortBridge.Test.Stubs, {{pid, :_}, :_}) == [] end)
  end
end
