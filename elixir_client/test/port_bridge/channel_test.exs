defmodule PortBridge.ChannelTest do
  # The layer under Worker and Pool, on a real worker: handshake, one exchange at a
  # time, and what happens to frames nobody asked for.
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Channel, Options}

  setup do
    {:ok, channel} = Channel.open(Options.spawn_opts(worker_opts()))
    on_exit(fn -> Channel.close(channel) end)
    %{channel: channel}
  end

  test "the handshake gives the worker's limits", %{channel: channel} do
    assert %{"protocol" => 1, "pid" => pid, "limits" => %{"max_frame_bytes" => max}} =
             channel.ready

    assert pid == channel.os_pid and channel.max_frame_bytes == max
    assert channel.grace_ms == round(channel.ready["limits"]["shutdown_grace_s"] * 1000) + 1_000
  end

  test "an id-null error (a frame the worker could not read) is logged, and the port stays usable",
       %{channel: channel} do
    log =
      capture_log(fn ->
        :ok = Channel.send_frame(channel, "{\"command\": \"pi")

        assert {{:ok, %{"pong" => true}}, :ok} =
                 Channel.exchange(channel, "ping", %{}, timeout: 5_000)
      end)

    assert log =~ "answered a frame it could not read"
    assert log =~ "protocol/undecodable"
  end

  test "events go to on_event; the reply ends the exchange", %{channel: channel} do
    me = self()

    assert {{:ok, %{"emitted" => 2}}, :ok} =
             Channel.exchange(channel, "emit", %{n: 2}, on_event: &send(me, &1))

    assert_received {"chunk", %{"i" => 0}}
    assert_received {"chunk", %{"i" => 1}}
  end

  test "a cancel_tag message cancels the exchange; the port is clean afterwards", %{
    channel: channel
  } do
    tag = make_ref()
    send(self(), {tag, :cancel})

    assert {{:error, %Error{category: :cancelled}}, :ok} =
             Channel.exchange(channel, "sleep", %{ms: 10_000}, cancel_tag: tag, timeout: 5_000)

    assert {{:ok, %{"x" => 1}}, :ok} = Channel.exchange(channel, "echo", %{x: 1}, timeout: 5_000)
    refute_received {_port, {:data, _}}
  end

  test "a worker that exits before ready is an initialization error" do
    assert {:error,
            %Error{
              category: :initialization,
              code: "worker_start_failed",
              details: %{"exit_status" => 2}
            }} = Channel.open(Options.spawn_opts(executable: stand_in("exit_at_once")))

    assert {:error, %Error{category: :initialization, code: "spawn_failed"}} =
             Channel.open(%{
               Options.spawn_opts(executable: stand_in("exit_at_once"))
               | executable: "/nonexistent"
             })
  end
end
