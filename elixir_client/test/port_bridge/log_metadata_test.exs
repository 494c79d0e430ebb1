defmodule PortBridge.LogMetadataTest do
  # Every client log line carries the documented Logger metadata (portbridge_worker,
  # portbridge_pool, portbridge_os_pid), whichever process writes it.
  use PortBridge.TestCase, async: true

  alias PortBridge.Worker

  defmodule Forward do
    @moduledoc false
    # An Erlang :logger handler that sends the events about one OS pid to a test process.
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
end
