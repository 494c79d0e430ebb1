defmodule PortBridge.Limiter.Queue do
  @moduledoc false
  # One model in a PortBridge.Limiter: the calls waiting for admission (in arrival
  # order), its budget (PortBridge.RateLimit; authoritative on the node that holds
  # it), the start times leased from the owner's budget (other nodes of a cluster),
  # and the estimates charged for calls that have not reported yet. Pure: the
  # Limiter process owns the timers, messages and replies.

  alias PortBridge.RateLimit

  # Estimates kept for corrections: a worker reports every call, so this only
  # bounds what calls that never report (their Python died) leave behind.
  @max_charged 1_024
  # Calls one lease asks for at most.
  @max_lease 64

  defstruct [
    :budget,
    :owner,
    :asking,
    :ask_after,
    :wake,
    :timer,
    queue: :queue.new(),
    slots: [],
    charged: :queue.new()
  ]

  @type slot :: {at :: integer, tokens :: non_neg_integer}
  @type t :: %__MODULE__{}

  @spec new(RateLimit.limits()) :: t
  def new(limits), do: %__MODULE__{budget: RateLimit.new(limits)}

  @spec waiting(t) :: non_neg_integer
  def waiting(m), do: :queue.len(m.queue)

  @spec push(t, reference) :: t
  def push(m, ref), do: %{m | queue: :queue.in(ref, m.queue)}

  @spec drop(t, reference) :: t
  def drop(m, ref), do: %{m | queue: :queue.delete(ref, m.queue)}

  # A call that finds nobody waiting: admitted at once when a leased slot is due
  # or (`local?`: this node holds the budget) the budget allows it now.
  @spec admit_now(t, non_neg_integer, integer, boolean) :: {:ok, t} | :wait
  def admit_now(m, tokens, now, local?) do
    if :queue.is_empty(m.queue), do: start(m, tokens, now, local?), else: :wait
  end

  defp start(%{slots: [{at, charged} | slots]} = m, _tokens, now, _local?) when at <= now,
    do: {:ok, charge(%{m | slots: slots}, charged)}

  defp start(m, tokens, now, true) do
    if RateLimit.next_at(m.budget, now, tokens) <= now,
      do: {:ok, charge(%{m | budget: RateLimit.take(m.budget, now, tokens)}, tokens)},
      else: :wait
  end

  defp start(_m, _tokens, _now, false), do: :wait

  defp charge(m, tokens) do
    charged = :queue.in(tokens, m.charged)

    if :queue.len(charged) > @max_charged,
      do: %{m | charged: :queue.drop(charged)},
      else: %{m | charged: charged}
  end

  # Admits from the head of the queue what may start now; answers `expired` the
  # calls that cannot start before their deadline. Sets `wake`: when to look again.
  @spec run(t, map, integer, boolean) :: {[reference], [reference], t}
  def run(m, waiters, now, local?), do: run(m, waiters, now, local?, [], [])

  defp run(m, waiters, now, local?, admitted, expired) do
    case :queue.peek(m.queue) do
      :empty ->
        # Leased starts that came with nobody to use them are lost.
        slots = Enum.drop_while(m.slots, fn {at, _} -> at <= now end)
        {Enum.reverse(admitted), Enum.reverse(expired), %{m | slots: slots, wake: nil}}

      {:value, ref} ->
        %{tokens: tokens, deadline: deadline} = Map.fetch!(waiters, ref)
        m_next = %{m | queue: :queue.drop(m.queue)}

        case start(m, tokens, now, local?) do
          {:ok, m} ->
            run(%{m | queue: m_next.queue}, waiters, now, local?, [ref | admitted], expired)

          :wait ->
            case earliest(m, tokens, now, local?) do
              at when is_integer(at) and deadline != :infinity and at > deadline ->
                run(m_next, waiters, now, local?, admitted, [ref | expired])

              at ->
                {Enum.reverse(admitted), Enum.reverse(expired), %{m | wake: at}}
            end
        end
    end
  end

  # The earliest start for the head: its leased slot, else the budget's (on the
  # node that holds it); nil when a lease is still to come.
  defp earliest(%{slots: [{at, _} | _]}, _tokens, _now, _local?), do: at
  defp earliest(m, tokens, now, true), do: RateLimit.next_at(m.budget, now, tokens)
  defp earliest(_m, _tokens, _now, false), do: nil

  # The estimates of the queued calls that no leased slot covers (at most
  # @max_lease), when a lease may be asked for now.
  @spec to_lease(t, map, integer) :: [non_neg_integer]
  def to_lease(%{asking: ref}, _waiters, _now) when ref != nil, do: []

  def to_lease(%{ask_after: after_us}, _waiters, now) when after_us != nil and now < after_us,
    do: []

  def to_lease(m, waiters, _now) do
    m.queue
    |> :queue.to_list()
    |> Enum.drop(length(m.slots))
    |> Enum.take(@max_lease)
    |> Enum.map(&Map.fetch!(waiters, &1).tokens)
  end

  # On the owner: start times for `estimates`, in order, at most `horizon` us
  # ahead; as delays from now. Also when to ask again for the rest (nil: all given).
  @spec grant(t, [non_neg_integer], integer, non_neg_integer) ::
          {[{non_neg_integer, non_neg_integer}], non_neg_integer | nil, t}
  def grant(m, estimates, now, horizon), do: grant(m, estimates, now, horizon, [])

  defp grant(m, [], _now, _horizon, grants), do: {Enum.reverse(grants), nil, m}

  defp grant(m, [tokens | rest], now, horizon, grants) do
    at = RateLimit.next_at(m.budget, now, tokens)

    if at <= now + horizon do
      m = %{m | budget: RateLimit.take(m.budget, at, tokens)}
      grant(m, rest, now, horizon, [{at - now, tokens} | grants])
    else
      {Enum.reverse(grants), at - horizon - now, m}
    end
  end

  # Starts leased from the owner, as delays from when it granted them: on this
  # node's clock they start no earlier than the owner meant.
  @spec leased(t, reference, list, non_neg_integer | nil, integer) :: t
  def leased(m, ref, grants, retry_in, now) do
    slots = Enum.sort(m.slots ++ for({delay, tokens} <- grants, do: {now + delay, tokens}))
    paused = m.budget.paused_until
    slots = if paused, do: Enum.reject(slots, fn {at, _} -> at < paused end), else: slots
    asking = if m.asking == ref, do: nil, else: m.asking
    %{m | slots: slots, asking: asking, ask_after: retry_in && now + retry_in}
  end

  # A lease that never came (its owner gone): ask again.
  @spec lease_lost(t, reference) :: t
  def lease_lost(%{asking: ref} = m, ref), do: %{m | asking: nil}
  def lease_lost(m, _ref), do: m

  # The provider said to wait until `until`: nothing starts before, leased or not.
  @spec pause(t, integer) :: t
  def pause(m, until) do
    slots = Enum.reject(m.slots, fn {at, _} -> at < until end)
    %{m | budget: RateLimit.pause(m.budget, until), slots: slots}
  end

  # A call reported `tokens` used: the difference from its estimate (the oldest
  # one charged and not yet reported).
  @spec used(t, non_neg_integer) :: {integer, t}
  def used(m, tokens) do
    case :queue.out(m.charged) do
      {{:value, estimate}, charged} -> {tokens - estimate, %{m | charged: charged}}
      {:empty, _} -> {tokens, m}
    end
  end

  @spec correct(t, integer) :: t
  def correct(m, delta), do: %{m | budget: RateLimit.correct(m.budget, delta)}

  # Arms the model's timer for `wake` (and a lease to ask again for), one timer
  # at a time; the Limiter gets `{:timeout, timer, {:pump, model}}`.
  @spec arm(t, String.t()) :: t
  def arm(m, model) do
    wake =
      case {m.wake, :queue.is_empty(m.queue) || m.asking != nil, m.ask_after} do
        {wake, false, ask} when ask != nil -> if wake, do: min(wake, ask), else: ask
        {wake, _, _} -> wake
      end

    case m.timer do
      {_, ^wake} ->
        m

      old ->
        if old, do: :erlang.cancel_timer(elem(old, 0))

        timer =
          wake &&
            {:erlang.start_timer(ceil_ms(wake), self(), {:pump, model}, abs: true), wake}

        %{m | timer: timer}
    end
  end

  # Timers have ms resolution: rounded up, so that nothing starts early.
  defp ceil_ms(us), do: -div(-us, 1_000)
end
