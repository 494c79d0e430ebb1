defmodule PortBridge.PoolTest do
  # PortBridge.Pool on a real NimblePool (NIMBLE_POOL_PATH) and the real worker.
  use PortBridge.TestCase, async: true

  alias PortBridge.{Pool, Request}

  if reason = skip_reason(:nimble_pool), do: @moduletag(skip: reason)

  defp start_pool(opts) do
    name = :"pool_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, [name: name] ++ opts}, id: name)
    name
  end

  # A pool of one worker, busy with a request that sends two events `delay_ms` apart
  # (its first event proves that it holds the worker).
  defp busy_pool(delay_ms) do
    pool = start_pool(worker_opts(size: 1))
    pid = ping_pid(pool)

    %Request{ref: ref} =
      request = PortBridge.async_request(pool, "emit", %{n: 2, delay_ms: delay_ms})

    assert_receive {^ref, {:event, _, _}}, 5_000
    {pool, pid, request}
  end

  test "checkout under contention: every caller gets its own reply, from the pool's workers" do
    pool = start_pool(worker_opts(size: 2))

    results =
      1..16
      |> Task.async_stream(
        fn caller ->
          for i <- 1..10 do
            {:ok, %{"caller" => ^caller, "i" => ^i}} =
              PortBridge.request(pool, "echo", %{caller: caller, i: i})

            ping_pid(pool)
          end
        end,
        max_concurrency: 16
      )
      |> Enum.flat_map(fn {:ok, pids} -> pids end)

    assert length(results) == 160
    assert results |> Enum.uniq() |> length() == 2
  end

  test "a session's requests always reach the same worker; sessions spread over the shards" do
    pool = start_pool(worker_opts(size: 3))
    sessions = for i <- 1..12, do: "session-#{i}"

    pids =
      for session <- sessions, into: %{} do
        pids = for _ <- 1..4, do: ping_pid(pool, session_id: session)
        assert [pid] = Enum.uniq(pids)
        {session, pid}
      end

    by_shard = Enum.group_by(sessions, &Pool.shard_for(pool, &1))
    assert map_size(by_shard) == 3

    for {_shard, sessions} <- by_shard do
      assert sessions |> Enum.map(&pids[&1]) |> Enum.uniq() |> length() == 1
    end

    assert pids |> Map.values() |> Enum.uniq() |> length() == 3
  end

  test "pool_timeout: a clear overloaded error when no worker is free" do
    {pool, _pid, busy} = busy_pool(2_000)

    assert {:error, %Error{category: :overloaded, code: "pool_timeout", retryable: true} = error} =
             PortBridge.request(pool, "ping", %{}, pool_timeout: 100)

    assert error.message =~ "within 100 ms"
    assert error.message =~ ":pool_timeout"
    PortBridge.cancel(busy)
  end

  test "receive timeout: cancel is sent and drained, and the worker is reused" do
    pool = start_pool(worker_opts(size: 1))
    pid = ping_pid(pool)

    {elapsed_us, result} =
      :timer.tc(fn -> PortBridge.request(pool, "sleep", %{ms: 10_000}, timeout: 100) end)

    assert {:error, %Error{category: :timeout, code: "receive_timeout"}} = result
    assert elapsed_us < 1_000_000

    assert ping_pid(pool) == pid
    assert {:ok, %{"errors" => %{"cancelled" => 1}}} = PortBridge.request(pool, "stats")
  end

  test "events and streams through a checkout" do
    pool = start_pool(worker_opts(size: 1))
    me = self()

    assert {:ok, %{"emitted" => 3}} =
             PortBridge.request(pool, "emit", %{n: 3},
               on_event: fn {name, data} -> send(me, {name, data["i"]}) end
             )

    assert [{"chunk", 0}, {"chunk", 1}, {"chunk", 2}] =
             for(_ <- 1..3, do: assert_received({"chunk", _} = e) && e)

    assert [
             {:event, "chunk", %{"i" => 0}},
             {:event, "chunk", %{"i" => 1}},
             {:ok, %{"emitted" => 2}}
           ] = Enum.to_list(PortBridge.stream(pool, "emit", %{n: 2}))

    # Halting a stream cancels the request; the worker goes back to the pool.
    assert [_] = pool |> PortBridge.stream("emit", %{n: 50, delay_ms: 100}) |> Enum.take(1)
    assert {:ok, %{"pong" => true}} = PortBridge.request(pool, "ping", %{}, timeout: 2_000)
  end

  test "an idle worker that dies is replaced" do
    pool = start_pool(worker_opts(size: 1))
    pid = ping_pid(pool)
    kill9(pid)
    assert_os_pid_exited(pid)

    # The pool sees the exit (or the next checkout does); with retry: true the call
    # also survives the race where the port is handed out as it dies.
    assert {:ok, %{"pid" => new_pid}} = PortBridge.request(pool, "ping", %{}, retry: true)
    assert new_pid != pid
  end

  test "a worker killed mid-request: its caller gets communication, the next request a fresh worker" do
    {pool, pid, request} = busy_pool(10_000)
    kill9(pid)

    assert {:error, %Error{category: :communication, code: "worker_exited"}} =
             Request.await(request)

    new_pid = ping_pid(pool)
    assert new_pid != pid
    assert_os_pid_exited(pid)
  end

  test "an error whose recovery is restart_worker replaces the worker" do
    # (the worker logs the crash's traceback at error level: keep it off the report)
    pool = start_pool(worker_opts(size: 1, worker_args: ["--log-level", "critical"]))
    pid = ping_pid(pool)

    assert {:error, %Error{category: :internal, recovery: :restart_worker}} =
             PortBridge.request(pool, "crash")

    assert ping_pid(pool) != pid
    assert_os_pid_exited(pid)
  end

  test "failing starts back off, then the shard gives up and the failure reaches the supervisor" do
    Process.flag(:trap_exit, true)
    log = Path.join(System.tmp_dir!(), "pb_starts_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(log) end)

    {:ok, sup} =
      Pool.start_link(
        name: :failing_pool,
        size: 1,
        executable: stand_in("exit_at_once"),
        env: %{"PB_START_LOG" => log},
        max_start_failures: 4,
        start_backoff_min: 40,
        start_backoff_max: 1_000,
        max_restarts: 0
      )

    # A caller waiting for a worker gets the start failure, not a hang.
    assert {:error,
            %Error{category: :initialization, code: "worker_start_failed", details: details}} =
             PortBridge.request(:failing_pool, "ping", %{}, pool_timeout: 10_000)

    assert %{"exit_status" => 2, "consecutive_failures" => 4} = details

    # The shard stopped; with max_restarts: 0 the pool's supervisor exits too.
    assert_receive {:EXIT, ^sup, :shutdown}, 5_000

    starts = log |> File.read!() |> String.split() |> Enum.map(&String.to_integer/1)
    assert length(starts) == 4

    gaps_ms =
      starts
      |> Enum.chunk_every(2, 1, :discard)
      |> Enum.map(fn [a, b] -> div(b - a, 1_000_000) end)

    # 40, 80, 160 ms of backoff (plus spawn time): the attempts slow down.
    assert [g1, g2, g3] = gaps_ms
    assert g1 >= 40 and g2 >= 80 and g3 >= 160
  end

  test "lazy pools start no worker before the first checkout; eager ones do" do
    log = Path.join(System.tmp_dir!(), "pb_lazy_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(log) end)

    failing = [
      executable: stand_in("exit_at_once"),
      env: %{"PB_START_LOG" => log},
      size: 1,
      start_backoff_min: 5_000
    ]

    lazy = start_pool([lazy: true] ++ failing)
    for %{pid: pid} <- Pool.info(lazy), do: :sys.get_state(pid)
    refute File.exists?(log)

    eager = start_pool([lazy: false] ++ failing)
    assert [%{start_failures: _}] = Pool.info(eager)
    wait_until(fn -> File.exists?(log) end)
  end

  test "stopping the pool ends every worker" do
    pool = start_pool(worker_opts(size: 2))
    pids = Enum.uniq(for _ <- 1..6, do: ping_pid(pool))
    stop_supervised!(pool)
    for pid <- pids, do: assert_os_pid_exited(pid)
    assert {:error, %Error{category: :communication}} = PortBridge.request(pool, "ping")
  end

  test "a pool that stops while a request holds a worker: the request ends, then its worker at once" do
    {pool, pid, request} = busy_pool(100)
    stop_supervised!(pool)
    assert {:ok, %{"emitted" => 2}} = Request.await(request)
    # Closed by the caller that held it (no pool to give it back to), not left to
    # the reaper, which would signal it 2 s after the pool's death.
    assert_os_pid_exited(pid, 1_000)
  end

  test "options are checked at start" do
    assert_raise ArgumentError, ~r/:name must be an atom/, fn ->
      Pool.start_link(worker_opts(name: "x"))
    end

    assert_raise ArgumentError, ~r/unknown PortBridge.Pool options: \[:pool_size\]/, fn ->
      Pool.start_link(worker_opts(name: :x, pool_size: 2))
    end

    assert_raise ArgumentError, ~r/:size must be a positive integer/, fn ->
      Pool.start_link(worker_opts(name: :x, size: 0))
    end
  end
end
