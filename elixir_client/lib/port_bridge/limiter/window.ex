defmodule PortBridge.Limiter.Window do
  @moduledoc false
  # The starts of one model per one-second window, as a provider counts them, so
  # that leases (starts a Python or a node may make without asking, PROTOCOL.md
  # section 7.2) keep `requests_per_minute` whatever is done with them. Pure: times
  # are monotonic microseconds.
  #
  # The budget's pace (PortBridge.RateLimit) spaces admitted starts one interval
  # apart, which alone keeps every window within the limit. A lease breaks that
  # spacing: its starts may come at any instant of [grant, grant + valid], all at
  # once. So while a lease may still matter, the starts it allows are counted in
  # every window that meets that interval (`reserved`, until `valid` + 1 s after
  # the grant), and an admitted start must fit beside them: the starts admitted in
  # the last second (`recent`, counted in 50 ms buckets: a window of up to
  # 1.05 s, which the pace's 5% margin covers) plus `reserved` plus itself stay
  # within `cap` = requests_per_minute / 60. Without a lease outstanding the pace
  # alone decides, as before leases existed.
  #
  # A lease is granted only well under the limit: its starts, the recent ones and
  # those reserved stay within half the cap, and no more than were seen in the last
  # second (besides the call being admitted): a model's first call, or a burst that
  # arrives at an idle model, gets none, so calls at the limit never pay for a
  # reservation. A lease is a bet that more calls follow at the pace just seen.

  @bucket_us 50_000
  @window_us 1_000_000

  defstruct [:cap, buckets: %{}, oldest: nil, recent: 0, leases: :queue.new(), reserved: 0]

  @type t :: %__MODULE__{
          cap: non_neg_integer | nil,
          buckets: %{integer => pos_integer},
          oldest: integer | nil,
          recent: non_neg_integer,
          leases: :queue.queue({integer, pos_integer}),
          reserved: non_neg_integer
        }

  # `cap`: the starts a provider allows in one second (nil: no request limit, only
  # the lease's own bounds apply).
  @spec new(pos_integer | nil) :: t
  def new(nil), do: %__MODULE__{cap: nil}
  def new(rpm), do: %__MODULE__{cap: div(rpm, 60)}

  # A start admitted at `at` (now, or a later time leased to another node).
  @spec record(t, integer) :: t
  def record(w, at) do
    i = div(at, @bucket_us)

    %{
      w
      | buckets: Map.update(w.buckets, i, 1, &(&1 + 1)),
        oldest: if(w.oldest, do: min(w.oldest, i), else: i),
        recent: w.recent + 1
    }
  end

  # Whether one more start may come now (the window pruned to now: `prune/2`).
  @spec room?(t) :: boolean
  def room?(%{reserved: 0}), do: true
  def room?(%{cap: nil}), do: true
  def room?(w), do: w.recent + w.reserved + 1 <= w.cap

  # When room may come back (a bucket leaves the last second, or a lease stops
  # counting); nil when nothing will change.
  @spec free_at(t) :: integer | nil
  def free_at(%{reserved: 0}), do: nil

  def free_at(w) do
    {:value, {until, _}} = :queue.peek(w.leases)
    lease = until + @window_us
    if w.oldest, do: min((w.oldest + 1) * @bucket_us + @window_us, lease), else: lease
  end

  # Starts a lease granted now may hold: at most `max`, no more than were seen in
  # the last second besides the call just admitted, and within half the cap.
  @spec spare(t, pos_integer) :: non_neg_integer
  def spare(w, max) do
    seen = w.recent + w.reserved - 1
    half = if w.cap, do: div(w.cap, 2) - w.recent - w.reserved, else: max
    max(0, Enum.min([max, seen, half]))
  end

  # A lease of `starts` that may be used until `until`.
  @spec lease(t, integer, pos_integer) :: t
  def lease(w, until, starts) do
    %{w | leases: :queue.in({until, starts}, w.leases), reserved: w.reserved + starts}
  end

  # A budget taken over from another node: the leases it granted may still start
  # until `until`, as many as half the cap in any window.
  @spec hold(t, integer) :: t
  def hold(%{cap: nil} = w, _until), do: w
  def hold(%{cap: cap} = w, _until) when cap < 2, do: w
  def hold(w, until), do: lease(w, until, div(w.cap, 2))

  # Forgets what no window that contains `now` (or a later instant) can hold.
  @spec prune(t, integer) :: t
  def prune(w, now),
    do: w |> prune_buckets(div(now - @window_us, @bucket_us)) |> prune_leases(now)

  defp prune_buckets(%{oldest: oldest} = w, first) when oldest != nil and oldest < first do
    {gone, kept} = Enum.split_with(w.buckets, fn {i, _} -> i < first end)
    oldest = if kept == [], do: nil, else: kept |> Enum.map(&elem(&1, 0)) |> Enum.min()
    gone = Enum.reduce(gone, 0, fn {_, n}, sum -> sum + n end)
    %{w | buckets: Map.new(kept), oldest: oldest, recent: w.recent - gone}
  end

  defp prune_buckets(w, _first), do: w

  defp prune_leases(w, now) do
    case :queue.peek(w.leases) do
      {:value, {until, starts}} when until + @window_us <= now ->
        prune_leases(%{w | leases: :queue.drop(w.leases), reserved: w.reserved - starts}, now)

      _ ->
        w
    end
  end
end
