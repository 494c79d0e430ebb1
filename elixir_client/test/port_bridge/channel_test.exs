defmodule PortBridge.ChannelTest do
  # The Port functions under the Worker, on a real worker process: spawn, the
  # handshake, writes that never block, and what happens to frames nobody asked for.
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Channel, Options, Worker}

  defp spawn_ready(opts) do
    spawn_opts = Options.spawn_opts(opts)
    {:ok, %Channel{port: port, ready: nil} = spawned} = Channel.spawn(spawn_opts)
    assert_receive {^port, {:data, payload}}, 10_000
    {:ok, channel} = Channel.handshake(spawned, payload)
    on_exit(fn -> Channel.close(channel) end)
    channel
  end

  test "the handshake gives the worker's limits" do
    channel = spawn_ready(worker_opts())

    assert %{"protocol" => 1, "pid" => pid, "limits" => %{"max_frame_bytes" => max}} =
             channel.ready

    assert pid == channel.os_pid and channel.max_frame_bytes == max
    assert channel.grace_ms == round(channel.ready["limits"]["shutdown_grace_s"] * 1000) + 1_000
  end

  test "write/2 never blocks: a port whose reader stopped is :busy" do
    channel = spawn_ready(worker_opts())
    {_, 0} = System.cmd("kill", ["-STOP", "#{channel.os_pid}"])
    on_exit(fn -> System.cmd("kill", ["-CONT", "#{channel.os_pid}"]) end)
    big = :binary.copy("x", 1_000_000)

    results = for _ <- 1..8, do: Channel.write(channel, big)
    assert :busy in results
  end

  test "an id-null error (a frame the worker could not read) is logged; the worker serves on" do
    {:ok, worker} = Worker.start_link(worker_opts())
    {:ok, _} = Worker.await_ready(worker)
    %{channel: %{port: port}} = :sys.get_state(worker)

    log =
      capture_log(fn ->
        # Written as the Worker would, bypassing it: a frame that is not JSON. The
        # worker answers frames in order, so its error comes before the ping's reply.
        :ok = Channel.write(port, "{\"command\": \"pi")
        assert {:ok, %{"pong" => true}} = PortBridge.request(worker, "ping", %{}, timeout: 5_000)
      end)

    assert log =~ "answered a frame it could not read"
    assert log =~ "protocol/undecodable"
  end

  test "spawning what does not exist is an initialization error" do
    assert {:error, %Error{category: :initialization, code: "spawn_failed"}} =
             Channel.spawn(%{
               Options.spawn_opts(executable: stand_in("exit_at_once"))
               | executable: "/nonexistent"
             })
  end
end
