defmodule PortBridge.CircuitBreaker do
  @schema [
    key: [
      type: :any,
      doc: "the breaker (calls with the same key share it)",
      default_doc: "`{target, session_id}`"
    ],
    threshold: [
      type: :pos_integer,
      default: 5,
      doc: "`circuit_break` errors in a row that open it"
    ],
    cooldown_ms: [type: :pos_integer, default: 1_000, doc: "ms it stays open the first time"],
    max_cooldown_ms: [
      type: :pos_integer,
      default: 30_000,
      doc: "the longest time it stays open, in ms"
    ]
  ]

  @moduledoc """
  Stops calling a dependency that keeps failing, for a while, then probes it: what
  the error table's `circuit_break` recovery asks for (`lm_unavailable`: the LM
  provider is down; `communication`: the worker keeps dying).

  Opt-in per call: `PortBridge.request(target, command, args, circuit: true)` (or
  any `PortBridge.DSPy` function). Calls with the same key share one breaker; the
  key is `{target, session_id}` with `circuit: true`, or any term you pass as
  `circuit: key` (one per LM provider, say).

    * closed: calls go through. `threshold` (5) `circuit_break` errors in a row open it;
      a success resets the count (other errors leave it as it is).
    * open: calls fail at once with the last error, its code turned into
      `"circuit_open"` (`details` say until when and the original code), for
      `cooldown_ms` (1 s, doubling at each reopening up to 30 s).
    * half-open: once the cooldown is over, one call goes through as the probe
      (the others still fail at once); its success closes the breaker, a
      `circuit_break` error reopens it.

  `circuit: [key: ..., threshold: 5, cooldown_ms: 1_000, max_cooldown_ms: 30_000]`
  sets them:

  #{PortBridge.Schema.docs(@schema)}
  The breakers live in an ETS table of the `:port_bridge` application:
  the check on the way in is one table read.
  """

  use GenServer
  alias PortBridge.{Error, Schema}

  @table __MODULE__
  @defaults Schema.defaults(@schema)

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc false
  @spec options(term, term) :: keyword | nil
  def options(nil, _default_key), do: nil
  def options(false, _default_key), do: nil
  def options(true, default_key), do: [key: default_key] ++ @defaults

  def options(opts, default_key) when is_list(opts) do
    Schema.validate!(opts, @schema, "the :circuit option")
    Keyword.merge([key: default_key] ++ @defaults, Enum.reject(opts, &is_nil(elem(&1, 1))))
  end

  def options(key, _default_key), do: [key: key] ++ @defaults

  @doc """
  Runs `fun` through the breaker `opts[:key]` (see `options/2`), or fails at once
  while it is open.
  """
  @spec call((() -> {:ok, term} | {:error, Error.t()}), keyword | nil) ::
          {:ok, term} | {:error, Error.t()}
  def call(fun, nil), do: fun.()

  def call(fun, opts) do
    key = opts[:key]

    case admit(key) do
      :closed -> record(key, fun.(), opts, false)
      :probe -> record(key, fun.(), opts, true)
      {:open, until, error} -> {:error, open_error(error, until)}
    end
  end

  @doc "The state of a breaker: `:closed`, `{:open, until_ms}` or `:probing`."
  @spec state(term) :: :closed | {:open, integer} | :probing
  def state(key) do
    case :ets.lookup(@table, key) do
      [] -> :closed
      [{^key, %{open_until: nil}}] -> :closed
      [{^key, %{probing: true}}] -> :probing
      [{^key, %{open_until: until}}] -> {:open, until}
    end
  end

  defp admit(key) do
    case :ets.lookup(@table, key) do
      [] ->
        :closed

      [{^key, %{open_until: nil}}] ->
        :closed

      [{^key, breaker}] ->
        if now() >= breaker.open_until,
          do: GenServer.call(__MODULE__, {:probe, key}),
          else: {:open, breaker.open_until, breaker.error}
    end
  end

  defp record(key, {:error, %Error{recovery: :circuit_break} = error} = result, opts, probe?) do
    GenServer.call(__MODULE__, {:failed, key, error, opts, probe?})
    result
  end

  # A success closes the breaker; so does a probe that did not fail the breaker's way
  # (the call went through). Other errors say nothing about the dependency.
  defp record(key, result, _opts, probe?) do
    if probe? or (match?({:ok, _}, result) and :ets.member(@table, key)),
      do: GenServer.call(__MODULE__, {:reset, key})

    result
  end

  defp open_error(error, until) do
    %{
      error
      | code: "circuit_open",
        message:
          "not sent: #{Exception.message(error)} keeps happening; next try in #{max(until - now(), 0)} ms",
        details: Map.merge(error.details, %{"cause_code" => error.code, "open_until_ms" => until})
    }
  end

  defp now, do: System.monotonic_time(:millisecond)

  ## Server: every change of state goes through here, so a breaker has one probe at a time.

  @impl true
  def init(:ok) do
    :ets.new(@table, [:named_table, :protected, :set, read_concurrency: true])
    {:ok, nil}
  end

  @impl true
  def handle_call({:probe, key}, _from, state) do
    reply =
      case :ets.lookup(@table, key) do
        [{^key, %{open_until: until, probing: false} = breaker}] when until != nil ->
          if now() >= until do
            :ets.insert(@table, {key, %{breaker | probing: true}})
            :probe
          else
            {:open, until, breaker.error}
          end

        [{^key, %{open_until: until, error: error}}] when until != nil ->
          {:open, until, error}

        _ ->
          :closed
      end

    {:reply, reply, state}
  end

  def handle_call({:failed, key, error, opts, probe?}, _from, state) do
    breaker =
      case :ets.lookup(@table, key) do
        [{^key, breaker}] -> breaker
        [] -> %{failures: 0, opens: 0, open_until: nil, probing: false, error: nil}
      end

    failures = breaker.failures + 1

    breaker =
      if probe? or failures >= opts[:threshold] do
        cooldown =
          min(opts[:cooldown_ms] * Integer.pow(2, min(breaker.opens, 20)), opts[:max_cooldown_ms])

        %{
          breaker
          | failures: failures,
            opens: breaker.opens + 1,
            open_until: now() + cooldown,
            probing: false,
            error: error
        }
      else
        %{breaker | failures: failures, error: error}
      end

    :ets.insert(@table, {key, breaker})
    {:reply, :ok, state}
  end

  def handle_call({:reset, key}, _from, state) do
    :ets.delete(@table, key)
    {:reply, :ok, state}
  end
end
