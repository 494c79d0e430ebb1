# What the BEAM-side benchmark scripts share (each starts with
# `Code.require_file("common.exs", __DIR__)` and `import Bench.Common`): settings from
# the environment, percentiles, timing, how a worker is spawned, and a raw Port.

defmodule Bench.Common do
  @moduledoc false

  def env!(name), do: System.fetch_env!(name)
  def int(name), do: String.to_integer(env!(name))
  def ints(name), do: env!(name) |> String.split(",") |> Enum.map(&String.to_integer/1)

  def pct(values, q) do
    sorted = Enum.sort(values)
    Enum.at(sorted, min(length(sorted) - 1, round(q * (length(sorted) - 1))))
  end

  def summary(ns), do: %{"p50" => pct(ns, 0.5), "p99" => pct(ns, 0.99)}

  # {nanoseconds, result}
  def timed(fun) do
    t0 = System.monotonic_time(:nanosecond)
    result = fun.()
    {System.monotonic_time(:nanosecond) - t0, result}
  end

  def ns(fun), do: elem(timed(fun), 0)

  # A worker of the checkout under test (BENCH_PYTHON, BENCH_ROOT).
  def spawn_opts(worker_args) do
    [
      python: env!("BENCH_PYTHON"),
      worker_args: worker_args,
      cd: env!("BENCH_ROOT"),
      env: [{"PYTHONPATH", env!("BENCH_ROOT")}]
    ]
  end

  # Waits until no backend of the worker still loads (a background import steals the CPU).
  def settle(worker) do
    {:ok, health} = PortBridge.Worker.request(worker, "health", %{}, timeout: 60_000)

    if "loading" in for({_, b} <- health["backends"] || %{}, do: b["state"]) do
      Process.sleep(20)
      settle(worker)
    end
  end

  # The script's last line, which the Python side reads: `doc` and the versions.
  def print_result(doc) do
    versions = %{
      "otp" => System.otp_release(),
      "elixir" => System.version(),
      "schedulers" => System.schedulers_online()
    }

    IO.puts(:jiffy.encode(Map.merge(versions, doc), [:use_nil]))
  end

  # -- a raw Port to a peer: open, wait for its first frame, ping, close ----------------

  def raw_port(args) do
    port =
      Port.open({:spawn_executable, env!("BENCH_PYTHON")}, [
        :binary,
        {:packet, 4},
        :exit_status,
        :use_stdio,
        args: args,
        cd: env!("BENCH_ROOT"),
        env: [{~c"PYTHONPATH", String.to_charlist(env!("BENCH_ROOT"))}]
      ])

    receive do
      {^port, {:data, _ready}} -> port
    after
      30_000 -> raise "no ready frame from #{inspect(args)}"
    end
  end

  # The same frame PortBridge.Codec would send, encoded per ping; the reply decoded.
  def raw_pings(port, n) do
    for i <- 1..n do
      frame = :jiffy.encode(%{"id" => i, "command" => "ping", "args" => %{}}, [:use_nil])

      ns(fn ->
        Port.command(port, frame)

        receive do
          {^port, {:data, reply}} ->
            %{"success" => true} = :jiffy.decode(reply, [:return_maps, :use_nil])
        after
          10_000 -> raise "no reply"
        end
      end)
    end
  end

  def close_port(port) do
    Port.close(port)
  catch
    _, _ -> :ok
  end
end
