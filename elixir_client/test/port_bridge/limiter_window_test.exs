defmodule PortBridge.LimiterWindowTest do
  # Leases against the provider's count, on a simulated clock (exact, whatever the
  # load of the machine): calls arrive, the limiter's queue of one model admits them
  # (Queue.admit_now/5, as PortBridge.Limiter does) and leases starts to the worker
  # that asked (Queue.lease/5); an adversary uses every leased start at the worst
  # moments it may (all at the grant, all at the end of the lease, or anywhere in
  # it), on top of the calls admitted. No one-second window may hold more than
  # requests_per_minute / 60 starts.
  use ExUnit.Case, async: true

  alias PortBridge.Limiter.Queue
  alias PortBridge.RateLimit

  @config %{valid_us: 500_000, max: 16}
  # When the queue asks to be woken at no particular time.
  @poll_us 1_000

  # Admits `arrivals` (us) in order, as PortBridge.Limiter does: a call that finds
  # nobody waiting may start at once (and get a lease), the others queue and start
  # when the queue lets them (Queue.run/4, woken at the time it asks for). Returns
  # {admitted start times, leased start times, leases granted}.
  defp simulate(rpm, arrivals, use) do
    m = Queue.new(RateLimit.limits!(requests_per_minute: rpm))
    arrivals = arrivals |> Enum.sort() |> Enum.with_index()
    waiter = %{tokens: 0, deadline: :infinity, fifo?: false}
    waiters = Map.new(arrivals, fn {_, i} -> {i, waiter} end)
    step(m, arrivals, waiters, 0, use, {[], [], 0})
  end

  defp step(m, arrivals, waiters, t, use, {admitted, leased, leases} = acc) do
    waiting? = Queue.waiting(m) > 0

    case arrivals do
      [] when not waiting? ->
        acc

      [{at, i} | rest] when at <= t ->
        case Queue.admit_now(m, 0, t, true, false) do
          {:ok, m} ->
            {lease, m} = Queue.lease(m, 0, t, true, @config)
            used = if lease, do: place(use, t, lease), else: []
            acc = {[t | admitted], used ++ leased, leases + length(List.wrap(lease))}
            step(m, rest, waiters, t, use, acc)

          :wait ->
            step(Queue.push(m, i), rest, waiters, t, use, acc)
        end

      _ when waiting? ->
        {started, [], m} = Queue.run(m, waiters, t, true)
        acc = {List.duplicate(t, length(started)) ++ admitted, leased, leases}
        wake = if Queue.waiting(m) > 0, do: max(m.wake || t + @poll_us, t + 1), else: t
        next = if arrivals == [], do: wake, else: min(wake, elem(hd(arrivals), 0))
        step(m, arrivals, waiters, max(next, t), use, acc)

      [{at, _} | _] ->
        step(m, arrivals, waiters, at, use, acc)
    end
  end

  # Where the adversary starts a lease's calls: the worker may start them from when
  # the answer came (after the grant) until `valid` after it asked (before the grant).
  defp place(:at_grant, t, %{starts: k}), do: List.duplicate(t, k)
  defp place(:at_end, t, %{starts: k, valid_us: v}), do: List.duplicate(t + v - 1, k)

  defp place(:anywhere, t, %{starts: k, valid_us: v}),
    do: for(_ <- 1..k, do: t + :rand.uniform(v) - 1)

  defp busiest(starts) do
    sorted = starts |> Enum.sort() |> List.to_tuple()
    n = tuple_size(sorted)

    {best, _} =
      Enum.reduce(0..(n - 1)//1, {0, 0}, fn i, {best, j} ->
        j = advance(sorted, n, max(j, i), elem(sorted, i) + 1_000_000)
        {max(best, j - i), j}
      end)

    best
  end

  defp advance(sorted, n, j, limit) when j < n and elem(sorted, j) < limit,
    do: advance(sorted, n, j + 1, limit)

  defp advance(_sorted, _n, j, _limit), do: j

  # Calls at `per_second` on average (Poisson-like), for `seconds`, from `from`.
  defp steady(per_second, seconds, from \\ 0) do
    for _ <- 1..round(per_second * seconds), do: from + :rand.uniform(seconds * 1_000_000)
  end

  defp burst(count, at), do: List.duplicate(at, count)

  # Calls exactly 1 / `per_second` apart, for `seconds`.
  defp even(per_second, seconds),
    do: for(k <- 0..(per_second * seconds - 1), do: div(k * 1_000_000, per_second))

  test "whatever a worker does with its leases, no second holds more than the limit" do
    for rpm <- [600, 1_200, 6_000], use <- [:at_grant, :at_end, :anywhere], round <- 1..3 do
      cap = div(rpm, 60)
      # Quiet stretches (leases: calls evenly spaced at a fifth of the limit, so that
      # some get one whatever the random draws), a steady load near half the limit,
      # and bursts at the limit that come while leases are outstanding.
      arrivals =
        even(div(cap, 5), 4) ++
          steady(cap * 0.45, 3, 4_000_000) ++
          burst(3 * cap, 4_000_000 + round * 300_000) ++
          steady(cap / 5, 3, 7_000_000) ++ burst(2 * cap, 8_500_000)

      {admitted, leased, leases} = simulate(rpm, arrivals, use)
      assert length(admitted) == length(arrivals)
      assert leases > 0, "rpm #{rpm} #{use}: no lease was granted"
      assert busiest(admitted ++ leased) <= cap, "rpm #{rpm} #{use} round #{round}"
    end
  end

  test "calls at the limit get no lease and start at the pace" do
    for rpm <- [600, 6_000] do
      {admitted, [], 0} = simulate(rpm, burst(div(rpm, 60) * 4, 0), :at_grant)
      span = Enum.max(admitted) - Enum.min(admitted)
      # 4 seconds of calls at once: exactly one interval apart.
      assert span == (length(admitted) - 1) * RateLimit.interval(rpm)
    end
  end

  test "a model's first call, and calls of a model idle for a second, get no lease" do
    {_, _, 0} = simulate(600, [0, 2_000_000, 4_000_000], :at_grant)
  end
end
