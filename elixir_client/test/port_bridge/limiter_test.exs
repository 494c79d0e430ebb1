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
        :gen_server.send_request(
          limiter,
          {:admit, "paced", limits, 0, :infinity, false},
          k,
          requests
        )
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
    # 60,000 tokens a minute: about 1 ms a token. The estimate of 60,000 tokens would
    # hold the next call for a minute; the call used 50. A 1.3 worker says which
    # estimate its report corrects; a 1.2 worker's reports are paired in order.
    limits = %{"tokens_per_minute" => 60_000}

    for {model, lease?, estimate} <- [
          {"t12", false, %{}},
          {"t13", true, %{"estimated_tokens" => 60_000}}
        ] do
      assert {:ok, _} =
               Limiter.admit(limiter, args(model, limits, 60_000), :infinity, lease: lease?)

      report = %{
        "model" => model,
        "prompt_tokens" => 30,
        "completion_tokens" => 20,
        "cached" => false
      }

      :ok = Limiter.report(limiter, Map.merge(report, estimate))

      assert {:ok, _} =
               Limiter.admit(
                 limiter,
                 args(model, limits, 10),
                 deadline(min(tolerance(2_000), 50_000))
               )
    end
  end

  test "tokens a worker's calls did not use come back with its next admission (1.3)",
       %{limiter: limiter} do
    # As above: the first estimate would hold the next call for a minute, unless the
    # worker gives back what its call did not use when it next asks.
    limits = %{"tokens_per_minute" => 60_000}
    assert {:ok, _} = Limiter.admit(limiter, args("tr", limits, 60_000), :infinity, lease: true)

    back = Map.put(args("tr", limits, 10), "returned_tokens", 59_950)

    assert {:ok, _} =
             Limiter.admit(limiter, back, deadline(min(tolerance(2_000), 50_000)), lease: true)

    # Without it, the next call waits.
    assert {:ok, _} = Limiter.admit(limiter, args("tr2", limits, 60_000), :infinity, lease: true)

    assert {:error, "timeout", _} =
             Limiter.admit(limiter, args("tr2", limits, 10), deadline(100), lease: true)
  end

  test "what a worker should never send is a validation error, and the limiter serves on",
       %{limiter: limiter} do
    for bad <- [
          %{"model" => "m"},
          %{"model" => 5, "limits" => %{"requests_per_minute" => 10}},
          args("m", %{"requests_per_minute" => 0}),
          args("m", %{"requests_per_minute" => 10}, -1),
          Map.put(args("m", %{"requests_per_minute" => 10}), "returned_tokens", -5),
          Map.put(args("m", %{"requests_per_minute" => 10}), "returned_tokens", "all"),
          args("m", %{"requests_per_minute" => 10, "per_day" => 3})
        ] do
      assert {:error, "validation", _} = Limiter.admit(limiter, bad, :infinity)
    end

    :ok = Limiter.report(limiter, %{"model" => nil})
    :ok = Limiter.report(limiter, "junk")
    assert {:ok, _} = Limiter.admit(limiter, args("m", %{"requests_per_minute" => 10}), :infinity)
  end

  describe "leases (protocol 1.3)" do
    # A call that finds the budget idle (its pace's interval past since the last
    # start): only such a call may get a lease. The pause is time passing, not a wait
    # for something to happen.
    defp leased(limiter, %{"limits" => limits} = a) do
      Process.sleep(
        div(RateLimit.interval(limits["requests_per_minute"] || 60_000_000), 1_000) + 1
      )

      assert {:ok, result} = Limiter.admit(limiter, a, :infinity, lease: true)
      result["lease"]
    end

    test "a model's first call gets none; the next ones, well under the limit, a lease",
         %{limiter: limiter} do
      a = args("slow-start", %{"requests_per_minute" => 600_000})
      assert leased(limiter, a) == nil
      assert %{"starts" => 1, "valid_ms" => 500} = leased(limiter, a)
      # Leases grow with the calls seen in the last second, up to 64 starts.
      starts = for _ <- 1..7, do: leased(limiter, a)["starts"]
      assert starts == [3, 7, 15, 31, 63, 64, 64]

      assert %{admitted: 9, leased: leased, reserved: leased} =
               Limiter.info(limiter)["slow-start"]

      assert leased == 1 + Enum.sum(starts)
    end

    test "a worker that takes no leases gets none", %{limiter: limiter} do
      a = args("no-lease", %{"requests_per_minute" => 600_000})

      for _ <- 1..5,
          do: assert(Limiter.admit(limiter, a, :infinity) == {:ok, %{"admitted" => true}})

      assert Limiter.info(limiter)["no-lease"].leased == 0
    end

    test "leases stay within half of a second's starts, with what started and was leased",
         %{limiter: limiter} do
      # 1,200 a minute: 20 a second. A lease granted to the i-th call of the second
      # leaves i + all reserved within 10, so the ones before it leave it less room.
      a = args("half", %{"requests_per_minute" => 1_200})
      leases = for _ <- 1..6, do: leased(limiter, a)
      %{leased: total, admitted: 6, reserved: total} = Limiter.info(limiter)["half"]

      Enum.reduce(Enum.with_index(leases, 1), 0, fn {lease, i}, reserved ->
        starts = if lease, do: lease["starts"], else: 0
        if lease, do: assert(i + reserved + starts <= 10, inspect(leases))
        reserved + starts
      end)

      assert total > 0 and List.last(leases) == nil
    end

    test "no lease at the limit: calls that had to wait get none", %{limiter: limiter} do
      a = args("busy", %{"requests_per_minute" => 6_000})

      outcomes =
        1..12
        |> Enum.map(fn _ ->
          Task.async(fn -> Limiter.admit(limiter, a, :infinity, lease: true) end)
        end)
        |> Task.await_many(10_000)

      assert Enum.all?(outcomes, &(&1 == {:ok, %{"admitted" => true}}))
      assert Limiter.info(limiter)["busy"].leased == 0
    end

    test "none while the model is paused by a 429", %{limiter: limiter} do
      a = args("paused", %{"requests_per_minute" => 600_000})
      for _ <- 1..3, do: leased(limiter, a)
      leased_before = Limiter.info(limiter)["paused"].leased

      :ok =
        Limiter.report(limiter, %{
          "model" => "paused",
          "error" => %{"category" => "lm_rate_limit", "retry_after_s" => 0.2}
        })

      assert leased(limiter, a) == nil
      assert Limiter.info(limiter)["paused"].leased == leased_before
    end

    test "with a token limit, a lease carries the tokens it may spend, charged at once",
         %{limiter: limiter} do
      # 600,000 tokens a minute: 9,500 a second at the pace; half a second holds 4,750.
      a = args("tokens", %{"tokens_per_minute" => 600_000}, 1_000)
      assert leased(limiter, a) == nil
      # The tokens of the first call are paid for (105 ms) before the second comes.
      Process.sleep(div(RateLimit.token_time(1_000, 600_000), 1_000) + 1)
      assert %{"starts" => starts, "tokens" => tokens} = leased(limiter, a)
      assert tokens == starts * 1_000 and starts in 1..3
      # The leased tokens are charged: a call that asks now waits for them.
      {ms, _} = elapsed_ms(fn -> Limiter.admit(limiter, a, :infinity) end)
      assert ms >= div(RateLimit.token_time(tokens, 600_000), 1_000) - 1
    end
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
