defmodule PortBridge.RateLimit do
  @minute_us 60_000_000
  # Percent of the limits the pace runs at (see the moduledoc).
  @pace_percent 95

  @moduledoc """
  The pace of one model's LM calls, as a provider counts them: `requests_per_minute`
  and `tokens_per_minute`, paced rather than burst.

  `DSPy.configure_lm(target, ..., rate_limit: [requests_per_minute: 600,
  tokens_per_minute: 200_000, burst: 1])` (at least one of the first two; every
  value a positive integer):

    * `requests_per_minute: n` - calls start at least `60/n` s apart (a little
      more, see below), so no more than `n/60` start in any one-second window (a
      provider that allows 600 a minute also refuses 20 in the same second).
    * `tokens_per_minute: t` - each call is charged the worker's estimate of its
      tokens when it starts, and the next one waits until those tokens are paid
      for at (a little under) `t/60` a second; the real figures, reported after the call, correct
      the charge (a call that used fewer tokens gives the difference back).
    * `burst: b` (default 1) - up to `b` calls may start back to back before the
      pace applies (the budget may run `b - 1` intervals ahead, or `b - 1` s
      without `requests_per_minute`).

  The pace is #{@pace_percent}% of the limits: a provider counts a request when it
  arrives, and the time from admission to arrival (the worker building the
  request, the network) varies from call to call. Running #{100 - @pace_percent}% below the
  limit leaves that much of every window for it (50 ms of each second at 10 calls a
  second), so that a provider counting to the millisecond still sees no more than
  its limit.

  This module is the arithmetic, pure (a generic cell rate algorithm: one
  "theoretical arrival time" per budget); `PortBridge.Limiter` is the process that
  queues calls on it. Times are monotonic microseconds.
  """

  @keys [:requests_per_minute, :tokens_per_minute, :burst]

  @type limits :: %{
          requests_per_minute: pos_integer | nil,
          tokens_per_minute: pos_integer | nil,
          burst: pos_integer
        }

  @enforce_keys [:limits]
  defstruct [:limits, :request_tat, :token_tat, paused_until: nil]

  @type t :: %__MODULE__{
          limits: limits,
          request_tat: integer | nil,
          token_tat: integer | nil,
          paused_until: integer | nil
        }

  ## Limits

  @doc """
  Checks a `rate_limit:` option (a keyword list or a map with atom keys); raises an
  `ArgumentError` that names the option. Returns the limits.
  """
  @spec limits!(term, atom) :: limits
  def limits!(value, option \\ :rate_limit) do
    case parse(value, &atom_key/1) do
      {:ok, limits} -> limits
      {:error, message} -> raise ArgumentError, "#{inspect(option)}: #{message}"
    end
  end

  @doc """
  The limits of a map from the wire (string keys, as a worker sends them in an
  admission request): `{:ok, limits}` or `{:error, message}`. The worker is
  untrusted: anything but the three keys with positive integers is refused.
  """
  @spec from_wire(term) :: {:ok, limits} | {:error, String.t()}
  def from_wire(value) when is_map(value), do: parse(value, &string_key/1)
  def from_wire(value), do: {:error, "limits must be a map, got: #{inspect(value, limit: 5)}"}

  @doc "The limits as the wire's `rate_limit` map (string keys, absent ones left out)."
  @spec to_wire(limits) :: map
  def to_wire(limits) do
    for key <- @keys, limits[key] != nil, into: %{}, do: {Atom.to_string(key), limits[key]}
  end

  defp parse(value, key_of) do
    with {:ok, pairs} <- pairs(value),
         {:ok, found} <- collect(pairs, key_of, %{}) do
      cond do
        not Map.has_key?(found, :requests_per_minute) and
            not Map.has_key?(found, :tokens_per_minute) ->
          {:error, "give requests_per_minute:, tokens_per_minute: or both"}

        true ->
          {:ok,
           %{
             requests_per_minute: found[:requests_per_minute],
             tokens_per_minute: found[:tokens_per_minute],
             burst: Map.get(found, :burst, 1)
           }}
      end
    end
  end

  defp pairs(value) when is_map(value), do: {:ok, Map.to_list(value)}

  defp pairs(value) when is_list(value) do
    if Keyword.keyword?(value),
      do: {:ok, value},
      else: {:error, "expected a keyword list, got: #{inspect(value, limit: 5)}"}
  end

  defp pairs(value), do: {:error, "expected a keyword list, got: #{inspect(value, limit: 5)}"}

  defp collect([], _key_of, found), do: {:ok, found}

  defp collect([{key, value} | rest], key_of, found) do
    case key_of.(key) do
      nil ->
        {:error,
         "unknown key #{inspect(key, limit: 3)}; valid keys: #{Enum.map_join(@keys, ", ", &"#{&1}:")}"}

      key when is_integer(value) and value > 0 ->
        collect(rest, key_of, Map.put(found, key, value))

      key ->
        {:error, "#{key}: must be a positive integer, got: #{inspect(value, limit: 3)}"}
    end
  end

  defp atom_key(key) when key in @keys, do: key
  defp atom_key(_key), do: nil

  defp string_key("requests_per_minute"), do: :requests_per_minute
  defp string_key("tokens_per_minute"), do: :tokens_per_minute
  defp string_key("burst"), do: :burst
  defp string_key(_key), do: nil

  ## The budget

  @doc "A budget with nothing spent."
  @spec new(limits) :: t
  def new(limits), do: %__MODULE__{limits: limits}

  @doc "New limits for a budget, keeping what was spent."
  @spec set_limits(t, limits) :: t
  def set_limits(budget, limits), do: %{budget | limits: limits}

  @doc """
  The earliest time, not before `now`, at which a call estimated at `tokens` may
  start.
  """
  @spec next_at(t, integer, non_neg_integer) :: integer
  def next_at(%__MODULE__{} = budget, now, _tokens) do
    tau = tolerance(budget.limits)

    now
    |> later(budget.request_tat && budget.request_tat - tau)
    |> later(budget.token_tat && budget.token_tat - tau)
    |> later(budget.paused_until)
  end

  @doc """
  Records a call of `tokens` starting at `at` (not before `next_at/3`): the next
  one waits one interval, and for the tokens.
  """
  @spec take(t, integer, non_neg_integer) :: t
  def take(%__MODULE__{limits: limits} = budget, at, tokens) do
    request_tat =
      case limits.requests_per_minute do
        nil -> budget.request_tat
        rpm -> later(at, budget.request_tat) + interval(rpm)
      end

    charge_tokens(%{budget | request_tat: request_tat}, at, tokens)
  end

  @doc """
  Corrects the tokens charged: `delta` more (or, negative, fewer) than the
  estimate. Tokens given back never make room before now; they only shorten a wait.
  """
  @spec correct(t, integer) :: t
  def correct(%__MODULE__{token_tat: nil} = budget, _delta), do: budget
  def correct(%__MODULE__{limits: %{tokens_per_minute: nil}} = budget, _delta), do: budget

  def correct(%__MODULE__{limits: %{tokens_per_minute: tpm}} = budget, delta) do
    %{budget | token_tat: budget.token_tat + token_time(delta, tpm)}
  end

  @doc """
  Charges `tokens` at `at` without a request (the tokens of a lease's calls,
  charged when it is granted).
  """
  @spec charge_tokens(t, integer, non_neg_integer) :: t
  def charge_tokens(%__MODULE__{limits: %{tokens_per_minute: nil}} = budget, _at, _tokens),
    do: budget

  def charge_tokens(%__MODULE__{limits: %{tokens_per_minute: tpm}} = budget, at, tokens) do
    %{budget | token_tat: later(at, budget.token_tat) + token_time(tokens, tpm)}
  end

  @doc """
  The tokens that may be charged at `now` with the budget paid for no further
  than `span` us ahead (nil: no token limit).
  """
  @spec token_room(t, integer, non_neg_integer) :: non_neg_integer | nil
  def token_room(%__MODULE__{limits: %{tokens_per_minute: nil}}, _now, _span), do: nil

  def token_room(%__MODULE__{limits: %{tokens_per_minute: tpm}} = budget, now, span) do
    ahead = now + span - later(now, budget.token_tat)
    if ahead > 0, do: div(ahead * tpm * @pace_percent, @minute_us * 100), else: 0
  end

  @doc "No call starts before `until` (a provider asked to wait: Retry-After)."
  @spec pause(t, integer) :: t
  def pause(budget, until), do: %{budget | paused_until: later(until, budget.paused_until)}

  @doc """
  Nothing starts before `at`: the budget as if calls had been admitted up to then
  (a node that takes over a cluster's budget, while leases the previous owner
  granted may still run).
  """
  @spec hold_until(t, integer) :: t
  def hold_until(budget, at) do
    %{
      budget
      | request_tat: later(at, budget.request_tat),
        token_tat: if(budget.limits.tokens_per_minute, do: later(at, budget.token_tat))
    }
  end

  @doc "Microseconds between two calls paced under `requests_per_minute` (rounded up)."
  @spec interval(pos_integer) :: pos_integer
  def interval(rpm), do: token_time(1, rpm)

  @doc """
  Microseconds `tokens` take paced under `tokens_per_minute`: rounded up when
  charged, down when given back (negative).
  """
  @spec token_time(integer, pos_integer) :: integer
  def token_time(tokens, tpm) when tokens >= 0 do
    per = tpm * @pace_percent
    div(tokens * @minute_us * 100 + per - 1, per)
  end

  def token_time(tokens, tpm), do: -div(-tokens * @minute_us * 100, tpm * @pace_percent)

  # How far ahead the budget may run: burst - 1 intervals (a second each without a
  # request rate).
  defp tolerance(%{burst: 1}), do: 0

  defp tolerance(%{burst: burst, requests_per_minute: rpm}) do
    (burst - 1) * if(rpm, do: interval(rpm), else: 1_000_000)
  end

  defp later(a, nil), do: a
  defp later(a, b), do: max(a, b)
end
