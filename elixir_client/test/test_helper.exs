# The suites run against the real Python worker (no mock of it). Three groups run
# only when what they need is there, and are reported as skipped otherwise:
#
#   NimblePool suites (PortBridge.Pool)  need NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout
#   DSPy suites                          need the worker's DSPy backend (bridge/backends/dspy);
#                                        PORTBRIDGE_DSPY=0 skips them, =1 insists on them.
#   cluster suites (PortBridge.Cluster)  need distributed Erlang on 127.0.0.1: this node
#                                        starts epmd and distribution itself, and peer
#                                        nodes with :peer; PORTBRIDGE_CLUSTER=0 skips them.

alias PortBridge.TestCase

python = TestCase.python()

unless File.regular?(python) do
  raise "no Python worker to test against: #{python} does not exist. " <>
          "Run scripts/setup.sh at the repository root, or set PORTBRIDGE_PYTHON."
end

pool_skip =
  unless PortBridge.Pool.available?() do
    "NimblePool is not compiled in. Run them with: " <>
      "NIMBLE_POOL_PATH=/path/to/a/nimble_pool/checkout mix test " <>
      "(git clone https://github.com/dashbitco/nimble_pool)"
  end

probe_dspy = fn ->
  {:ok, worker} = PortBridge.Worker.start_link(TestCase.dspy_worker_opts())

  result =
    case PortBridge.request(worker, "list_programs", %{}, timeout: 60_000) do
      {:ok, _} ->
        nil

      {:error, %PortBridge.Error{category: :not_found}} ->
        "the worker has no DSPy backend yet (list_programs is an unknown command; bridge/backends/dspy)"

      {:error, error} ->
        "the worker's DSPy backend is not usable: #{Exception.message(error)}"
    end

  GenServer.stop(worker)
  result
end

dspy_skip =
  case System.get_env("PORTBRIDGE_DSPY") do
    "0" -> "PORTBRIDGE_DSPY=0"
    "1" -> if reason = probe_dspy.(), do: raise("PORTBRIDGE_DSPY=1 but #{reason}"), else: nil
    _ -> probe_dspy.()
  end

cluster_skip =
  case System.get_env("PORTBRIDGE_CLUSTER") do
    "0" -> "PORTBRIDGE_CLUSTER=0"
    _ -> PortBridge.ClusterCase.start_distribution()
  end

Application.put_env(:port_bridge, :test_skips,
  nimble_pool: pool_skip,
  dspy: dspy_skip,
  cluster: cluster_skip
)

for {group, reason} <- [{"NimblePool", pool_skip}, {"DSPy", dspy_skip}, {"cluster", cluster_skip}],
    reason do
  IO.puts(:stderr, "\n** #{group} suites are skipped: #{reason}\n")
end

# No worker may outlive the suite: every OS process this BEAM spawned must be gone
# (workers get their shutdown grace, then the reaper's signals, so allow a few seconds).
ExUnit.after_suite(fn _stats ->
  case TestCase.await_no_descendants(6_000) do
    [] ->
      IO.puts("No worker OS process outlived the suite.")

    left ->
      IO.puts(:stderr, "\n** FAILED: worker OS processes outlived the suite:")
      for {pid, _ppid, args} <- left, do: IO.puts(:stderr, "   #{pid} #{args}")
      System.halt(1)
  end
end)

ExUnit.start(capture_log: true)
