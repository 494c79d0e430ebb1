defmodule PortBridge.Limiter.Queue do
  @moduledoc false
  # One model in a PortBridge.Limiter: the calls waiting for admission (in arrival
  # order), its budget (PortBridge.RateLimit; authoritative on the node that holds
  # it) and its starts per one-second window (Window: what leases need), the start
  # times leased from the owner's budget (other nodes of a cluster) and the lease
  # of starts the owner granted this node (`held`), and the estimates charged for
  # calls of 1.2 workers that have not reported yet. Pure: the Limiter process owns
  # the timers, messages and replies.

  alias PortBridge.RateLimit
  alias PortBridge.Limiter.Window

  # Estimates kept for corrections: a worker reports every call, so this only
  # bounds what calls that never report (their Python died) leave behind.
  @max_charged 1_024
  # Calls one lease asks for at most.
  @max_lease 64
  # A lease's tokens keep the token budget paid for at most this far ahead (half of
  # a second's tokens, as its starts stay within half a second's requests).
  @lease_span_us 500_000

  defstruct [
    :budget,
    :window,
    :owner,
    :asking,
    :asked_at,
    :ask_after,
    :held,
    :wake,
    :timer,
    queue: :queue.new(),
    slots: [],
    charged: :queue.new(),
    admitted: 0,
    leased: 0
  ]

  @type slot :: {at :: integer, tokens :: non_neg_integer}
  # A lease: `starts` that may start without asking until `valid_us` after the
  # asker asked, their estimates within `tokens` (nil: no token limit).
  @type lease :: %{starts: pos_integer, valid_us: pos_integer, tokens: non_neg_integer | nil}
  # How leases are sized (nil: none are granted): valid_us, and max starts.
  @type lease_config :: %{valid_us: pos_integer, max: pos_integer} | nil
  @type t :: %__MODULE__{}

  @spec new(RateLimit.limits()) :: t
  def new(limits),
    do: %__MODULE__{budget: RateLimit.new(limits), window: Window.new(limits.requests_per_minute)}

  # New limits, keeping what was spent.
  @spec set_limits(t, RateLimit.limits()) :: t
  def set_limits(m, limits) do
    window = %{m.window | cap: Window.new(limits.requests_per_minute).cap}
    %{m | budget: RateLimit.set_limits(m.budget, limits), window: window}
  end

  @spec waiting(t) :: non_neg_integer
  def waiting(m), do: :queue.len(m.queue)

  @spec push(t, reference) :: t
  def push(m, ref), do: %{m | queue: :queue.in(ref, m.queue)}

  @spec drop(t, reference) :: t
  def drop(m, ref), do: %{m | queue: :queue.delete(ref, m.queue)}

  # A call that finds nobody waiting: admitted at once when a leased slot is due,
  # (`local?`: this node holds the budget) the budget allows it now, or (another
  # node holds it) this node's lease has a start left. `fifo?`: the call's worker
  # reports no estimate with its tokens (1.2), so its estimate is kept to pair.
  @spec admit_now(t, non_neg_integer, integer, boolean, boolean) :: {:ok, t} | :wait
  def admit_now(m, tokens, now, local?, fifo? \\ true) do
    m = %{m | window: Window.prune(m.window, now)}

    with true <- :queue.is_empty(m.queue),
         {:ok, m, charged} <- start(m, tokens, now, local?) do
      {:ok, admitted(m, charged, fifo?)}
    else
      _ -> :wait
    end
  end

  defp start(%{slots: [{at, charged} | slots]} = m, _tokens, now, _local?) when at <= now,
    do: {:ok, %{m | slots: slots}, charged}

  defp start(m, tokens, now, true) do
    if RateLimit.next_at(m.budget, now, tokens) <= now and Window.room?(m.window) do
      m = %{
        m
        | budget: RateLimit.take(m.budget, now, tokens),
          window: Window.record(m.window, now)
      }

      {:ok, m, tokens}
    else
      :wait
    end
  end

  defp start(%{held: %{left: left, until: until} = held} = m, tokens, now, false)
       when left > 0 and until > now and (held.tokens == nil or held.tokens >= tokens) do
    {:ok, %{m | held: spend(held, 1, tokens)}, tokens}
  end

  defp start(_m, _tokens, _now, false), do: :wait

  defp spend(held, starts, tokens),
    do: %{held | left: held.left - starts, tokens: held.tokens && held.tokens - tokens}

  defp admitted(m, tokens, true), do: charge(%{m | admitted: m.admitted + 1}, tokens)
  defp admitted(m, _tokens, false), do: %{m | admitted: m.admitted + 1}

  defp charge(m, tokens) do
    charged = :queue.in(tokens, m.charged)

    if :queue.len(charged) > @max_charged,
      do: %{m | charged: :queue.drop(charged)},
      else: %{m | charged: charged}
  end

  # A lease for the worker whose call was just admitted at once (admit_now/5), of
  # calls estimated like it at `tokens`: from the budget's spare starts (Window)
  # and tokens on the node that holds it, or out of this node's own lease on
  # another. Nil when there is no room, while paused, or when calls wait.
  @spec lease(t, non_neg_integer, integer, boolean, lease_config) :: {lease | nil, t}
  def lease(m, _tokens, _now, _local?, nil), do: {nil, m}

  def lease(m, tokens, now, local?, config) do
    cond do
      not :queue.is_empty(m.queue) or paused?(m, now) -> {nil, m}
      local? -> grant_lease(m, tokens, now, config)
      true -> sublease(m, tokens, now, config)
    end
  end

  defp paused?(m, now), do: m.budget.paused_until != nil and m.budget.paused_until > now

  defp grant_lease(m, tokens, now, config) do
    per_call = max(tokens, 1)

    {starts, room} =
      case RateLimit.token_room(m.budget, now, @lease_span_us) do
        nil -> {Window.spare(m.window, config.max), nil}
        room -> {min(Window.spare(m.window, config.max), div(room, per_call)), room}
      end

    if starts < 1 do
      {nil, m}
    else
      leased = room && starts * per_call
      # The client's count runs 2% (and a ms) longer than the worker's, for the
      # drift between two monotonic clocks (the BEAM's may slew by up to 1%).
      until = now + config.valid_us + div(config.valid_us, 50) + 1_000

      m = %{
        m
        | budget: RateLimit.charge_tokens(m.budget, now, leased || 0),
          window: Window.lease(m.window, until, starts),
          leased: m.leased + starts
      }

      {%{starts: starts, valid_us: config.valid_us, tokens: leased}, m}
    end
  end

  # Part of the lease this node holds from the owner, for one of its Pythons:
  # ending when this node's does (the Python counts from when it asked, earlier).
  defp sublease(%{held: %{left: left, until: until} = held} = m, tokens, now, config)
       when left > 0 and until - now >= 1_000 do
    per_call = max(tokens, 1)
    starts = min(left, config.max)
    starts = if held.tokens, do: min(starts, div(held.tokens, per_call)), else: starts
    valid_us = min(config.valid_us, until - now)

    if starts < 1 do
      {nil, m}
    else
      leased = held.tokens && starts * per_call
      lease = %{starts: starts, valid_us: valid_us, tokens: leased}
      {lease, %{m | held: spend(held, starts, leased || 0), leased: m.leased + starts}}
    end
  end

  defp sublease(m, _tokens, _now, _config), do: {nil, m}

  # Admits from the head of the queue what may start now; answers `expired` the
  # calls that cannot start before their deadline. Sets `wake`: when to look again.
  @spec run(t, map, integer, boolean) :: {[reference], [reference], t}
  def run(m, waiters, now, local?),
    do: run(%{m | window: Window.prune(m.window, now)}, waiters, now, local?, [], [])

  defp run(m, waiters, now, local?, admitted, expired) do
    case :queue.peek(m.queue) do
      :empty ->
        # Leased starts that came with nobody to use them are lost.
        slots = Enum.drop_while(m.slots, fn {at, _} -> at <= now end)
        {Enum.reverse(admitted), Enum.reverse(expired), %{m | slots: slots, wake: nil}}

      {:value, ref} ->
        %{tokens: tokens, deadline: deadline, fifo?: fifo?} = Map.fetch!(waiters, ref)
        m_next = %{m | queue: :queue.drop(m.queue)}

        case start(m, tokens, now, local?) do
          {:ok, m, charged} ->
            m = admitted(%{m | queue: m_next.queue}, charged, fifo?)
            run(m, waiters, now, local?, [ref | admitted], expired)

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
  # node that holds it) once its window has room; nil when a lease is still to come.
  defp earliest(%{slots: [{at, _} | _]}, _tokens, _now, _local?), do: at

  defp earliest(m, tokens, now, true) do
    at = RateLimit.next_at(m.budget, now, tokens)
    if Window.room?(m.window), do: at, else: max(at, Window.free_at(m.window))
  end

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
  def grant(m, estimates, now, horizon),
    do: grant(%{m | window: Window.prune(m.window, now)}, estimates, now, horizon, [])

  defp grant(m, [], _now, _horizon, grants), do: {Enum.reverse(grants), nil, m}

  defp grant(m, [tokens | rest], now, horizon, grants) do
    at = RateLimit.next_at(m.budget, now, tokens)

    cond do
      # Leases outstanding fill the window: a start granted now could not fit at
      # any later time either (the window counts every start already granted).
      not Window.room?(m.window) ->
        {Enum.reverse(grants), max(Window.free_at(m.window) - now, 0), m}

      at <= now + horizon ->
        m = %{
          m
          | budget: RateLimit.take(m.budget, at, tokens),
            window: Window.record(m.window, at)
        }

        grant(m, rest, now, horizon, [{at - now, tokens} | grants])

      true ->
        {Enum.reverse(grants), at - horizon - now, m}
    end
  end

  # On the owner, what another node asked for (`estimates` of its queued calls):
  # start times (grant/4), and when they all start now, so that the budget is idle,
  # a lease of starts for the calls that follow (sized as a Python's, lease/5).
  # `limiter`: the Limiter's `horizon` and `lease` config.
  @spec lend(t, [non_neg_integer], integer, %{
          :horizon => non_neg_integer,
          :lease => lease_config,
          optional(atom) => any
        }) ::
          {list, non_neg_integer | nil, lease | nil, t}
  def lend(m, estimates, now, limiter) do
    {grants, retry_in, m} = grant(m, estimates, now, limiter.horizon)

    {lease, m} =
      case grants do
        [{0, _} | _] when retry_in == nil ->
          lease(m, Enum.max(estimates), now, true, limiter.lease)

        _ ->
          {nil, m}
      end

    {grants, retry_in, lease, m}
  end

  # Starts leased from the owner, as delays from when it granted them: on this
  # node's clock they start no earlier than the owner meant. With them maybe a
  # lease of starts to use at any time (`lease`), counted from when this node asked.
  @spec leased(t, reference, list, non_neg_integer | nil, integer, lease | nil) :: t
  def leased(m, ref, grants, retry_in, now, lease \\ nil) do
    slots = Enum.sort(m.slots ++ for({delay, tokens} <- grants, do: {now + delay, tokens}))
    paused = m.budget.paused_until
    slots = if paused, do: Enum.reject(slots, fn {at, _} -> at < paused end), else: slots
    asking = if m.asking == ref, do: nil, else: m.asking

    held =
      case lease do
        %{starts: starts, valid_us: valid_us, tokens: tokens} when m.asking == ref ->
          %{left: starts, tokens: tokens, until: (m.asked_at || now) + valid_us}

        _ ->
          m.held
      end

    %{m | slots: slots, asking: asking, ask_after: retry_in && now + retry_in, held: held}
  end

  # A lease that never came (its owner gone): ask again.
  @spec lease_lost(t, reference) :: t
  def lease_lost(%{asking: ref} = m, ref), do: %{m | asking: nil}
  def lease_lost(m, _ref), do: m

  # The provider said to wait until `until`: nothing starts before, leased or not.
  @spec pause(t, integer) :: t
  def pause(m, until) do
    slots = Enum.reject(m.slots, fn {at, _} -> at < until end)
    %{m | budget: RateLimit.pause(m.budget, until), slots: slots, held: nil}
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
