defmodule PortBridge.PoolTest do
  # PortBridge.Pool against the real worker, in both strategies (the exclusive one on
  # a real NimblePool: NIMBLE_POOL_PATH).
  use PortBridge.TestCase, async: true

  alias PortBridge.{Pool, Request}

  defp start_pool(opts) do
    name = :"pool_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, [name: name] ++ opts}, id: name)
    name
  end

  # A pool busy with a request that sends two events `delay_ms` apart (its first
  # event proves that it holds the worker).
  defp busy(pool, delay_ms, opts \\ []) do
    %Request{ref: ref} =
      request = PortBridge.async_request(pool, "emit", %{n: 2, delay_ms: delay_ms}, opts)

    assert_receive {^ref, {:event, _, _}}, 5_000
    request
  end

  for strategy <- [:multiplexed, :exclusive] do
    describe "both strategies, #{strategy}:" do
      @describetag strategy: strategy
      if strategy == :exclusive and skip_reason(:nimble_pool),
        do: @describetag(skip: skip_reason(:nimble_pool))

      setup %{strategy: strategy}, do: %{opts: worker_opts(strategy: strategy)}

      test "under contention every caller gets its own reply, from the pool's workers", %{
        opts: opts
      } do
        pool = start_pool([size: 2] ++ opts)

        results =
          1..16
          |> Task.async_stream(
            fn caller ->
              for i <- 1..10 do
                {:ok, %{"caller" => ^caller, "i" => ^i}} =
                  PortBridge.request(pool, "echo", %{caller: caller, i: i})

                # Work that stays in flight a while, so that the load spreads.
                {:ok, _} = PortBridge.request(pool, "sleep", %{ms: 20})
                ping_pid(pool)
              end
            end,
            max_concurrency: 16
          )
          |> Enum.flat_map(fn {:ok, pids} -> pids end)

        assert length(results) == 160
        assert results |> Enum.uniq() |> length() == 2
      end

      test "a session's requests always reach the same worker; sessions spread over them", %{
        opts: opts
      } do
        pool = start_pool([size: 3] ++ opts)
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

      test "a timeout sends cancel, and the worker serves on", %{opts: opts} do
        pool = start_pool([size: 1] ++ opts)
        pid = ping_pid(pool)

        {ms, result} =
          elapsed_ms(fn -> PortBridge.request(pool, "sleep", %{ms: 10_000}, timeout: 100) end)

        assert {:error, %Error{category: :timeout, code: "receive_timeout"}} = result
        assert ms >= 100 and ms < 100 + tolerance(500), "took #{ms} ms"

        assert ping_pid(pool) == pid

        wait_until(fn ->
          match?({:ok, %{"errors" => %{"cancelled" => 1}}}, PortBridge.request(pool, "stats"))
        end)
      end

      test "events and streams", %{opts: opts} do
        pool = start_pool([size: 1] ++ opts)
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

        # Halting a stream cancels the request; the worker serves on.
        assert [_] = pool |> PortBridge.stream("emit", %{n: 50, delay_ms: 100}) |> Enum.take(1)
        assert {:ok, %{"pong" => true}} = PortBridge.request(pool, "ping", %{}, timeout: 2_000)
      end

      test "an idle worker that dies is replaced", %{opts: opts} do
        pool = start_pool([size: 1] ++ opts)
        pid = ping_pid(pool)
        kill9(pid)
        assert_os_pid_exited(pid)

        # retry: true covers the request that meets the dying port.
        assert {:ok, %{"pid" => new_pid}} = PortBridge.request(pool, "ping", %{}, retry: true)
        assert new_pid != pid
      end

      test "a worker killed mid-request: its caller gets communication, the next request a fresh worker",
           %{opts: opts} do
        pool = start_pool([size: 1] ++ opts)
        pid = ping_pid(pool)
        request = busy(pool, 10_000)
        kill9(pid)

        assert {:error, %Error{category: :communication, code: "worker_exited"}} =
                 Request.await(request)

        assert ping_pid(pool) != pid
        assert_os_pid_exited(pid)
      end

      test "an internal error replaces the worker once it is idle", %{strategy: strategy} do
        # (the worker logs the crash's traceback at error level: keep it off the report)
        pool =
          start_pool(
            worker_opts(size: 1, strategy: strategy, worker_args: ["--log-level", "critical"])
          )

        pid = ping_pid(pool)

        assert {:error, %Error{category: :internal, recovery: :restart_worker}} =
                 PortBridge.request(pool, "crash")

        assert ping_pid(pool) != pid
        assert_os_pid_exited(pid)
      end

      test "failing starts fail their callers at once, back off, then reach the supervisor", %{
        strategy: strategy
      } do
        Process.flag(:trap_exit, true)
        log = Path.join(System.tmp_dir!(), "pb_starts_#{System.unique_integer([:positive])}")
        on_exit(fn -> File.rm(log) end)
        name = :"failing_pool_#{strategy}"

        {:ok, sup} =
          Pool.start_link(
            name: name,
            strategy: strategy,
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
                 PortBridge.request(name, "ping", %{}, timeout: 10_000)

        assert %{"exit_status" => 2} = details

        # After 4 failed starts the Worker stops; with max_restarts: 0 the pool exits too.
        assert_receive {:EXIT, ^sup, :shutdown}, 5_000
        assert {:error, %Error{category: :communication}} = PortBridge.request(name, "ping")

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

      test "lazy pools start no Python before the first request; eager ones do", %{opts: opts} do
        log = Path.join(System.tmp_dir!(), "pb_lazy_#{System.unique_integer([:positive])}")
        on_exit(fn -> File.rm(log) end)

        failing =
          [executable: stand_in("exit_at_once"), env: %{"PB_START_LOG" => log}, size: 1] ++
            Keyword.take(opts, [:strategy]) ++ [start_backoff_min: 5_000]

        lazy = start_pool([lazy: true] ++ failing)
        assert [%{status: :idle}] = Pool.info(lazy)
        refute File.exists?(log)

        eager = start_pool([lazy: false] ++ failing)
        assert [%{}] = Pool.info(eager)
        wait_until(fn -> File.exists?(log) end)
      end

      test "a stopped pool ends every worker, and its name no longer resolves", %{opts: opts} do
        pool = start_pool([size: 2] ++ opts)
        pids = Enum.uniq(for _ <- 1..6, do: ping_pid(pool))
        assert {:ok, _} = Pool.lookup(pool)
        stop_supervised!(pool)
        for pid <- pids, do: assert_os_pid_exited(pid)
        assert Pool.lookup(pool) == :error

        assert {:error, %Error{category: :communication}} = PortBridge.request(pool, "ping")
      end

      test "a pool that stops while a request runs: the request fails with communication at once",
           %{opts: opts} do
        pool = start_pool([size: 1] ++ opts)
        pid = ping_pid(pool)
        request = busy(pool, 5_000)
        {ms, result} = elapsed_ms(fn -> stop_supervised!(pool) && Request.await(request) end)
        assert {:error, %Error{category: :communication}} = result
        assert ms < tolerance(3_000)
        assert_os_pid_exited(pid)
      end
    end
  end

  describe "multiplexed only:" do
    test "many requests in flight on one worker at once" do
      pool = start_pool(worker_opts(size: 1))
      ping_pid(pool)

      requests =
        for i <- 1..20, do: PortBridge.async_request(pool, "sleep", %{ms: 30_000}, meta: %{i: i})

      # All 20 run in the Python at once (one at a time, only one would).
      wait_until(
        fn -> match?({:ok, %{"running" => 20}}, PortBridge.request(pool, "stats")) end,
        5_000,
        "20 requests running at once"
      )

      Enum.each(requests, &Request.cancel/1)
    end

    test "requests without a session go to the least loaded worker" do
      pool = start_pool(worker_opts(size: 2))

      # Load one worker with 5 long requests (a session pins them there).
      session = "pinned"
      pinned_pid = ping_pid(pool, session_id: session)
      # One runs, four wait in the session's lane: all five count as its load.
      first = busy(pool, 3_000, session_id: session)

      long =
        for _ <- 1..4,
            do:
              PortBridge.async_request(pool, "emit", %{n: 2, delay_ms: 3_000}, session_id: session)

      # Requests without a session avoid it.
      for _ <- 1..6, do: assert(ping_pid(pool) != pinned_pid)
      Enum.each([first | long], &Request.cancel/1)
    end

    test "default size is the number of schedulers online" do
      pool = start_pool(worker_opts(lazy: true))
      assert length(Pool.info(pool)) == System.schedulers_online()
    end
  end

  describe "exclusive only:" do
    if reason = skip_reason(:nimble_pool), do: @describetag(skip: reason)

    test "pool_timeout: a clear overloaded error when no worker is free" do
      pool = start_pool(worker_opts(size: 1, strategy: :exclusive))
      busy = busy(pool, 2_000)

      assert {:error,
              %Error{category: :overloaded, code: "pool_timeout", retryable: true} = error} =
               PortBridge.request(pool, "ping", %{}, pool_timeout: 100)

      assert error.message =~ "within 100 ms"
      assert error.message =~ ":pool_timeout"
      Request.cancel(busy)
    end

    test ":timeout includes the wait for a checkout (issue 10, defect 1)" do
      pool = start_pool(worker_opts(size: 2, strategy: :exclusive))
      # Two sessions that hold both workers.
      sessions = for(i <- 1..20, do: "s#{i}") |> Enum.uniq_by(&Pool.shard_for(pool, &1))
      held = for session <- sessions, do: busy(pool, 3_000, session_id: session)

      {ms, result} =
        elapsed_ms(fn -> PortBridge.request(pool, "sleep", %{ms: 50}, timeout: 200) end)

      assert {:error, %Error{category: :timeout, code: "checkout_timeout"}} = result
      assert ms >= 190 and ms < 200 + tolerance(400), "took #{ms} ms"
      Enum.each(held, &Request.cancel/1)
    end

    test "one request per worker at a time" do
      pool = start_pool(worker_opts(size: 1, strategy: :exclusive))
      ping_pid(pool)

      {ms, results} =
        elapsed_ms(fn ->
          1..4
          |> Task.async_stream(fn _ -> PortBridge.request(pool, "sleep", %{ms: 200}) end,
            max_concurrency: 4
          )
          |> Enum.to_list()
        end)

      assert Enum.all?(results, &match?({:ok, {:ok, _}}, &1))
      assert ms >= 800
    end

    test "async requests whose callers die leave no task behind (issue 10, defect 5)" do
      pool = start_pool(worker_opts(size: 1, strategy: :exclusive))
      ping_pid(pool)
      before = length(Task.Supervisor.children(PortBridge.TaskSupervisor))

      callers =
        for _ <- 1..300 do
          spawn(fn ->
            PortBridge.async_request(pool, "sleep", %{ms: 5_000},
              timeout: 20_000,
              pool_timeout: 20_000
            )

            Process.sleep(:infinity)
          end)
        end

      Process.sleep(200)
      Enum.each(callers, &Process.exit(&1, :kill))

      wait_until(
        fn -> length(Task.Supervisor.children(PortBridge.TaskSupervisor)) <= before end,
        10_000,
        "the async tasks of dead callers to end"
      )
    end

    test "options are checked at start" do
      assert_raise ArgumentError, ~r/:strategy .*expected one of :multiplexed, :exclusive/, fn ->
        Pool.start_link(worker_opts(name: :x, strategy: :fancy))
      end
    end
  end

  test "options are checked at start" do
    assert_raise ArgumentError,
                 ~r/the option :name of PortBridge.Pool.start_link\/1: expected an atom/,
                 fn ->
                   Pool.start_link(worker_opts(name: "x"))
                 end

    assert_raise ArgumentError,
                 ~r/unknown option :pool_size for PortBridge.Pool.start_link\/1/,
                 fn ->
                   Pool.start_link(worker_opts(name: :x, pool_size: 2))
                 end

    assert_raise ArgumentError,
                 ~r/the option :size of PortBridge.Pool.start_link\/1: expected a positive integer/,
                 fn ->
                   Pool.start_link(worker_opts(name: :x, size: 0))
                 end
  end
end
