defmodule PortBridge.Limiter do
  @moduledoc """
  Admission to LM calls: one budget per model (`PortBridge.RateLimit`) shared by
  every Python of a pool, and in a `PortBridge.Cluster` by every node.

  Before each LM call a worker whose LM has a `rate_limit` asks its client for
  admission (the built-in callback `portbridge.admit`, with the model, its limits
  and an estimate of the call's tokens); `admit/3` answers when the call may start.
  Calls wait in arrival order, at most until their request's deadline (then a
  `timeout` error); a caller that goes away (its request cancelled) leaves the
  queue. After each call the worker reports what it used (an `lm_call` event):
  `report/2` corrects the tokens charged, and a provider's 429 with Retry-After
  pauses the model for every Python.

  In a cluster (`cluster: name`) the limiters of every node join a `:pg` group and
  each model's budget lives on one of them: the member that ranks highest for the
  model by rendezvous hashing (as sessions are placed). Calls there are admitted
  from the budget directly; other nodes take leases from it: start times reserved
  for the calls they have queued, at most `:lease_horizon` ms ahead, used at those
  times. A 429 pauses the model on every node. When the members change, a node
  that takes a budget over starts it `:lease_horizon` ms late, past any lease the
  previous owner may have granted.
  """

  use GenServer

  alias PortBridge.{Courier, RateLimit, Telemetry}
  alias PortBridge.Limiter.{Membership, Queue}

  @max_retry_after_s 600
  @max_model_bytes 512
  # ms to wait for a lease before asking again (its owner may have gone).
  @lease_wait 2_000

  @type outcome :: {:ok, map} | {:error, String.t(), String.t()}

  @doc """
  Starts a limiter. Options: `:name`; `:cluster`, the name of a `PortBridge.Cluster`
  (one budget per model across its nodes); `:lease_horizon`, ms (default 1000).
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
  `:infinity`). Returns `{:ok, %{"admitted" => true}}`, or `{:error, category,
  message}` (`timeout` at the deadline, `validation` for arguments a worker should
  never send, `overloaded` when the limiter is gone). Emits `[:port_bridge, :lm,
  :admit]`.
  """
  @spec admit(GenServer.server(), map, integer | :infinity) :: outcome
  def admit(limiter, args, deadline) do
    started = System.monotonic_time()

    outcome =
      case admission(args) do
        {:ok, model, limits, tokens} ->
          try do
            GenServer.call(limiter, {:admit, model, limits, tokens, deadline}, :infinity)
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
      %{model: args["model"], result: result(outcome), limiter: limiter}
    )

    outcome
  end

  defp result({:ok, _}), do: :admitted
  defp result({:error, "timeout", _}), do: :timeout
  defp result({:error, "validation", _}), do: :invalid
  defp result({:error, _, _}), do: :error

  # The worker is untrusted: its admission request is checked here, in the caller.
  defp admission(%{"model" => model, "limits" => limits} = args)
       when is_binary(model) and byte_size(model) in 1..@max_model_bytes do
    with {:ok, limits} <- RateLimit.from_wire(limits) do
      case Map.get(args, "estimated_tokens", 0) do
        tokens when is_integer(tokens) and tokens >= 0 ->
          {:ok, model, limits, tokens}

        nil ->
          {:ok, model, limits, 0}

        other ->
          {:error, "estimated_tokens must be a non-negative integer, got: #{inspect(other)}"}
      end
    end
  end

  defp admission(args) do
    {:error,
     "an admission request needs \"model\" (a string) and \"limits\", got: " <>
       inspect(args, limit: 5, printable_limit: 100)}
  end

  @doc """
  What a worker reported after an LM call (an `lm_call` event's data): the real
  tokens correct the estimate charged, a Retry-After pauses the model everywhere.
  Never blocks; ignores what it cannot read.
  """
  @spec report(GenServer.server(), map) :: :ok
  def report(limiter, %{"model" => model} = data) when is_binary(model) do
    with %{"retry_after_s" => s} when is_number(s) and s > 0 <- data["error"] do
      pause_ms = round(min(s, @max_retry_after_s) * 1000)

      Telemetry.execute([:port_bridge, :lm, :pause], %{retry_after: pause_ms}, %{
        model: model,
        limiter: limiter
      })

      GenServer.cast(limiter, {:pause, model, pause_ms})
    end

    if data["cached"] != true do
      tokens = count(data["prompt_tokens"]) + count(data["completion_tokens"])
      GenServer.cast(limiter, {:used, model, tokens})
    end

    :ok
  end

  def report(_limiter, _data), do: :ok

  defp count(n) when is_integer(n) and n >= 0, do: n
  defp count(_), do: 0

  @doc "Per model: its limits, calls waiting, and in a cluster the node holding its budget."
  @spec info(GenServer.server()) :: %{String.t() => map}
  def info(limiter), do: GenServer.call(limiter, :info)

  ## Server

  @impl true
  def init(opts) do
    cluster = opts[:cluster]
    horizon = Keyword.get(opts, :lease_horizon, 1_000) * 1_000

    if cluster, do: Membership.join(cluster)

    {:ok,
     %{
       cluster: cluster,
       horizon: horizon,
       models: %{},
       # monitor ref => waiter
       waiters: %{},
       nodes: [],
       changed_at: now()
     }}
  end

  @impl true
  def handle_call({:admit, model, limits, tokens, deadline}, from, state) do
    now = now()
    state = state |> Membership.refresh(now) |> ensure(model, limits, now)
    m = state.models[model]

    case Queue.admit_now(m, tokens, now, Membership.route(state, model) == :local) do
      {:ok, m} ->
        {:reply, {:ok, %{"admitted" => true}}, put_in(state.models[model], m)}

      :wait ->
        {pid, _} = from
        ref = Process.monitor(pid)
        deadline_us = if deadline == :infinity, do: :infinity, else: deadline * 1_000

        timer =
          deadline != :infinity &&
            :erlang.start_timer(deadline, self(), {:deadline, ref}, abs: true)

        waiter = %{from: from, model: model, tokens: tokens, deadline: deadline_us, timer: timer}
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
           owner: Membership.owner(state, model),
           paused_until: m.budget.paused_until
         }}
      end)

    {:reply, info, state}
  end

  @impl true
  def handle_cast({:used, model, tokens}, state) do
    case state.models do
      %{^model => m} ->
        {delta, m} = Queue.used(m, tokens)
        state = put_in(state.models[model], m)

        case Membership.route(state, model) do
          :local -> {:noreply, update_in(state.models[model], &Queue.correct(&1, delta))}
          {:remote, owner} -> {:noreply, forward(state, owner, {:correct, model, delta})}
        end

      %{} ->
        {:noreply, state}
    end
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

  def handle_info({:correct, model, delta}, state) do
    case state.models do
      %{^model => _} -> {:noreply, update_in(state.models[model], &Queue.correct(&1, delta))}
      %{} -> {:noreply, state}
    end
  end

  # A lease asked by another node: start times for its queued calls, from this
  # node's budget, at most the horizon ahead.
  def handle_info({:lease, ref, from, model, limits, estimates}, state) do
    now = now()
    state = state |> Membership.refresh(now) |> ensure(model, limits, now)
    {grants, retry_in, m} = Queue.grant(state.models[model], estimates, now, state.horizon)
    Courier.deliver(from, {:leased, ref, model, grants, retry_in})
    {:noreply, pump(put_in(state.models[model], m), model, now)}
  end

  def handle_info({:leased, ref, model, grants, retry_in}, state) do
    now = now()

    case state.models do
      %{^model => m} ->
        m = Queue.leased(m, ref, grants, retry_in, now)
        {:noreply, pump(put_in(state.models[model], m), model, now)}

      %{} ->
        {:noreply, state}
    end
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
    case state.models do
      %{^model => m} ->
        {:noreply, pump(put_in(state.models[model], Queue.lease_lost(m, ref)), model, now())}

      %{} ->
        {:noreply, state}
    end
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

  # A model's queue, created at its first admission; new limits replace the old ones.
  defp ensure(state, model, limits, now) do
    case state.models do
      %{^model => %{budget: %{limits: ^limits}}} ->
        state

      %{^model => m} ->
        put_in(state.models[model], %{m | budget: RateLimit.set_limits(m.budget, limits)})

      %{} ->
        m = Queue.new(limits)
        m = %{m | owner: Membership.owner(state, model)}
        # A budget born just after the members changed may have been another
        # node's, whose leases can still run: start it past them.
        m =
          if state.cluster && now - state.changed_at < state.horizon,
            do: %{m | budget: RateLimit.hold_until(m.budget, state.changed_at + state.horizon)},
            else: m

        put_in(state.models[model], m)
    end
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
        %{m | asking: ref}
    end
  end

  defp paused(state, model, ms) do
    case state.models do
      %{^model => m} ->
        now = now()
        pump(put_in(state.models[model], Queue.pause(m, now + ms * 1_000)), model, now)

      %{} ->
        state
    end
  end

  defp forward(state, owner, message) do
    Courier.deliver(owner, message)
    state
  end
end
