defmodule PortBridge.WorkerLogsTest do
  # The Python worker's log records reach Logger by default (the client passes
  # --log-frames), each with the Logger metadata of the request and the Worker.
  use PortBridge.TestCase, async: true

  alias PortBridge.Worker

  defmodule Forward do
    @moduledoc false
    # An Erlang :logger handler that sends the events of one Worker to a test process.
    def log(%{meta: meta} = event, %{config: %{test: pid, worker: worker}}) do
      if meta[:portbridge_worker] == worker, do: send(pid, {:logged, event})
    end
  end

  defp forward_logs_of(worker) do
    id = :"worker_logs_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, Forward, %{config: %{test: self(), worker: worker}})
    on_exit(fn -> :logger.remove_handler(id) end)
  end

  defp logged_message(%{msg: {:string, text}}), do: IO.chardata_to_string(text)
  defp logged_message(%{msg: {:report, report}}), do: inspect(report)

  defp logged_message(%{msg: {format, args}}),
    do: IO.chardata_to_string(:io_lib.format(format, args))

  test "a worker's error log reaches Logger, with the request's and the Worker's metadata" do
    {:ok, worker} = Worker.start_link(worker_opts())
    forward_logs_of(worker)
    {:ok, %{"pid" => os_pid}} = Worker.await_ready(worker)

    assert {:error, %Error{category: :internal}} =
             PortBridge.request(worker, "crash", %{message: "boom in the backend"},
               session_id: "logs-1",
               meta: %{trace_id: "trace-77"}
             )

    assert_receive {:logged, %{level: :error, meta: meta} = event}, 5_000
    assert logged_message(event) =~ "boom in the backend"
    assert meta.portbridge_os_pid == os_pid
    assert meta.portbridge_session_id == "logs-1"
    assert meta.trace_id == "trace-77"
    assert is_integer(meta.portbridge_request_id)
    assert meta.portbridge_logger =~ "portbridge"
  end

  test "forward_logs: false leaves them on the worker's stderr only" do
    {:ok, worker} = Worker.start_link(worker_opts(forward_logs: false))
    forward_logs_of(worker)
    {:ok, _} = Worker.await_ready(worker)
    assert {:error, %Error{category: :internal}} = PortBridge.request(worker, "crash", %{})
    refute_receive {:logged, %{meta: %{portbridge_request_id: _}}}, 300
  end
end
