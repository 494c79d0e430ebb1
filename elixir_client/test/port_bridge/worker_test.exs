defmodule PortBridge.WorkerTest do
  # Against the real Python worker (`python -m bridge worker`), core commands plus
  # the test backend's `emit` (test/support/python/pb_test_backend.py).
  use PortBridge.TestCase, async: true

  alias PortBridge.{Request, Worker}

  setup do
    worker = start_supervised!({Worker, worker_opts()})
    {:ok, ready} = Worker.await_ready(worker)
    %{worker: worker, os_pid: ready["pid"]}
  end

  test "waits for ready, then reports the worker's handshake", %{worker: worker, os_pid: os_pid} do
    assert %{
             status: :ready,
             os_pid: ^os_pid,
             ready: %{"protocol" => 1, "limits" => %{"max_frame_bytes" => _}}
           } = Worker.info(worker)

    assert ping_pid(worker) == os_pid
  end

  test "a request made before ready waits for it instead of failing" do
    worker = start_supervised!({Worker, worker_opts()}, id: :early)
    assert %{status: :starting} = Worker.info(worker)
    assert {:ok, %{"pong" => true}} = PortBridge.request(worker, "ping")
  end

  test "many concurrent callers each get their own reply", %{worker: worker} do
    results =
      1..64
      |> Task.async_stream(
        fn i ->
          {i, PortBridge.request(worker, "echo", %{"i" => i, "pad" => String.duplicate("x", i)})}
        end,
        max_concurrency: 64
      )
      |> Enum.map(fn {:ok, result} -> result end)

    for {i, result} <- results,
        do: assert(result == {:ok, %{"i" => i, "pad" => String.duplicate("x", i)}})

    assert {:ok, %{"requests" => %{"echo" => 64}}} = PortBridge.request(worker, "stats")
  end

  test "a session's requests run in arrival order; requests without one do not wait", %{
    worker: worker
  } do
    slow = Worker.async_request(worker, "sleep", %{ms: 300}, session_id: "ordered")
    fast = Worker.async_request(worker, "echo", %{n: 1}, session_id: "ordered")
    assert first_reply(slow, fast) == :slow
    assert {:ok, %{"n" => 1}} = Request.await(fast)
    assert {:ok, %{"slept_ms" => 300}} = Request.await(slow)

    slow = Worker.async_request(worker, "sleep", %{ms: 300})
    fast = Worker.async_request(worker, "echo", %{n: 2})
    assert first_reply(slow, fast) == :fast
    assert {:ok, %{"slept_ms" => 300}} = Request.await(slow)
  end

  # Which of two requests gets its final reply first (its message stays in the
  # mailbox for Request.await/1).
  defp first_reply(%Request{ref: slow} = slow_request, %Request{ref: fast}) do
    receive do
      {ref, {:reply, _}} = reply when ref == slow or ref == fast ->
        send(self(), reply)
        if ref == slow_request.ref, do: :slow, else: :fast
    after
      5_000 -> flunk("no reply")
    end
  end

  test "a timeout answers at the deadline and cancels the request in the worker", %{
    worker: worker
  } do
    {elapsed_us, result} =
      :timer.tc(fn ->
        PortBridge.request(worker, "sleep", %{ms: 10_000}, timeout: 100, session_id: "lane")
      end)

    assert {:error, %Error{category: :timeout, code: "receive_timeout", retryable: true}} = result
    assert elapsed_us in 100_000..1_000_000

    # The cancel freed the session's lane: the next request does not wait 10 s.
    assert {:ok, %{"after" => true}} =
             PortBridge.request(worker, "echo", %{after: true}, session_id: "lane", timeout: 2_000)

    assert {:ok, %{"errors" => %{"cancelled" => 1}, "requests" => %{"cancel" => 1}}} =
             PortBridge.request(worker, "stats")
  end

  test "cancel/1 cancels a request in flight", %{worker: worker} do
    request = Worker.async_request(worker, "sleep", %{ms: 10_000}, session_id: "c")
    assert :ok = PortBridge.cancel(request)
    assert {:ok, %{}} = PortBridge.request(worker, "echo", %{}, session_id: "c", timeout: 2_000)
    refute_received {_, {:reply, _}}
  end

  test "a caller that dies cancels its requests", %{worker: worker} do
    caller =
      spawn(fn -> PortBridge.request(worker, "sleep", %{ms: 10_000}, session_id: "orphan") end)

    wait_until(fn -> Worker.info(worker).in_flight == 1 end)
    Process.exit(caller, :kill)

    assert {:ok, %{}} =
             PortBridge.request(worker, "echo", %{}, session_id: "orphan", timeout: 2_000)
  end

  test "events reach the caller in order, before the reply", %{worker: worker} do
    me = self()
    on_event = fn event -> send(me, {:event, event}) end

    assert {:ok, %{"emitted" => 4}} =
             PortBridge.request(worker, "emit", %{n: 4, event: "progress"}, on_event: on_event)

    events =
      for _ <- 1..4, do: assert_received({:event, {"progress", %{"i" => _}} = event}) && event

    assert Enum.map(events, fn {_, %{"i" => i}} -> i end) == [0, 1, 2, 3]
  end

  test "a request as a stream of events; halting it early cancels it", %{worker: worker} do
    assert [
             {:event, "chunk", %{"i" => 0}},
             {:event, "chunk", %{"i" => 1}},
             {:ok, %{"emitted" => 2}}
           ] = Enum.to_list(PortBridge.stream(worker, "emit", %{n: 2}))

    assert [{:event, "chunk", %{"i" => 0}}] =
             worker
             |> PortBridge.stream("emit", %{n: 50, delay_ms: 100}, session_id: "st")
             |> Enum.take(1)

    assert {:ok, %{}} = PortBridge.request(worker, "echo", %{}, session_id: "st", timeout: 2_000)
    assert {:ok, %{"errors" => %{"cancelled" => 1}}} = PortBridge.request(worker, "stats")
  end

  test "the worker's errors come back categorised by the shared table", %{worker: worker} do
    assert {:error, %Error{category: :not_found, code: "unknown_command", recovery: :abandon}} =
             PortBridge.request(worker, "no_such_command")

    assert {:error,
            %Error{category: :validation, code: "invalid_args", details: %{"path" => "args.ms"}}} =
             PortBridge.request(worker, "sleep", %{})

    assert_raise Error, ~r/not_found\/unknown_command/, fn ->
      PortBridge.request!(worker, "no_such_command")
    end
  end

  test "a frame above the worker's max_frame_bytes is refused by the client" do
    worker =
      start_supervised!({Worker, worker_opts(worker_args: ["--max-frame-bytes", "1024"])},
        id: :small
      )

    assert {:error,
            %Error{
              category: :protocol,
              code: "frame_too_large",
              details: %{"max_frame_bytes" => 1024}
            }} = PortBridge.request(worker, "echo", %{blob: String.duplicate("x", 2_000)})

    assert {:ok, _} = PortBridge.request(worker, "echo", %{blob: String.duplicate("x", 500)})
  end

  test "kill -9 mid-request: every pending caller gets communication at once, and a fresh worker takes over" do
    worker = start_supervised!({Worker, [name: :killed_worker] ++ worker_opts()}, id: :killed)
    {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)

    requests =
      for i <- 1..5,
          do:
            Worker.async_request(:killed_worker, "sleep", %{ms: 10_000},
              session_id: "s#{rem(i, 2)}"
            )

    wait_until(fn -> Worker.info(worker).in_flight == 5 end)

    kill9(os_pid)

    {elapsed_us, results} = :timer.tc(fn -> Enum.map(requests, &Request.await/1) end)
    assert elapsed_us < 2_000_000

    for result <- results do
      assert {:error, %Error{category: :communication, code: "worker_exited", retryable: true}} =
               result
    end

    # The supervisor restarted it: a new process under the same name, a new Python.
    new_worker = wait_until(fn -> (pid = Process.whereis(:killed_worker)) != worker && pid end)
    {:ok, %{"pid" => new_os_pid}} = Worker.await_ready(new_worker)
    assert new_os_pid != os_pid
    assert ping_pid(:killed_worker) == new_os_pid
    assert_os_pid_exited(os_pid)
  end

  test "the Python process dies with its owner, even when the owner is killed", %{
    worker: worker,
    os_pid: os_pid
  } do
    stop_supervised!(Worker)
    assert_os_pid_exited(os_pid)
    refute Process.alive?(worker)

    {:ok, worker} = Worker.start(worker_opts())
    {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)
    Process.exit(worker, :kill)
    assert_os_pid_exited(os_pid)
  end

  test "a worker that ignores EOF and SIGTERM is killed when its owner dies" do
    {:ok, worker} = Worker.start(executable: python(), args: [stand_in("stubborn.py")])

    {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)
    Process.exit(worker, :kill)
    # grace (0.2 s announced + 1 s margin), SIGTERM (ignored), then SIGKILL after 0.5 s
    assert_os_pid_exited(os_pid, 5_000)
  end

  test "a worker that exits at start fails its callers with initialization" do
    Process.flag(:trap_exit, true)
    {:ok, worker} = Worker.start_link(executable: stand_in("exit_at_once"))
    result = PortBridge.request(worker, "ping")

    assert {:error,
            %Error{
              category: :initialization,
              code: "worker_start_failed",
              details: %{"exit_status" => 2}
            }} = result

    assert_receive {:EXIT, ^worker, {:shutdown, {:worker_start_failed, 2}}}
  end

  test "a worker killed by a signal before ready fails its callers with communication, not initialization" do
    Process.flag(:trap_exit, true)
    # Never ready (it is not a worker), so the kill surely lands before ready.
    {:ok, worker} = Worker.start_link(executable: "/bin/sleep", args: ["30"])
    %{os_pid: os_pid, status: :starting} = Worker.info(worker)
    request = Worker.async_request(worker, "ping")
    wait_until(fn -> Worker.info(worker).in_flight == 1 end)
    kill9(os_pid)

    assert {:error,
            %Error{
              category: :communication,
              code: "worker_exited",
              retryable: true,
              details: %{"exit_status" => 137, "signal" => 9}
            }} = Request.await(request)

    assert_receive {:EXIT, ^worker, {:shutdown, {:worker_start_failed, 137}}}
  end

  test "a worker that never sends ready fails at :ready_timeout and is reaped" do
    Process.flag(:trap_exit, true)
    {:ok, worker} = Worker.start_link(executable: "/bin/sleep", args: ["30"], ready_timeout: 200)
    %{os_pid: os_pid} = Worker.info(worker)

    assert {:error, %Error{category: :initialization, code: "ready_timeout"}} =
             PortBridge.request(worker, "ping")

    assert_receive {:EXIT, ^worker, {:shutdown, %Error{code: "ready_timeout"}}}
    assert_os_pid_exited(os_pid)
  end

  test "options are checked at start_link" do
    assert_raise ArgumentError,
                 ~r/unknown option :pool_size for PortBridge.Worker.start_link\/1; valid options: :name, /,
                 fn ->
                   Worker.start_link(worker_opts(pool_size: 3))
                 end

    assert_raise ArgumentError, ~r/does not exist/, fn ->
      Worker.start_link(python: "/no/such/python")
    end

    assert_raise ArgumentError, ~r/:format/, fn ->
      Worker.start_link(worker_opts(format: :xml))
    end
  end

  test "a call to a worker that is not running is a communication error" do
    assert {:error, %Error{category: :communication, code: "not_running"}} =
             PortBridge.request(:no_such_worker, "ping")
  end
end
