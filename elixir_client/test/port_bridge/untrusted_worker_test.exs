defmodule PortBridge.UntrustedWorkerTest do
  # Issue 10: every frame from the Python side is untrusted, and whatever the Python
  # process does (writes nonsense, stops reading) no caller waits past its :timeout
  # and the Worker keeps serving.
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Pool, Request, Worker}

  @hostile [executable: python(), args: [stand_in("hostile_worker.py")]]

  describe "a worker that writes frames of every wrong shape" do
    setup do
      worker = start_supervised!({Worker, @hostile})
      {:ok, _} = Worker.await_ready(worker)
      %{worker: worker}
    end

    test "its ready event's limits of the wrong type fall back to the defaults", %{worker: worker} do
      assert {:ok, %{"limits" => %{"max_frame_bytes" => "lots"}}} = Worker.await_ready(worker)
      assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1})
    end

    for kind <-
          ~w(error_code_not_string error_message_map error_not_map error_missing error_category_list) do
      test "#{kind}: its caller gets a protocol error; the Worker serves on", %{worker: worker} do
        log =
          capture_log(fn ->
            assert {:error,
                    %Error{category: :protocol, code: "malformed_error", details: details}} =
                     PortBridge.request(worker, unquote(kind), %{}, timeout: 2_000)

            assert is_binary(details["error"])
          end)

        assert log == "" or is_binary(log)
        assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1})
      end
    end

    for kind <- ~w(event_name_number success_not_bool) do
      test "#{kind}: its caller gets a protocol error at once; the Worker serves on", %{
        worker: worker
      } do
        log =
          capture_log(fn ->
            assert {:error, %Error{category: :protocol, code: "malformed_frame"}} =
                     PortBridge.request(worker, unquote(kind), %{}, timeout: 2_000)
          end)

        assert log =~ "wrong shape"
        assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1})
      end
    end

    test "an error of a category it does not know keeps the reply's valid fields only", %{
      worker: worker
    } do
      assert {:error, %Error{category: "brand_new", severity: :critical, recovery: :abandon}} =
               PortBridge.request(worker, "error_severity_map", %{}, timeout: 2_000)
    end

    for kind <-
          ~w(log_message_map log_data_list log_level_map event_id_map reply_id_map reply_id_float
                   reply_unknown_id not_a_map garbage empty null_id_error_map) do
      test "#{kind}: a frame that names no caller is logged; the caller's own reply still arrives",
           %{
             worker: worker
           } do
        capture_log(fn ->
          assert {:ok, %{"n" => 1}} =
                   PortBridge.request(worker, unquote(kind) <> "+echo", %{n: 1}, timeout: 2_000)
        end)

        assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1})
      end
    end

    test "a log event whose message is a map is logged as text", %{worker: worker} do
      log =
        capture_log(fn ->
          assert {:ok, _} =
                   PortBridge.request(worker, "log_message_map+echo", %{}, timeout: 2_000)
        end)

      assert log =~ "nested"
    end

    test "all of them at once, from many callers: every caller gets an answer, the Worker stays",
         %{
           worker: worker
         } do
      kinds =
        ~w(error_code_not_string error_message_map log_message_map+echo garbage+echo reply_id_map+echo
           event_name_number success_not_bool not_a_map+echo echo)

      capture_log(fn ->
        results =
          for(_ <- 1..10, kind <- kinds, do: kind)
          |> Task.async_stream(&PortBridge.request(worker, &1, %{}, timeout: 3_000),
            max_concurrency: 30
          )
          |> Enum.map(fn {:ok, result} -> result end)

        assert Enum.all?(results, fn
                 {:ok, _} -> true
                 {:error, %Error{category: :protocol}} -> true
                 _ -> false
               end)
      end)

      assert Process.alive?(worker)
    end
  end

  describe "a Python process that stops reading (issue 10, defects 2 and 3)" do
    setup do
      worker = start_supervised!({Worker, worker_opts()})
      {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)
      on_exit(fn -> System.cmd("kill", ["-CONT", "#{os_pid}"]) end)
      %{worker: worker, os_pid: os_pid}
    end

    test "a 3 MB request to a stopped worker: callers get their timeout on time, the Worker answers",
         %{
           worker: worker,
           os_pid: os_pid
         } do
      {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])
      big = %{blob: String.duplicate("x", 3_000_000)}

      # More than a pipe and a port queue hold: the later writes cannot go out.
      requests = for _ <- 1..3, do: Worker.async_request(worker, "echo", big, timeout: 300)

      {ms, results} = elapsed_ms(fn -> Enum.map(requests, &Request.await/1) end)
      assert Enum.all?(results, &match?({:error, %Error{category: :timeout}}, &1))
      assert ms < 300 + tolerance(400), "the timeouts came after #{ms} ms"

      # The Worker is not suspended on the port: it answers at once, and new callers
      # get their own timeouts on time.
      {ms, _} = elapsed_ms(fn -> :sys.get_state(worker, 1_000) end)
      assert ms < tolerance(500)
      {ms, result} = elapsed_ms(fn -> PortBridge.request(worker, "ping", %{}, timeout: 200) end)
      assert {:error, %Error{category: :timeout}} = result
      assert ms < 200 + tolerance(400)

      # Once it reads again, it serves again; the abandoned requests' replies are dropped.
      {_, 0} = System.cmd("kill", ["-CONT", "#{os_pid}"])
      assert {:ok, %{"x" => 1}} = PortBridge.request(worker, "echo", %{x: 1}, timeout: 10_000)
    end

    test "a stopped Python: the caller returns at its deadline, not after a grace for the cancel",
         %{
           worker: worker,
           os_pid: os_pid
         } do
      {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])

      {ms, result} =
        elapsed_ms(fn -> PortBridge.request(worker, "sleep", %{ms: 10}, timeout: 300) end)

      assert {:error, %Error{category: :timeout}} = result
      assert ms >= 300 and ms < 300 + tolerance(400), "took #{ms} ms"
    end

    test "a stuck Worker process: the caller still returns at its deadline", %{worker: worker} do
      :sys.suspend(worker)

      try do
        {ms, result} = elapsed_ms(fn -> PortBridge.request(worker, "ping", %{}, timeout: 300) end)
        assert {:error, %Error{category: :timeout}} = result
        assert ms >= 300 and ms < 300 + tolerance(400), "took #{ms} ms"
      after
        :sys.resume(worker)
      end
    end
  end

  test "a stopped Python in a pool: its callers are bounded too" do
    name = :"stopped_pool_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, [name: name, size: 1] ++ worker_opts()}, id: name)
    os_pid = ping_pid(name)
    on_exit(fn -> System.cmd("kill", ["-CONT", "#{os_pid}"]) end)
    {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])

    big = %{blob: String.duplicate("x", 3_000_000)}

    {ms, results} =
      elapsed_ms(fn ->
        1..4
        |> Task.async_stream(fn _ -> PortBridge.request(name, "echo", big, timeout: 300) end)
        |> Enum.map(fn {:ok, result} -> result end)
      end)

    assert Enum.all?(results, &match?({:error, %Error{category: :timeout}}, &1))
    assert ms < 300 + tolerance(500)
  end
end
