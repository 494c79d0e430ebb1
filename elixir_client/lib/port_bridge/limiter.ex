defmodule PortBridge.Limiter do
  @moduledoc """
  Admission to LM calls: one budget per model (`PortBridge.RateLimit`) shared by
  every Python of a pool, and in a `PortBridge.Cluster` by every node.

  Before each LM call a worker whose LM has a `rate_limit` asks its client for
  admission (the built-in callback `portbridge.admit`, with the model, its limits
  and an estimate of the call's tokens); `admit/4` answers when the call may start.
  Calls wait in arrival order, at most until their request's deadline (then a
  `timeout` error); a caller that goes away (its request cancelled) leaves the
  queue. After its calls the worker reports what they used (`lm_call` events):
  `report/2` corrects the tokens charged, and a provider's 429 with Retry-After
  pauses the model for every Python.

  Asking costs a round trip per call. Well under the limit, an admission also
  leases the worker the next calls' starts (protocol 1.3: a worker that lists
  `"lm_leases"`): up to `:lease_starts` (64) calls it may start without asking
  within `:lease_ms` (500 ms). Whatever the worker does with them, the limit
  holds: each leased start is counted in every one-second window its lease
  meets, as if it came at any instant of it, and an admitted call must fit beside
  them (no window holds more than `requests_per_minute / 60` starts); a lease's
  tokens are charged when it is granted (as many as its starts times the asking
  call's estimate). A lease is granted only to a call that starts at once (nobody
  waiting, not paused), of no more starts than the calls seen in the last second
  (so a model's first call, or the first of a burst at an idle model, gets none),
  and only while the starts of that second and those leased stay within half its
  limit: calls at the limit never get one, and pay nothing for them. Under a
  token limit, a worker that holds leases gives back what its calls did not use
  of their estimates with its next admission (`returned_tokens`) instead of an
  `lm_call` event per call; a call that used more is still reported at once.

  In a cluster (`cluster: name`) the limiters of every node join a `:pg` group and
  each model's budget lives on one of them: the member that ranks highest for the
  model by rendezvous hashing (as sessions are placed). Calls there are admitted
  from the budget directly; other nodes take leases from it: start times reserved
  for the calls they have queued, at most `:lease_horizon` ms ahead, used at those
  times; and, well under the limit, a lease of starts as above, from which they
  admit their calls at once and lease their own Pythons a part. A 429 pauses the
  model on every node (and voids the leases nodes hold). When the members change,
  a node that takes a budget over starts it `:lease_horizon` ms late, past any
  lease the previous owner may have granted.
  """

  use GenServer

  alias PortBridge.{Courier, Telemetry}
  alias PortBridge.Limiter.{Membership, Queue, Window, Wire}

  # ms to wait for a lease before asking again (its owner may have gone).
  @lease_wait 2_000

  @type outcome :: {:ok, map} | {:error, String.t(), String.t()}

  @doc """
  Starts a limiter. Options: `:name`; `:cluster`, the name of a `PortBridge.Cluster`
  (one budget per model across its nodes); `:lease_horizon`, ms (default 1000);
  `:lease_ms` (default 500, at most `:lease_horizon`; 0: no leases) and
  `:lease_starts` (default 64): how long and how many starts a lease gives a worker
  at most.
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts) do
    {name, opts} = Keyword.pop(opts, :name)
    GenServer.start_link(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  @doc false
  def child_spec(opts),
    do: %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}

  @doc """
  Waits for admission of one LM call: `args` as the worker sends them (`"model"`,
  `"limits"`, `"estimated_tokens"`), `deadline` the request's (monotonic ms, or
  `:infinity`). Returns `{:ok, %{"admitted" => true}}`, with a `"lease"` when the
  worker takes leases (`lease: true`: its `ready` lists `"lm_leases"`) and the
  model is well under its limit; or `{:error, category, message}` (`timeout` at
  the deadline, `validation` for arguments a worker should never send,
  `overloaded` when the limiter is gone). Emits `[:port_bridge, :lm, :admit]`.
  """
  @spec admit(GenServer.server(), map, integer | :infinity, keyword) :: outcome
  def admit(limiter, args, deadline, opts \\ []) do
    started = System.monotonic_time()
    lease? = Keyword.get(opts, :lease, false)

    outcome =
      case Wire.admission(args) do
        {:ok, model, limits, tokens, returned} ->
          try do
            # Tokens the worker's earlier calls did not use (1.3): given back first
            # (a cast, so it arrives before the call that follows it).
            if returned > 0, do: GenServer.cast(limiter, {:corrected, model, -returned})
            GenServer.call(limiter, {:admit, model, limits, tokens, deadline, lease?}, :infinity)
          catch
            # Retryable, and no reason to replace the Python (an internal error would).
            :exit, reason ->
              {:error, "overloaded", "the rate limiter is gone: #{inspect(reason, limit: 5)}"}
          end

        {:error, message} ->
          {:error, "validation", message}
      end

    Telemetry.execute(
      [:port_bridge, :lm, :admit],
      %{duration: System.monotonic_time() - started},
      %{
        model: args["model"],
        result: Wire.result(outcome),
        limiter: limiter,
        leased: Wire.leased(outcome)
      }
    )

    outcome
  end

  @doc """
  What a worker reported after an LM call (an `lm_call` event's data): the real
  tokens correct the estimate charged (by the event's `estimated_tokens`; a 1.2
  worker's events, without it, are paired with its admissions in order), a
  Retry-After pauses the model everywhere. Never blocks; ignores what it cannot read.
  """
  @spec report(GenServer.server(), map) :: :ok
  def report(limiter, data) do
    with {model, pause, correction} <- Wire.report(data) do
      if pause do
        Telemetry.execute([:port_bridge, :lm, :pause], %{retry_after: pause}, %{
          model: model,
          limiter: limiter
        })

        GenServer.cast(limiter, {:pause, model, pause})
      end

      if correction, do: GenServer.cast(limiter, Tuple.insert_at(correction, 1, model))
    end

    :ok
  end

  @doc """
  Per model: its limits, calls waiting, calls `admitted` and starts `leased` so
  far, starts `reserved` by leases now, and in a cluster the node holding its budget.
  """
  @spec info(GenServer.server()) :: %{String.t() => map}
  def info(limiter), do: GenServer.call(limiter, :info)

  ## Server

  @impl true
  def init(opts) do
    cluster = opts[:cluster]
    horizon = Keyword.get(opts, :lease_horizon, 1_000) * 1_000

    lease =
      case min(Keyword.get(opts, :lease_ms, 500) * 1_000, horizon) do
        0 -> nil
        valid_us -> %{valid_us: valid_us, max: Keyword.get(opts, :lease_starts, 64)}
      end

    if cluster, do: Membership.join(cluster)

    {:ok,
     %{
       cluster: cluster,
       horizon: horizon,
       lease: lease,
       models: %{},
       # monitor ref => waiter
       waiters: %{},
       nodes: [],
       changed_at: now()
     }}
  end

  @impl true
  def handle_call({:admit, model, limits, tokens, deadline, lease?}, from, state) do
    now = now()
    state = state |> Membership.refresh(now) |> Membership.ensure(model, limits, now)
    m = state.models[model]
    local? = Membership.route(state, model) == :local

    case Queue.admit_now(m, tokens, now, local?, not lease?) do
      {:ok, m} ->
        {lease, m} =
          if lease?, do: Queue.lease(m, tokens, now, local?, state.lease), else: {nil, m}

        {:reply, {:ok, Wire.admitted(lease)}, put_in(state.models[model], m)}

      :wait ->
        {pid, _} = from
        ref = Process.monitor(pid)
        deadline_us = if deadline == :infinity, do: :infinity, else: deadline * 1_000

        timer =
          deadline != :infinity &&
            :erlang.start_timer(deadline, self(), {:deadline, ref}, abs: true)

        waiter = %{
          from: from,
          model: model,
          tokens: tokens,
          deadline: deadline_us,
          timer: timer,
          fifo?: not lease?
        }

        state = %{state | waiters: Map.put(state.waiters, ref, waiter)}
        {:noreply, pump(put_in(state.models[model], Queue.push(m, ref)), model, now)}
    end
  end

  def handle_call(:info, _from, state) do
    state = Membership.refresh(state, now())

    info =
      Map.new(state.models, fn {model, m} ->
        {model,
         %{
           limits: m.budget.limits,
           waiting: Queue.waiting(m),
           admitted: m.admitted,
           leased: m.leased,
           reserved: Window.prune(m.window, now()).reserved,
           owner: Membership.owner(state, model),
           paused_until: m.budget.paused_until
         }}
      end)

    {:reply, info, state}
  end

  @impl true
  def handle_cast({:corrected, model, delta}, state),
    do: {:noreply, with_model(state, model, fn _m -> correct(state, model, delta) end)}

  # A 1.2 worker's report: paired with the oldest estimate charged.
  def handle_cast({:used, model, tokens}, state) do
    {:noreply,
     with_model(state, model, fn m ->
       {delta, m} = Queue.used(m, tokens)
       correct(put_in(state.models[model], m), model, delta)
     end)}
  end

  def handle_cast({:pause, model, ms}, %{cluster: nil} = state),
    do: {:noreply, paused(state, model, ms)}

  def handle_cast({:pause, model, ms}, state) do
    for pid <- Membership.limiters(state.cluster),
        do: Courier.deliver(pid, {:paused, model, ms})

    {:noreply, state}
  end

  @impl true
  def handle_info({:paused, model, ms}, state), do: {:noreply, paused(state, model, ms)}

  def handle_info({:correct, model, delta}, state),
    do: {:noreply, update(state, model, &Queue.correct(&1, delta))}

  # A lease asked by another node: start times for its queued calls, from this
  # node's budget, at most the horizon ahead; and when they all start now, well
  # under the limit, a lease of starts for the calls that follow.
  def handle_info({:lease, ref, from, model, limits, estimates}, state) do
    now = now()
    state = state |> Membership.refresh(now) |> Membership.ensure(model, limits, now)
    {grants, retry_in, lease, m} = Queue.lend(state.models[model], estimates, now, state)
    Courier.deliver(from, {:leased, ref, model, grants, retry_in, lease})
    {:noreply, pump(put_in(state.models[model], m), model, now)}
  end

  def handle_info({:leased, ref, model, grants, retry_in, lease}, state) do
    now = now()
    state = update(state, model, &Queue.leased(&1, ref, grants, retry_in, now, lease))
    {:noreply, with_model(state, model, fn _ -> pump(state, model, now) end)}
  end

  def handle_info({:timeout, timer, {:pump, model}}, state) do
    case state.models do
      %{^model => %{timer: {^timer, _}} = m} ->
        now = now()
        {:noreply, pump(put_in(state.models[model], %{m | timer: nil}), model, now)}

      %{} ->
        {:noreply, state}
    end
  end

  def handle_info({:lease_lost, model, ref}, state) do
    state = update(state, model, &Queue.lease_lost(&1, ref))
    {:noreply, with_model(state, model, fn _ -> pump(state, model, now()) end)}
  end

  def handle_info({:timeout, _timer, {:deadline, ref}}, state) do
    case Map.pop(state.waiters, ref) do
      {nil, _} ->
        {:noreply, state}

      {waiter, waiters} ->
        Process.demonitor(ref, [:flush])
        GenServer.reply(waiter.from, timeout(waiter.model))
        state = %{state | waiters: waiters}
        state = update_in(state.models[waiter.model], &Queue.drop(&1, ref))
        {:noreply, pump(state, waiter.model, now())}
    end
  end

  # The caller went away (its request was cancelled or ended): it leaves the queue.
  def handle_info({:DOWN, ref, :process, _, _}, state) do
    case Map.pop(state.waiters, ref) do
      {nil, _} ->
        {:noreply, state}

      {waiter, waiters} ->
        if waiter.timer, do: :erlang.cancel_timer(waiter.timer)
        state = %{state | waiters: waiters}
        state = update_in(state.models[waiter.model], &Queue.drop(&1, ref))
        {:noreply, pump(state, waiter.model, now())}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  ## Internals

  defp now, do: System.monotonic_time(:microsecond)

  defp timeout(model) do
    {:error, "timeout",
     "the rate limit of #{model} admits no more calls before this request's deadline " <>
       "(pass a larger :timeout, or raise the limit)"}
  end

  # Admits what may start now, answers what cannot start before its deadline, and
  # arms the model's timer for the next moment something can change.
  defp pump(state, model, now) do
    state = Membership.refresh(state, now)
    m = Membership.takeover(state, model, state.models[model])
    route = Membership.route(state, model)
    {admitted, expired, m} = Queue.run(m, state.waiters, now, route == :local)

    for ref <- admitted, do: answer(state, ref, {:ok, %{"admitted" => true}})
    for ref <- expired, do: answer(state, ref, timeout(model))
    waiters = Map.drop(state.waiters, admitted ++ expired)

    m =
      case route do
        {:remote, owner} -> ask(m, owner, model, waiters)
        :local -> m
      end

    put_in(%{state | waiters: waiters}.models[model], Queue.arm(m, model))
  end

  defp answer(state, ref, outcome) do
    waiter = Map.fetch!(state.waiters, ref)
    Process.demonitor(ref, [:flush])
    if waiter.timer, do: :erlang.cancel_timer(waiter.timer)
    GenServer.reply(waiter.from, outcome)
  end

  # Asks the owner for leases covering the queued calls that hold none.
  defp ask(m, owner, model, waiters) do
    case Queue.to_lease(m, waiters, now()) do
      [] ->
        m

      estimates ->
        ref = make_ref()

        Courier.deliver(
          owner,
          {:lease, ref, self(), model, m.budget.limits, estimates}
        )

        Process.send_after(self(), {:lease_lost, model, ref}, @lease_wait)
        %{m | asking: ref, asked_at: now()}
    end
  end

  defp paused(state, model, ms) do
    now = now()
    state = update(state, model, &Queue.pause(&1, now + ms * 1_000))
    with_model(state, model, fn _ -> pump(state, model, now) end)
  end

  # `fun.(queue)` for a model this limiter knows (a new state); the state as it is
  # for one it never saw.
  defp with_model(state, model, fun) do
    case state.models do
      %{^model => m} -> fun.(m)
      %{} -> state
    end
  end

  defp update(state, model, fun),
    do: with_model(state, model, &put_in(state.models[model], fun.(&1)))

  # Tokens a call used beyond (or, negative, short of) what was charged for it:
  # corrected where the budget lives.
  defp correct(state, model, delta) do
    case Membership.route(state, model) do
      :local ->
        update_in(state.models[model], &Queue.correct(&1, delta))

      {:remote, owner} ->
        Courier.deliver(owner, {:correct, model, delta})
        state
    end
  end
end
