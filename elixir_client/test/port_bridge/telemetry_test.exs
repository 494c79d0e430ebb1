defmodule PortBridge.TelemetryTest do
  # :telemetry events (issue 14), with a real telemetry (TELEMETRY_PATH) and real workers.
  use PortBridge.TestCase, async: true

  alias PortBridge.{Pool, Telemetry}

  unless Telemetry.available?(),
    do:
      @moduletag(
        skip:
          "telemetry is not compiled in: run with TELEMETRY_PATH=/path/to/a/telemetry/checkout"
      )

  setup_all do
    # Started with :port_bridge when it is a dependency; compiled in by hand, not.
    if Telemetry.available?(), do: {:ok, _} = Application.ensure_all_started(:telemetry)
    :ok
  end

  # Events of this test's pool only (other tests run at the same time), of every
  # event the client emits.
  defp attach(pool) do
    me = self()
    id = "telemetry-test-#{inspect(pool)}"

    apply(:telemetry, :attach_many, [
      id,
      Telemetry.events(),
      fn event, measurements, metadata, _ ->
        if metadata[:pool] == pool, do: send(me, {:telemetry, event, measurements, metadata})
      end,
      nil
    ])

    on_exit(fn -> apply(:telemetry, :detach, [id]) end)
  end

  defp start_pool(name, opts) do
    attach(name)
    start_supervised!({Pool, [name: name, size: 1] ++ opts}, id: name)
    name
  end

  test "a request is a span: start, stop with the result, the worker and its OS pid" do
    pool = start_pool(:"tele_#{System.unique_integer([:positive])}", worker_opts())

    assert_receive {:telemetry, [:port_bridge, :worker, :start], %{duration: d},
                    %{os_pid: os_pid}},
                   10_000

    assert d > 0

    {:ok, _} = PortBridge.request(pool, "echo", %{x: 1}, session_id: "s1")

    assert_receive {:telemetry, [:port_bridge, :request, :start], %{system_time: _},
                    %{
                      command: "echo",
                      session_id: "s1",
                      pool: ^pool,
                      os_pid: ^os_pid,
                      worker: worker
                    } = meta}

    ctx = meta.telemetry_span_context

    assert_receive {:telemetry, [:port_bridge, :request, :stop], %{duration: duration},
                    %{
                      result: :ok,
                      error_category: nil,
                      worker: ^worker,
                      telemetry_span_context: ^ctx
                    }}

    assert duration > 0

    {:error, _} = PortBridge.request(pool, "sleep", %{ms: "x"})

    assert_receive {:telemetry, [:port_bridge, :request, :stop], _,
                    %{command: "sleep", result: :error, error_category: :validation}}
  end

  test "a timeout and a cancel end their spans too" do
    pool = start_pool(:"tele_#{System.unique_integer([:positive])}", worker_opts())

    {:error, %Error{category: :timeout}} =
      PortBridge.request(pool, "sleep", %{ms: 5_000}, timeout: 50)

    assert_receive {:telemetry, [:port_bridge, :request, :stop], _,
                    %{command: "sleep", result: :error, error_category: :timeout}},
                   5_000

    request = PortBridge.async_request(pool, "sleep", %{ms: 5_000})
    PortBridge.cancel(request)

    assert_receive {:telemetry, [:port_bridge, :request, :stop], _,
                    %{command: "sleep", result: :cancelled}}
  end

  test "an on_event function that raises is an exception event" do
    pool = start_pool(:"tele_#{System.unique_integer([:positive])}", worker_opts())

    assert_raise RuntimeError, fn ->
      PortBridge.request(pool, "emit", %{n: 2}, on_event: fn _ -> raise "in on_event" end)
    end

    assert_receive {:telemetry, [:port_bridge, :request, :exception], %{duration: _},
                    %{kind: :error, reason: %RuntimeError{}}}
  end

  test "a Python that dies: an exit event, and a start event for its replacement" do
    start_pool(:"tele_#{System.unique_integer([:positive])}", worker_opts())
    assert_receive {:telemetry, [:port_bridge, :worker, :start], _, %{os_pid: os_pid}}, 10_000
    kill9(os_pid)

    assert_receive {:telemetry, [:port_bridge, :worker, :exit], _,
                    %{os_pid: ^os_pid, reason: {:worker_exited, 137}}},
                   5_000

    assert_receive {:telemetry, [:port_bridge, :worker, :start], _, %{os_pid: new}}, 10_000
    assert new != os_pid
  end

  # (a nil skip would override the module tag that skips it all without telemetry)
  if reason = skip_reason(:dspy), do: @tag(skip: reason)

  test "a session rebuilt on a fresh Python: a rebuild event with its steps" do
    pool = start_pool(:"tele_#{System.unique_integer([:positive])}", dspy_worker_opts())
    {:ok, _} = PortBridge.DSPy.configure_lm(pool, model: "offline", session_id: "t")

    {:ok, _} =
      PortBridge.DSPy.create_program(pool, signature: "q -> a", program_id: "p", session_id: "t")

    os_pid = ping_pid(pool, session_id: "t")
    kill9(os_pid)

    assert_receive {:telemetry, [:port_bridge, :session, :rebuild],
                    %{steps: 2, failed: 0, duration: _}, %{pool: ^pool}},
                   20_000
  end
end
