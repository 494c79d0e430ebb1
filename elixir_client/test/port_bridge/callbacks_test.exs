defmodule PortBridge.CallbacksTest do
  # Callbacks at the real boundary (issue 11): the real worker with a backend whose
  # commands call back (tests/support/callback_backend.py), the real Elixir client,
  # on a Worker and on both pool strategies.
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Callbacks, Pool, Request, Worker}

  @repo_support Path.expand("../../../tests/support", __DIR__)

  # The test backends of both suites: pb_test_backend (emit) and callback_backend.
  defp opts(extra \\ []) do
    [worker_args: ["--backend-module", "callback_backend:backend"]]
    |> worker_opts()
    |> Keyword.merge(
      [
        env: %{
          "PYTHONPATH" =>
            Enum.join([Path.expand("../support/python", __DIR__), @repo_support], ":")
        }
      ] ++
        extra
    )
  end

  defp call_back(target, name, args, opts) do
    PortBridge.request(
      target,
      "call_back",
      %{name: name, args: args} |> Map.merge(Map.new(opts[:extra] || [])),
      Keyword.delete(opts, :extra)
    )
  end

  defp start_pool(strategy) do
    name = :"cb_pool_#{strategy}_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, [name: name, size: 2, strategy: strategy] ++ opts()}, id: name)
    name
  end

  setup do
    worker = start_supervised!({Worker, opts()})
    {:ok, _} = Worker.await_ready(worker)
    %{worker: worker}
  end

  test "the ready event announces callbacks (protocol 1.1)", %{worker: worker} do
    assert {:ok, %{"protocol" => 1, "protocol_minor" => minor, "features" => features}} =
             Worker.await_ready(worker)

    assert minor >= 1 and "callbacks" in features
  end

  test "a tool the request registers is called back; its result reaches the handler", %{
    worker: worker
  } do
    search = fn %{"q" => q} -> %{"hits" => [q <> "!"]} end

    assert {:ok, %{"results" => [%{"hits" => ["elixir!"]}, %{"hits" => ["elixir!"]}]}} =
             call_back(worker, "search", %{q: "elixir"},
               callbacks: %{"search" => search},
               extra: [times: 2]
             )
  end

  test "a raise becomes an execution error of the request; caught, the handler sees its category",
       %{worker: worker} do
    boom = fn _ -> raise ArgumentError, "no such row" end

    capture_log(fn ->
      assert {:error, %Error{category: :execution, message: message}} =
               call_back(worker, "boom", %{}, callbacks: %{"boom" => boom})

      assert message =~ "no such row"

      assert {:ok, %{"caught" => "execution"}} =
               call_back(worker, "boom", %{}, callbacks: %{"boom" => boom}, extra: [catch: true])
    end)
  end

  test "{:error, message} and values JSON cannot carry", %{worker: worker} do
    assert {:ok, %{"caught" => "execution", "message" => m1}} =
             call_back(worker, "e", %{},
               callbacks: %{"e" => fn _ -> {:error, "denied"} end},
               extra: [catch: true]
             )

    assert m1 =~ "denied"

    assert {:ok, %{"caught" => "serialization"}} =
             call_back(worker, "p", %{},
               callbacks: %{"p" => fn _ -> self() end},
               extra: [catch: true]
             )
  end

  test "a name the client did not register is not_found, and no atom is made", %{worker: worker} do
    name = "unregistered_#{System.unique_integer([:positive])}"

    assert {:ok, %{"caught" => "not_found"}} =
             call_back(worker, name, %{}, callbacks: %{}, extra: [catch: true])

    assert_raise ArgumentError, fn -> String.to_existing_atom(name) end
  end

  test "a callback that never answers: the request ends at its deadline, the callback is stopped",
       %{worker: worker} do
    me = self()
    hang = fn _ -> send(me, {:started, self()}) && Process.sleep(:infinity) end

    {us, result} =
      :timer.tc(fn ->
        call_back(worker, "hang", %{}, callbacks: %{"hang" => hang}, timeout: 400)
      end)

    assert {:error, %Error{category: :timeout}} = result
    assert us < 1_200_000
    assert_received {:started, pid}
    wait_until(fn -> not Process.alive?(pid) end)
    assert {:ok, _} = PortBridge.request(worker, "ping")
  end

  test "a callback may make requests of its own on the same worker (no deadlock)", %{
    worker: worker
  } do
    nested = fn %{"n" => n} ->
      {:ok, %{"n" => m}} = PortBridge.request(worker, "echo", %{n: n + 1})
      m * 10
    end

    assert {:ok, %{"results" => [60]}} =
             call_back(worker, "nested", %{n: 5}, callbacks: %{"nested" => nested})
  end

  test "many callbacks at once, across requests: each gets its own answer", %{worker: worker} do
    double = fn %{"i" => i} -> 2 * i end

    results =
      1..4
      |> Task.async_stream(fn _ ->
        PortBridge.request(worker, "call_back_parallel", %{name: "double", n: 50},
          callbacks: %{"double" => double}
        )
      end)
      |> Enum.map(fn {:ok, {:ok, result}} -> result end)

    for %{"outcomes" => outcomes, "results" => values} <- results do
      assert outcomes == %{"ok" => 50}
      assert Enum.sort(values) == Enum.map(0..49, &(2 * &1))
    end
  end

  test "callbacks registered for a session serve every request of it", %{worker: worker} do
    session = "cb-#{System.unique_integer([:positive])}"
    :ok = Callbacks.register(session, %{"whoami" => fn _ -> session end})
    on_exit(fn -> Callbacks.unregister(session) end)

    assert {:ok, %{"results" => [^session]}} =
             call_back(worker, "whoami", %{}, session_id: session)
  end

  test "cancelling the request stops a running callback", %{worker: worker} do
    me = self()
    hang = fn _ -> send(me, {:started, self()}) && Process.sleep(:infinity) end

    request =
      PortBridge.async_request(worker, "call_back", %{name: "hang", args: %{}},
        callbacks: %{"hang" => hang}
      )

    assert_receive {:started, pid}, 5_000
    Request.cancel(request)
    wait_until(fn -> not Process.alive?(pid) end)
    assert {:ok, %{"callbacks" => _}} = PortBridge.request(worker, "stats")
  end

  test "a slow callback blocks no other caller", %{worker: worker} do
    gate = fn _ -> receive(do: (:go -> "released")) end
    me = self()

    slow =
      Task.async(fn ->
        call_back(worker, "gate", %{},
          callbacks: %{"gate" => fn a -> send(me, {:gate, self()}) && gate.(a) end}
        )
      end)

    assert_receive {:gate, pid}, 5_000
    for i <- 1..20, do: assert({:ok, %{"i" => ^i}} = PortBridge.request(worker, "echo", %{i: i}))
    send(pid, :go)
    assert {:ok, %{"results" => ["released"]}} = Task.await(slow)
  end

  test "on a multiplexed pool" do
    pool = start_pool(:multiplexed)

    for s <- ["a", "b", "c", nil] do
      assert {:ok, %{"results" => [%{"s" => ^s}]}} =
               call_back(pool, "echo_s", %{},
                 session_id: s,
                 callbacks: %{"echo_s" => fn _ -> %{"s" => s} end}
               )
    end
  end

  @tag skip: skip_reason(:nimble_pool)
  test "on an exclusive pool, sync and async" do
    pool = start_pool(:exclusive)
    add = fn %{"a" => a, "b" => b} -> a + b end

    assert {:ok, %{"results" => [3]}} =
             call_back(pool, "add", %{a: 1, b: 2}, callbacks: %{"add" => add})

    request =
      PortBridge.async_request(pool, "call_back", %{name: "add", args: %{a: 2, b: 2}},
        callbacks: %{"add" => add}
      )

    assert {:ok, %{"results" => [4]}} = Request.await(request)
  end
end
