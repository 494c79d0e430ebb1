defmodule PortBridge.RateLimitsTest do
  # Rate limits end to end (issue 21): real workers and their DSPy backend asking
  # admission before every LM call (portbridge.admit), the client's PortBridge.Limiter
  # answering, and a loopback provider that enforces a limit and counts its 429s.
  # Not async: these tests hold a real provider to a limit in real time, and the arrival
  # jitter that other tests running beside them add on 2 CPUs (a loaded second, before
  # the load average shows it) is the 429 they assert never comes.
  use PortBridge.TestCase, async: false

  import PortBridge.ClusterCase, only: [two_node_cluster: 3]
  alias PortBridge.{DSPy, Limiter, LMServer, Pool, RateLimit}

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)
  @moduletag timeout: 180_000

  # The refused and retried calls these tests cause are logged by the workers (on
  # their stderr) as warnings.
  @quiet ["--log-level", "error"]

  defp start_pool(size) do
    name = :"limits_#{System.unique_integer([:positive])}"

    start_supervised!({Pool, dspy_worker_opts(name: name, size: size, worker_args: @quiet)},
      id: name
    )

    name
  end

  # What the provider counted (GET /stats).
  defp stats(url) do
    {:ok, {{_, 200, _}, _, body}} =
      :httpc.request(:get, {String.to_charlist(String.replace(url, "/v1", "/stats")), []}, [], [])

    :jiffy.decode(body, [:return_maps])
  end

  defp lm(url, limits, extra \\ []) do
    [model: "openai/loopback", api_base: url, api_key: "k", rate_limit: limits] ++ extra
  end

  defp inputs(n), do: for(i <- 1..n, do: %{question: "question #{i}?"})

  # The same LM at a model the provider answers after `ms` milliseconds.
  defp slow(lm, ms), do: Keyword.put(lm, :model, "openai/slow-#{ms}")

  # A provider that allows `per_second` calls in any second, counted as they arrive.
  # The client paces admissions; what a loaded machine adds between an admission and
  # the request's arrival (beyond the 5% of each second the pace leaves for it) is
  # allowed as extra calls: none on a quiet machine.
  defp provider(per_second) do
    late_ms = tolerance(50) - 50
    extra = div(late_ms * per_second, 1_000)
    LMServer.start!(["--rate-limit", "#{per_second + extra}", "--rate-window-s", "1"])
  end

  setup_all do
    {:ok, _} = Application.ensure_all_started(:inets)
    :ok
  end

  test "two Pythons at the provider's limit: every call served, paced, no 429" do
    # The provider allows 20 calls a second; the pool is told so.
    url = provider(20)
    pool = start_pool(2)
    {:ok, _} = DSPy.configure_lm(pool, lm(url, requests_per_minute: 20 * 60))
    {:ok, _} = DSPy.create_program(pool, signature: "question -> answer", program_id: "qa")

    {ms, results} =
      elapsed_ms(fn ->
        pool |> DSPy.map("qa", inputs(30), max_concurrency: 30) |> Enum.to_list()
      end)

    assert Enum.all?(results, &match?({:ok, _}, &1)),
           inspect(Enum.reject(results, &match?({:ok, _}, &1)))

    assert %{"responses_429" => 0, "completions" => 30} = stats(url)
    # Paced: 30 starts take at least 29 intervals, whatever the machine.
    assert ms >= div(29 * RateLimit.interval(20 * 60), 1_000)
  end

  test "well under the limit most calls start on a lease, without asking" do
    url = LMServer.start!()
    pool = start_pool(2)
    {:ok, _} = DSPy.configure_lm(pool, lm(url, requests_per_minute: 600_000))
    {:ok, _} = DSPy.create_program(pool, signature: "question -> answer", program_id: "qa")

    for input <- inputs(30), do: assert({:ok, _} = DSPy.execute_program(pool, "qa", input))

    assert %{"completions" => 30} = stats(url)
    limiter = Module.concat(pool, Limiter)
    %{admitted: asked, leased: leased} = Limiter.info(limiter)["openai/loopback"]
    # Each Python asked for its first calls and then, a lease used up, now and then.
    assert asked < 15 and leased >= 30 - asked
  end

  test "leases keep the provider's limit: a burst at the limit while leases are out" do
    # The provider allows 20 calls a second. First calls well under it (each takes
    # 150 ms: leases are granted), then 30 at once while they may still be used.
    url = provider(20)
    pool = start_pool(2)
    {:ok, _} = DSPy.configure_lm(pool, lm(url, requests_per_minute: 20 * 60) |> slow(150))
    {:ok, _} = DSPy.create_program(pool, signature: "question -> answer", program_id: "qa")

    for input <- inputs(8), do: assert({:ok, _} = DSPy.execute_program(pool, "qa", input))
    limiter = Module.concat(pool, Limiter)
    assert Limiter.info(limiter)["openai/slow-150"].leased > 0

    results = pool |> DSPy.map("qa", inputs(30), max_concurrency: 30) |> Enum.to_list()
    assert Enum.all?(results, &match?({:ok, _}, &1))
    assert %{"responses_429" => 0, "completions" => 38} = stats(url)
  end

  test "a provider's 429 pauses the model for every Python, and the calls still succeed" do
    # The pool is told a limit twice the provider's: the provider answers 429s, each
    # with a Retry-After; the worker reports them and retries after the pause.
    url = LMServer.start!(["--rate-limit", "5", "--rate-window-s", "1"])
    pool = start_pool(2)
    {:ok, _} = DSPy.configure_lm(pool, lm(url, [requests_per_minute: 10 * 60], num_retries: 5))
    {:ok, _} = DSPy.create_program(pool, signature: "question -> answer", program_id: "qa")

    results = pool |> DSPy.map("qa", inputs(12), max_concurrency: 12) |> Enum.to_list()
    assert Enum.all?(results, &match?({:ok, _}, &1))

    limiter = Module.concat(pool, Limiter)
    assert %{"openai/loopback" => %{paused_until: paused}} = Limiter.info(limiter)
    assert is_integer(paused)
    assert %{"rate_limited" => limited, "completions" => 12} = stats(url)
    assert limited >= 1
  end

  test "a call waiting for admission comes out of its request's deadline" do
    url = LMServer.start!()
    pool = start_pool(1)
    # One call a minute.
    {:ok, _} = DSPy.configure_lm(pool, lm(url, requests_per_minute: 1))
    {:ok, _} = DSPy.create_program(pool, signature: "question -> answer", program_id: "qa")
    assert {:ok, _} = DSPy.execute_program(pool, "qa", %{question: "first"})

    {ms, result} =
      elapsed_ms(fn -> DSPy.execute_program(pool, "qa", %{question: "second"}, timeout: 500) end)

    assert {:error, %Error{category: :timeout}} = result
    assert ms < tolerance(2_000)

    limiter = Module.concat(pool, Limiter)
    wait_until(fn -> Limiter.info(limiter)["openai/loopback"].waiting == 0 end)
  end

  if reason = skip_reason(:cluster), do: @tag(skip: reason)

  test "in a cluster, the nodes share one budget" do
    url = provider(20)
    name = :"limits_cluster_#{System.unique_integer([:positive])}"
    peer = two_node_cluster("limits", name, dspy_worker_opts(size: 1, worker_args: @quiet))

    {:ok, _} = DSPy.configure_lm(name, lm(url, requests_per_minute: 20 * 60))
    {:ok, _} = DSPy.create_program(name, signature: "question -> answer", program_id: "qa")

    # Requests without a session stay on the node that makes them: 15 from each.
    batch = fn -> name |> DSPy.map("qa", inputs(15), max_concurrency: 15) |> Enum.to_list() end

    there =
      Task.async(fn -> :erpc.call(peer, Enum, :to_list, [DSPy.map(name, "qa", inputs(15))]) end)

    here = batch.()
    results = here ++ Task.await(there, 120_000)

    assert length(results) == 30 and Enum.all?(results, &match?({:ok, _}, &1))
    assert %{"responses_429" => 0, "completions" => 30} = stats(url)
  end
end
