defmodule PortBridge.CircuitBreakerTest do
  use PortBridge.TestCase, async: true

  alias PortBridge.CircuitBreaker

  defp opts(extra \\ []),
    do: CircuitBreaker.options([key: make_ref(), threshold: 3, cooldown_ms: 60] ++ extra, nil)

  defp unavailable,
    do: {:error, Error.new(:lm_unavailable, "server_error", "the provider answered 503")}

  # Calls `result_fun` through the breaker and counts the calls that really ran.
  defp run(opts, result, counter) do
    CircuitBreaker.call(fn -> :counters.add(counter, 1, 1) && result end, opts)
  end

  defp wait_past(until), do: wait_until(fn -> System.monotonic_time(:millisecond) >= until end)

  test "circuit_break errors in a row open it; then calls fail at once, with the cause" do
    opts = opts()
    calls = :counters.new(1, [])

    for _ <- 1..3,
        do: assert({:error, %Error{code: "server_error"}} = run(opts, unavailable(), calls))

    assert {:open, _until} = CircuitBreaker.state(opts[:key])

    assert {:error,
            %Error{
              category: :lm_unavailable,
              code: "circuit_open",
              details: %{"cause_code" => "server_error"}
            }} = run(opts, {:ok, :never_called}, calls)

    assert :counters.get(calls, 1) == 3
  end

  test "after the cooldown one probe goes through: success closes, failure reopens for longer" do
    opts = opts()
    calls = :counters.new(1, [])
    for _ <- 1..3, do: run(opts, unavailable(), calls)
    {:open, until} = CircuitBreaker.state(opts[:key])
    wait_past(until)

    # The probe fails: open again, with a doubled cooldown.
    assert {:error, %Error{code: "server_error"}} = run(opts, unavailable(), calls)
    {:open, until2} = CircuitBreaker.state(opts[:key])
    assert until2 - until >= 120
    wait_past(until2)

    assert {:ok, :back} = run(opts, {:ok, :back}, calls)
    assert CircuitBreaker.state(opts[:key]) == :closed
    assert :counters.get(calls, 1) == 5
  end

  test "other errors neither open it nor reset it; a success resets the count" do
    opts = opts()
    calls = :counters.new(1, [])
    invalid = {:error, Error.new(:validation, "invalid_args", "bad")}

    run(opts, unavailable(), calls)
    run(opts, unavailable(), calls)
    for _ <- 1..5, do: run(opts, invalid, calls)
    assert CircuitBreaker.state(opts[:key]) == :closed
    run(opts, {:ok, 1}, calls)
    run(opts, unavailable(), calls)
    run(opts, unavailable(), calls)
    assert CircuitBreaker.state(opts[:key]) == :closed
    run(opts, unavailable(), calls)
    assert {:open, _} = CircuitBreaker.state(opts[:key])
  end

  test "through PortBridge.request: a worker that is not there stops being called" do
    target = :"absent_worker_#{System.unique_integer([:positive])}"
    circuit = [threshold: 2, cooldown_ms: 10_000]

    for _ <- 1..2 do
      assert {:error, %Error{category: :communication, code: "not_running"}} =
               PortBridge.request(target, "ping", %{}, circuit: circuit)
    end

    assert {:error, %Error{category: :communication, code: "circuit_open"}} =
             PortBridge.request(target, "ping", %{}, circuit: circuit)

    # Another session is another breaker.
    assert {:error, %Error{code: "not_running"}} =
             PortBridge.request(target, "ping", %{}, circuit: circuit, session_id: "s")
  end

  test "options are checked" do
    assert_raise ArgumentError,
                 ~r/unknown option :treshold for the :circuit option \(did you mean :threshold\?\)/,
                 fn ->
                   CircuitBreaker.options([treshold: 1], :k)
                 end

    assert [key: :mine] ++ _ = CircuitBreaker.options(:mine, :default)
    assert CircuitBreaker.options(true, :default)[:key] == :default
  end
end
