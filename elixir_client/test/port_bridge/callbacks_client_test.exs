defmodule PortBridge.CallbacksClientTest do
  # The client's side of callbacks (issue 11), against a stand-in peer that sends
  # callback events of every shape (test/support/bin/callback_peer.py). The real
  # worker's side is tested in callbacks_test.exs.
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Callbacks, Worker}

  setup do
    worker =
      start_supervised!({Worker, executable: python(), args: [stand_in("callback_peer.py")]})

    {:ok, _} = Worker.await_ready(worker)
    %{worker: worker}
  end

  defp ask(worker, calls, opts) do
    PortBridge.request(worker, "ask", %{calls: calls}, opts)
  end

  test "a registered function answers; its result comes back to the worker", %{worker: worker} do
    add = fn %{"a" => a, "b" => b} -> a + b end

    assert {:ok, [%{"result" => 5}, %{"result" => %{"got" => %{"x" => 1}}}]} =
             ask(worker, [%{name: "add", args: %{a: 2, b: 3}}, %{name: "got", args: %{x: 1}}],
               callbacks: %{"add" => add, "got" => &%{"got" => &1}}
             )
  end

  test "{:ok, value} and {:error, message}", %{worker: worker} do
    assert {:ok,
            [
              %{"result" => 1},
              %{"error" => %{"category" => "execution", "message" => "no such user"}}
            ]} =
             ask(worker, [%{name: "ok"}, %{name: "err"}],
               callbacks: %{
                 "ok" => fn _ -> {:ok, 1} end,
                 "err" => fn _ -> {:error, "no such user"} end
               }
             )
  end

  test "a raise, an exit, a value JSON cannot carry: categorised errors", %{worker: worker} do
    callbacks = %{
      "raise" => fn _ -> raise "boom" end,
      "exit" => fn _ -> exit(:bad) end,
      "pid" => fn _ -> self() end,
      "tuple" => fn _ -> {1, 2} end
    }

    capture_log(fn ->
      assert {:ok,
              [
                %{"error" => %{"category" => "execution", "message" => "boom"}},
                %{"error" => %{"category" => "execution", "message" => exit_message}},
                %{"error" => %{"category" => "serialization"}},
                %{"error" => %{"category" => "serialization"}}
              ]} =
               ask(worker, Enum.map(~w(raise exit pid tuple), &%{name: &1}), callbacks: callbacks)

      assert exit_message =~ ":bad"
    end)
  end

  test "a name nobody registered is not_found, and never becomes an atom", %{worker: worker} do
    name = "no_such_callback_#{System.unique_integer([:positive])}"

    assert {:ok, [%{"error" => %{"category" => "not_found", "message" => message}}]} =
             ask(worker, [%{name: name}], callbacks: %{})

    assert message =~ name
    assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
  end

  test "a callback slower than its timeout_ms is stopped and answered with timeout", %{
    worker: worker
  } do
    me = self()

    slow = fn _ ->
      send(me, {:started, self()})
      Process.sleep(10_000)
    end

    assert {:ok, [%{"error" => %{"category" => "timeout"}}]} =
             ask(worker, [%{name: "slow", timeout_ms: 200}], callbacks: %{"slow" => slow})

    assert_received {:started, pid}
    refute Process.alive?(pid)
  end

  test "a slow callback blocks no other reply", %{worker: worker} do
    gate = fn _ -> receive(do: (:go -> :released)) end

    slow =
      Task.async(fn ->
        ask(worker, [%{name: "gate"}], callbacks: %{"gate" => gate}, timeout: 10_000)
      end)

    for i <- 1..20, do: assert({:ok, %{"i" => ^i}} = PortBridge.request(worker, "echo", %{i: i}))

    %{callbacks: running} = :sys.get_state(worker)
    [%{pid: pid}] = Map.values(running)
    send(pid, :go)
    assert {:ok, [%{"result" => "released"}]} = Task.await(slow)
  end

  test "a callback may make requests of its own, on the same worker", %{worker: worker} do
    nested = fn %{"x" => x} ->
      {:ok, %{"x" => y}} = PortBridge.request(worker, "echo", %{x: x * 10})
      y
    end

    assert {:ok, [%{"result" => 70}]} =
             ask(worker, [%{name: "nested", args: %{x: 7}}], callbacks: %{"nested" => nested})
  end

  test "callbacks registered per session; a request's own come first", %{worker: worker} do
    session = "cb-session-#{System.unique_integer([:positive])}"

    :ok =
      Callbacks.register(session, %{
        "who" => fn _ -> "session" end,
        "only" => fn _ -> "session only" end
      })

    on_exit(fn -> Callbacks.unregister(session) end)

    assert {:ok, [%{"result" => "request"}, %{"result" => "session only"}]} =
             ask(worker, [%{name: "who"}, %{name: "only"}],
               session_id: session,
               callbacks: %{"who" => fn _ -> "request" end}
             )

    # Without the session, the name is unknown.
    assert {:ok, [%{"error" => %{"category" => "not_found"}}]} =
             ask(worker, [%{name: "only"}], [])
  end

  test "cancelling the request stops its callbacks", %{worker: worker} do
    me = self()
    hang = fn _ -> send(me, {:started, self()}) && Process.sleep(:infinity) end

    request =
      PortBridge.async_request(worker, "ask", %{calls: [%{name: "hang"}]},
        callbacks: %{"hang" => hang}
      )

    assert_receive {:started, pid}, 5_000
    PortBridge.cancel(request)
    wait_until(fn -> not Process.alive?(pid) end)
    assert %{callbacks: running} = :sys.get_state(worker)
    assert running == %{}
  end

  test "a request's deadline bounds its callbacks", %{worker: worker} do
    me = self()
    hang = fn _ -> send(me, {:started, self()}) && Process.sleep(:infinity) end

    {us, result} =
      :timer.tc(fn ->
        ask(worker, [%{name: "hang"}], callbacks: %{"hang" => hang}, timeout: 300)
      end)

    assert {:error, %Error{category: :timeout}} = result
    assert us < 1_000_000
    assert_received {:started, pid}
    wait_until(fn -> not Process.alive?(pid) end)
  end

  test "callback events of the wrong shape: logged, answered where they can be, the Worker serves on",
       %{worker: worker} do
    log =
      capture_log(fn ->
        for data <- [
              %{},
              [],
              "x",
              %{callback_id: 5, name: "a"},
              %{callback_id: "c", name: %{}},
              %{name: "a"}
            ] do
          assert {:ok, %{"sent" => true}} =
                   PortBridge.request(worker, "raw", %{data: data}, callbacks: %{})
        end
      end)

    assert log =~ "callback event of the wrong shape"
    assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1})
  end

  test "a flood of callbacks: every one answered", %{worker: worker} do
    calls = for i <- 1..300, do: %{name: "double", args: %{n: i}}

    assert {:ok, results} =
             ask(worker, calls,
               callbacks: %{"double" => fn %{"n" => n} -> 2 * n end},
               timeout: 30_000
             )

    assert Enum.map(results, & &1["result"]) == Enum.map(1..300, &(2 * &1))
  end

  test "callbacks must be a map of names to 1-arity functions", %{worker: worker} do
    assert_raise ArgumentError, ~r/callbacks must map names/, fn ->
      PortBridge.request(worker, "echo", %{}, callbacks: %{search: fn _ -> 1 end})
    end

    assert_raise ArgumentError, ~r/callbacks must map names/, fn ->
      PortBridge.request(worker, "echo", %{}, callbacks: %{"s" => fn _, _ -> 1 end})
    end
  end
end
