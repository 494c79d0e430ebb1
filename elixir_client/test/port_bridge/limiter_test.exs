defmodule PortBridge.LimiterTest do
  # The admission process on one node. Waits are bounded below by the budget's
  # arithmetic (never faster than the limit, whatever the load); the upper bounds
  # are the deadlines the assertions give.
  use PortBridge.TestCase, async: true

  alias PortBridge.{Limiter, RateLimit}

  setup do
    limiter = start_supervised!(Limiter)
    %{limiter: limiter}
  end

  defp args(model, limits, tokens \\ 0) do
    %{"model" => model, "limits" => limits, "estimated_tokens" => tokens}
  end

  defp deadline(ms), do: System.monotonic_time(:millisecond) + ms
  defp now_us, do: System.monotonic_time(:microsecond)

  defp admit_async(limiter, args, deadline \\ :infinity) do
    parent = self()

    spawn_link(fn ->
      outcome = Limiter.admit(limiter, args, deadline)
      send(parent, {:admitted, self(), outcome, now_us()})
    end)
  end

  test "under the limit a call is admitted at once", %{limiter: limiter} do
    a = args("m", %{"requests_per_minute" => 600_000})
    assert Limiter.admit(limiter, a, :infinity) == {:ok, %{"admitted" => true}}
    assert Limiter.admit(limiter, a, deadline(1_000)) == {:ok, %{"admitted" => true}}
  end

  test "waiting calls start one interval apart, in arrival order", %{limiter: limiter} do
    # 6,000 a minute: one every 10 ms. Sent from one process, so that they arrive
    # in this order.
    limits = RateLimit.limits!(requests_per_minute: 6_000)
    started = now_us()

    requests =
      Enum.reduce(1..12, :gen_server.reqids_new(), fn k, requests ->
        :gen_server.send_request(limiter, {:admit, "paced", limits, 0, :infinity}, k, requests)
      end)

    # The replies as they come.
    {times, _} =
      Enum.map_reduce(1..12, requests, fn _, requests ->
        assert {{:reply, {:ok, _}}, k, requests} =
                 :gen_server.receive_response(requests, 5_000, true)

        {{k, now_us()}, requests}
      end)

    # 12 calls take at least 11 intervals, and come out in order.
    {_, last} = List.last(times)
    assert last - started >= 11 * 10_000
    assert Enum.map(times, &elem(&1, 0)) == Enum.to_list(1..12)
  end

  test "a call that cannot start before its deadline gets a timeout error, at once",
       %{limiter: limiter} do
    # One a minute: the second call would wait a minute, past its deadline (10 s,
    # and well before it: the answer comes when it is known).
    a = args("slow", %{"requests_per_minute" => 1})
    assert {:ok, _} = Limiter.admit(limiter, a, :infinity)
    {ms, outcome} = elapsed_ms(fn -> Limiter.admit(limiter, a, deadline(10_000)) end)
    assert {:error, "timeout", message} = outcome
    assert message =~ "rate limit of slow"
    assert ms < min(tolerance(500), 9_000)
    assert Limiter.info(limiter)["slow"].waiting == 0
  end

  test "a queued call leaves at its deadline, behind a call that holds the queue",
       %{limiter: limiter} do
    a = args("q", %{"requests_per_minute" => 60})
    assert {:ok, _} = Limiter.admit(limiter, a, :infinity)
    # The head waits a second without a deadline; the next one has 50 ms.
    head = admit_async(limiter, a)
    wait_until(fn -> Limiter.info(limiter)["q"].waiting == 1 end)
    tail = admit_async(limiter, a, deadline(50))
    assert_receive {:admitted, ^tail, {:error, "timeout", _}, _}, tolerance(2_000)
    assert_receive {:admitted, ^head, {:ok, _}, _}, tolerance(3_000)
  end

  test "a caller that goes away (its request cancelled) leaves the queue", %{limiter: limiter} do
    a = args("c", %{"requests_per_minute" => 60})
    assert {:ok, _} = Limiter.admit(limiter, a, :infinity)
    waiter = spawn(fn -> Limiter.admit(limiter, a, :infinity) end)
    wait_until(fn -> Limiter.info(limiter)["c"].waiting == 1 end)
    Process.exit(waiter, :kill)
    wait_until(fn -> Limiter.info(limiter)["c"].waiting == 0 end)
  end

  test "a 429 with Retry-After pauses the model", %{limiter: limiter} do
    a = args("p", %{"requests_per_minute" => 600_000})
    assert {:ok, _} = Limiter.admit(limiter, a, :infinity)

    :ok =
      Limiter.report(limiter, %{
        "model" => "p",
        "prompt_tokens" => 0,
        "completion_tokens" => 0,
        "cached" => false,
        "error" => %{"category" => "lm_rate_limit", "retry_after_s" => 0.2}
      })

    started = now_us()
    assert {:ok, _} = Limiter.admit(limiter, a, :infinity)
    assert now_us() - started >= 200_000 - 1_000
    # Another model is not paused.
    assert {:ok, _} =
             Limiter.admit(limiter, args("other", %{"requests_per_minute" => 600_000}), :infinity)
  end

  test "tokens are charged by estimate and corrected by what the call used", %{limiter: limiter} do
    # 60,000 tokens a minute: about 1 ms a token.
    limits = %{"tokens_per_minute" => 60_000}
    assert {:ok, _} = Limiter.admit(limiter, args("t", limits, 60_000), :infinity)
    # The estimate of 60,000 tokens would hold the next call for a minute; the call
    # used 50.
    :ok =
      Limiter.report(limiter, %{
        "model" => "t",
        "prompt_tokens" => 30,
        "completion_tokens" => 20,
        "cached" => false,
        "error" => nil
      })

    assert {:ok, _} =
             Limiter.admit(
               limiter,
               args("t", limits, 10),
               deadline(min(tolerance(2_000), 50_000))
             )
  end

  test "what a worker should never send is a validation error, and the limiter serves on",
       %{limiter: limiter} do
    for bad <- [
          %{"model" => "m"},
          %{"model" => 5, "limits" => %{"requests_per_minute" => 10}},
          args("m", %{"requests_per_minute" => 0}),
          args("m", %{"requests_per_minute" => 10}, -1),
          args("m", %{"requests_per_minute" => 10, "per_day" => 3})
        ] do
      assert {:error, "validation", _} = Limiter.admit(limiter, bad, :infinity)
    end

    :ok = Limiter.report(limiter, %{"model" => nil})
    :ok = Limiter.report(limiter, "junk")
    assert {:ok, _} = Limiter.admit(limiter, args("m", %{"requests_per_minute" => 10}), :infinity)
  end

  test "a limiter that is gone is an overloaded error (retryable), not an internal one" do
    {:ok, limiter} = Limiter.start_link([])
    Process.unlink(limiter)
    GenServer.stop(limiter)
    a = args("m", %{"requests_per_minute" => 10})
    assert {:error, "overloaded", message} = Limiter.admit(limiter, a, :infinity)
    assert message =~ "the rate limiter is gone"
  end
end
