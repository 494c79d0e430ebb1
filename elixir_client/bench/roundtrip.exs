# Port round trip: a raw Port against PortBridge.Worker and PortBridge.Pool, with the
# same frames to the same worker command, one request at a time.
#
#   PORTBRIDGE_PYTHON=../.venv/bin/python NIMBLE_POOL_PATH=/path/to/nimble_pool \
#     mix run bench/roundtrip.exs [iterations]
#
# Prints p50/p90/p99 in microseconds per path and command. The Pool is the default
# (multiplexed) strategy.

alias PortBridge.{Codec, Pool, Worker}

iterations = String.to_integer(List.first(System.argv()) || "5000")
warmup = div(iterations, 10)

python =
  System.get_env("PORTBRIDGE_PYTHON") || Path.expand("../.venv/bin/python", Path.dirname(__DIR__))

spawn_opts = [python: python, worker_args: ["--backends", ""]]
args_of = %{"ping" => %{}, "echo" => %{"x" => 1, "text" => "hello"}}
timeout = PortBridge.default_timeout()

percentiles = fn samples ->
  sorted = samples |> Enum.sort() |> List.to_tuple()
  at = fn p -> elem(sorted, min(tuple_size(sorted) - 1, trunc(p * tuple_size(sorted)))) end
  %{p50: at.(0.50), p90: at.(0.90), p99: at.(0.99)}
end

measure = fn fun ->
  for i <- 1..warmup, do: fun.(i)

  for i <- 1..iterations do
    t0 = System.monotonic_time(:nanosecond)
    fun.(i)
    div(System.monotonic_time(:nanosecond) - t0, 1000)
  end
  |> percentiles.()
end

# The raw Port: what the clients add their work to. The frame is the one they
# send (the same envelope fields: timeout_ms is the client's timeout + 1 s).
raw = fn command ->
  %{executable: exe, args: port_args} = PortBridge.Options.spawn_opts(spawn_opts)

  port =
    Port.open({:spawn_executable, exe}, [
      :binary,
      {:packet, 4},
      :exit_status,
      :use_stdio,
      args: port_args
    ])

  receive do: ({^port, {:data, _ready}} -> :ok)

  result =
    measure.(fn i ->
      request = %{
        "id" => i,
        "command" => command,
        "args" => args_of[command],
        "timeout_ms" => timeout + 1_000
      }

      {:ok, frame} = Codec.encode(request, :json)
      Port.command(port, frame)

      receive do
        {^port, {:data, reply}} -> %{"success" => true} = Codec.decode!(reply, :json)
      end
    end)

  Port.close(port)
  result
end

{:ok, worker} = Worker.start_link(spawn_opts)
{:ok, _} = Worker.await_ready(worker)

paths =
  [
    {"raw Port", raw},
    {"Worker",
     fn command ->
       measure.(fn _ -> {:ok, _} = PortBridge.request(worker, command, args_of[command]) end)
     end}
  ] ++
    if Code.ensure_loaded?(Pool) do
      {:ok, _} = Pool.start_link([name: :bench_pool, size: 1] ++ spawn_opts)
      {:ok, _} = PortBridge.request(:bench_pool, "ping")

      [
        {"Pool (1 worker)",
         fn command ->
           measure.(fn _ ->
             {:ok, _} = PortBridge.request(:bench_pool, command, args_of[command])
           end)
         end}
      ]
    else
      []
    end

IO.puts("""
Port round trip, #{iterations} sequential requests after #{warmup} warm-up, JSON via #{inspect(Codec.json_library())}
#{System.version()} / OTP #{System.otp_release()}, #{System.schedulers_online()} schedulers
""")

IO.puts(
  String.pad_trailing("path", 18) <>
    String.pad_trailing("command", 9) <> "  p50 us  p90 us  p99 us"
)

for command <- ["ping", "echo"], {name, run} <- paths do
  %{p50: p50, p90: p90, p99: p99} = run.(command)

  IO.puts(
    String.pad_trailing(name, 18) <>
      String.pad_trailing(command, 9) <>
      Enum.map_join([p50, p90, p99], &String.pad_leading(Integer.to_string(&1), 8))
  )
end
