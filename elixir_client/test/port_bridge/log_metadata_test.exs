defmodule PortBridge.LogMetadataTest do
  # Every client log line carries the documented Logger metadata (portbridge_worker,
  # portbridge_pool, portbridge_os_pid), whichever process writes it.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool, Worker}

  defmodule Forward do
    @moduledoc false
    # An Erlang :logger handler that sends the events about one OS pid to a test process.
    def log(%{meta: meta} = event, %{config: %{test: pid, session_id: session_id}}) do
      if meta[:portbridge_session_id] == session_id, do: send(pid, {:logged, event})
    end

    def log(%{meta: meta} = event, %{config: %{test: pid, os_pid: os_pid}}) do
      if meta[:portbridge_os_pid] == os_pid or event_mentions?(event, os_pid),
        do: send(pid, {:logged, event})
    end

    defp event_mentions?(%{msg: {:string, text}}, os_pid),
      do: IO.chardata_to_string(text) =~ Integer.to_string(os_pid)

    defp event_mentions?(_event, _os_pid), do: false
  end

  defp forward_logs_about(os_pid) do
    id = :"log_metadata_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, Forward, %{config: %{test: self(), os_pid: os_pid}})
    on_exit(fn -> :logger.remove_handler(id) end)
  end

  test "the reaper's lines about a worker it had to kill carry the Worker's metadata" do
    {:ok, worker} =
      Worker.start(executable: python(), args: [stand_in("stubborn.py")], name: :reaped_worker)

    {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)
    forward_logs_about(os_pid)
    Process.exit(worker, :kill)
    assert_os_pid_exited(os_pid, 5_000)

    # Its grace, then SIGTERM (ignored), then SIGKILL: one line.
    assert_receive {:logged, %{msg: {:string, text}, meta: meta}}, 5_000
    assert IO.chardata_to_string(text) =~ "ignored SIGTERM; sent SIGKILL"
    assert meta.portbridge_os_pid == os_pid
    assert meta.portbridge_worker == :reaped_worker
  end

  if reason = skip_reason(:dspy), do: @tag(skip: reason)

  test "the recorder's line about a session it rebuilt carries the pool and the session" do
    pool = :"log_metadata_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, dspy_worker_opts(name: pool, size: 1)})
    session = "lost-#{System.unique_integer([:positive])}"
    {:ok, _} = DSPy.configure_lm(pool, model: "offline", session_id: session)

    {:ok, _} =
      DSPy.create_program(pool, signature: "q -> a", program_id: "p", session_id: session)

    id = :"log_metadata_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, Forward, %{config: %{test: self(), session_id: session}})
    on_exit(fn -> :logger.remove_handler(id) end)

    # The Python forgets the session behind the records' back; the next run rebuilds it.
    {:ok, _} = PortBridge.request(pool, "end_session", %{}, session_id: session)
    assert {:ok, _} = DSPy.execute_program(pool, "p", %{q: "x"}, session_id: session)

    assert_receive {:logged, %{msg: {:string, text}, meta: meta}}, 5_000
    assert IO.chardata_to_string(text) =~ "rebuilt it from the records"
    assert meta.portbridge_pool == pool
  end
end
