defmodule PortBridge.RateLimitTest do
  # The pacing arithmetic, on simulated clocks: exact, and independent of the load
  # of the machine.
  use ExUnit.Case, async: true

  alias PortBridge.RateLimit

  describe "limits!/2" do
    test "keyword lists and maps with atom keys; burst defaults to 1" do
      assert RateLimit.limits!(requests_per_minute: 600) ==
               %{requests_per_minute: 600, tokens_per_minute: nil, burst: 1}

      assert RateLimit.limits!(%{tokens_per_minute: 10_000, burst: 3}) ==
               %{requests_per_minute: nil, tokens_per_minute: 10_000, burst: 3}
    end

    test "a limit that is not a positive integer names the option and the key" do
      for {bad, key} <- [
            {[requests_per_minute: 0], "requests_per_minute"},
            {[requests_per_minute: -5], "requests_per_minute"},
            {[tokens_per_minute: 1.5], "tokens_per_minute"},
            {[requests_per_minute: 10, burst: 0], "burst"},
            {[requests_per_minute: "10"], "requests_per_minute"}
          ] do
        error = assert_raise ArgumentError, fn -> RateLimit.limits!(bad) end
        assert error.message =~ ":rate_limit"
        assert error.message =~ key
        assert error.message =~ "positive integer"
      end
    end

    test "unknown keys, neither limit, or not a keyword list are errors" do
      assert_raise ArgumentError, ~r/:rate_limit: unknown key :rpm.*requests_per_minute:/, fn ->
        RateLimit.limits!(rpm: 10)
      end

      assert_raise ArgumentError, ~r/give requests_per_minute:, tokens_per_minute: or both/, fn ->
        RateLimit.limits!(burst: 2)
      end

      assert_raise ArgumentError, ~r/:rate_limit: expected a keyword list, got: 10/, fn ->
        RateLimit.limits!(10)
      end
    end

    test "the wire form round-trips, and the worker's maps are checked" do
      limits = RateLimit.limits!(requests_per_minute: 600, tokens_per_minute: 9_000)
      wire = RateLimit.to_wire(limits)
      assert wire == %{"requests_per_minute" => 600, "tokens_per_minute" => 9_000, "burst" => 1}
      assert RateLimit.from_wire(wire) == {:ok, limits}
      assert {:error, _} = RateLimit.from_wire(%{"requests_per_minute" => 0})
      assert {:error, _} = RateLimit.from_wire(%{"requests_per_minute" => 10, "x" => 1})
      assert {:error, _} = RateLimit.from_wire(%{requests_per_minute: 10})
      assert {:error, _} = RateLimit.from_wire([1])
    end
  end

  # Calls arriving at `arrivals` (us), each started as soon as the budget allows
  # and in arrival order, as the Limiter does: their start times.
  defp starts(limits, arrivals, tokens \\ 0) do
    {starts, _} =
      Enum.map_reduce(Enum.sort(arrivals), {RateLimit.new(limits), nil}, fn arrival,
                                                                            {budget, last} ->
        at = RateLimit.next_at(budget, max(arrival, last || arrival), tokens)
        {at, {RateLimit.take(budget, at, tokens), at}}
      end)

    starts
  end

  # The most starts in any half-open window of `width` us.
  defp busiest(starts, width) do
    sorted = Enum.sort(starts) |> List.to_tuple()
    n = tuple_size(sorted)

    Enum.reduce(0..(n - 1)//1, 0, fn i, best ->
      from = elem(sorted, i)
      count = Enum.count(i..(n - 1)//1, &(elem(sorted, &1) < from + width))
      max(best, count)
    end)
  end

  defp random_arrivals(count, span_us), do: for(_ <- 1..count, do: :rand.uniform(span_us))

  test "paced, not burst: no more than n/60 calls start in any one-second window" do
    for rpm <- [60, 120, 600, 3_000, 6_000], round <- 1..5 do
      arrivals = random_arrivals(300, 20_000_000) ++ List.duplicate(round * 1_000, 50)
      starts = starts(%{requests_per_minute: rpm, tokens_per_minute: nil, burst: 1}, arrivals)
      assert busiest(starts, 1_000_000) <= div(rpm, 60), "rpm #{rpm}"

      # ...and never slower than the limit when calls are waiting: consecutive
      # starts of a backlog are exactly one interval apart.
      backlog =
        starts(
          %{requests_per_minute: rpm, tokens_per_minute: nil, burst: 1},
          List.duplicate(0, 40)
        )

      gaps = Enum.zip_with(Enum.drop(backlog, 1), backlog, &-/2)
      assert Enum.uniq(gaps) == [RateLimit.interval(rpm)]
    end
  end

  test "the pace runs a little under the limit, never over it" do
    # 95%: 600 a minute are 105.3 ms apart, 6,000 tokens a minute 10.5 ms a token.
    assert RateLimit.interval(600) == 105_264
    assert RateLimit.token_time(1, 6_000) == 10_527
    assert RateLimit.token_time(-1, 6_000) == -10_526
  end

  test "burst: b calls may start at once, and the pace holds after them" do
    limits = %{requests_per_minute: 600, tokens_per_minute: nil, burst: 4}
    starts = starts(limits, List.duplicate(0, 20))
    assert Enum.take(starts, 4) == [0, 0, 0, 0]
    assert busiest(starts, 1_000_000) <= 10 + 3

    gaps =
      starts |> Enum.drop(3) |> then(&Enum.zip_with(Enum.drop(&1, 1), &1, fn a, b -> a - b end))

    assert Enum.uniq(gaps) == [RateLimit.interval(600)]
  end

  test "tokens: each call is charged its estimate, and corrections move the next start" do
    tpm = 6_000
    t = &RateLimit.token_time(&1, tpm)
    limits = %{requests_per_minute: nil, tokens_per_minute: tpm, burst: 1}
    budget = RateLimit.new(limits)
    assert RateLimit.next_at(budget, 0, 50) == 0
    budget = RateLimit.take(budget, 0, 50)
    assert RateLimit.next_at(budget, 0, 50) == t.(50)

    # The call used 10 tokens, not 50: the next one may start after those 10.
    assert RateLimit.next_at(RateLimit.correct(budget, -40), 0, 50) == t.(50) + t.(-40)
    assert_in_delta t.(50) + t.(-40), t.(10), 2
    # It used 80: after 80.
    assert RateLimit.next_at(RateLimit.correct(budget, 30), 0, 50) == t.(50) + t.(30)
    # Tokens given back never make room before now.
    assert RateLimit.next_at(RateLimit.correct(budget, -1_000), 0, 50) == 0

    # A budget of tokens alone paces calls by their estimates.
    assert starts(limits, List.duplicate(0, 5), 100) == for(i <- 0..4, do: i * t.(100))
  end

  test "both limits: the stricter one sets the pace" do
    limits = %{requests_per_minute: 6_000, tokens_per_minute: 60_000, burst: 1}
    # 50-token calls: the tokens are the stricter limit; 2-token calls: the requests.
    per_call = RateLimit.token_time(50, 60_000)
    assert starts(limits, List.duplicate(0, 4), 50) == for(i <- 0..3, do: i * per_call)
    interval = RateLimit.interval(6_000)
    assert starts(limits, List.duplicate(0, 4), 2) == for(i <- 0..3, do: i * interval)
  end

  test "a pause holds every start until it ends; hold_until as if admitted up to then" do
    limits = %{requests_per_minute: 600, tokens_per_minute: nil, burst: 1}
    budget = RateLimit.new(limits) |> RateLimit.pause(2_000_000)
    assert RateLimit.next_at(budget, 0, 0) == 2_000_000
    assert RateLimit.next_at(budget, 3_000_000, 0) == 3_000_000
    # A shorter pause never shortens a longer one.
    assert RateLimit.next_at(RateLimit.pause(budget, 1_000), 0, 0) == 2_000_000

    held = RateLimit.hold_until(RateLimit.new(limits), 700_000)
    assert RateLimit.next_at(held, 0, 0) == 700_000
  end
end
