defmodule PortBridge.Pool.Exclusive do
  @moduledoc false
  # The :exclusive strategy of a PortBridge.Pool: NimblePool checks a Worker out to one
  # caller at a time, one NimblePool of one Worker per shard (as Finch's hash strategy
  # shards HTTP/1 pools). The Worker owns the Port and the request; NimblePool only
  # decides who may use it.

  alias PortBridge.{Call, Error, Request, Worker}

  # Without NimblePool this module still compiles; the pool says what is missing.
  @compile {:no_warn_undefined, [NimblePool]}

  @available Code.ensure_loaded?(NimblePool)

  # Recompile when NimblePool comes or goes (NIMBLE_POOL_PATH set or unset).
  @doc false
  def __mix_recompile__?, do: Code.ensure_loaded?(NimblePool) != @available

  @spec available?() :: boolean
  def available?, do: @available

  @doc false
  # The registered names of a pool's shards (NimblePools), or {} when not exclusive.
  @spec shards(atom, pos_integer, atom) :: tuple
  def shards(name, size, :exclusive),
    do: List.to_tuple(for i <- 1..size, do: Module.concat(name, "Shard#{i}"))

  def shards(_name, _size, _strategy), do: {}

  @doc false
  # The shards' child specs (none when not exclusive).
  @spec child_specs(map) :: [Supervisor.child_spec()]
  def child_specs(%{strategy: :exclusive} = pool) do
    for i <- 1..pool.size do
      %{
        id: {:shard, i},
        start:
          {NimblePool, :start_link,
           [
             [
               worker: {PortBridge.Pool.Checkout, elem(pool.workers, i - 1)},
               pool_size: 1,
               name: elem(pool.shards, i - 1)
             ]
           ]}
      }
    end
  end

  def child_specs(_pool), do: []

  @doc false
  # The call on shard `index`, within its checkout.
  @spec call(map, non_neg_integer, Call.t()) :: {:ok, term} | {:error, Error.t()}
  def call(pool, index, %Call{} = call) do
    checkout(pool, index, call, fn worker -> Worker.call(worker, call) end)
  end

  @doc false
  # An async call: a task under PortBridge.TaskSupervisor holds the checkout and relays
  # the request's events and reply to the caller.
  @spec async(map, non_neg_integer, Call.t()) :: Request.t()
  def async(pool, index, %Call{} = call) do
    caller = self()
    ref = :erlang.alias()

    {:ok, pid} =
      Task.Supervisor.start_child(PortBridge.TaskSupervisor, fn ->
        relay(pool, index, call, caller, ref)
      end)

    monitor = Process.monitor(pid)

    Request.new(
      pid,
      ref,
      fn -> send(pid, {ref, :cancel}) end,
      call.timeout,
      call.deadline,
      monitor
    )
  end

  defp checkout(pool, index, call, fun) do
    pool_timeout = call.pool_timeout || pool.pool_timeout
    wait = min_timeout(pool_timeout, Call.remaining(call))

    try do
      NimblePool.checkout!(
        elem(pool.shards, index),
        :checkout,
        fn _from, worker -> {fun.(worker), :ok} end,
        wait
      )
    catch
      :exit, {:timeout, {NimblePool, :checkout, _}} ->
        {:error, checkout_timeout(pool, index, call, wait, pool_timeout)}

      :exit, {reason, {NimblePool, :checkout, _}} ->
        {:error, not_running(pool, index, reason)}
    end
  end

  defp min_timeout(:infinity, b), do: b
  defp min_timeout(a, :infinity), do: a
  defp min_timeout(a, b), do: min(a, b)

  # The task of an exclusive async request: holds the checkout, relays the inner
  # request's events and reply to the caller's alias. Linked to the caller, so that
  # it dies with it wherever it is (even waiting for a checkout, where NimblePool
  # then forgets it); it ends at the deadline or on cancel otherwise.
  defp relay(pool, index, call, caller, ref) do
    Process.link(caller)

    result =
      checkout(pool, index, call, fn worker ->
        case Worker.async(worker, call) do
          %Request{} = inner -> relay_loop(inner, ref)
          {:error, _} = error -> error
        end
      end)

    if result, do: send(ref, {ref, {:reply, result}})
    Process.unlink(caller)
  end

  defp relay_loop(%Request{ref: inner_ref, monitor: inner_mon} = inner, ref) do
    receive do
      {^inner_ref, {:event, _, _} = event} ->
        send(ref, {ref, event})
        relay_loop(inner, ref)

      {^inner_ref, {:reply, result}} ->
        Process.demonitor(inner_mon, [:flush])
        result

      {:DOWN, ^inner_mon, _, _, _} = down ->
        # Request.await turns it into its error, as for any caller.
        send(self(), down)
        Request.await(inner)

      {^ref, :cancel} ->
        Request.cancel(inner)
        nil
    after
      Request.remaining(inner.deadline) -> Request.await(inner)
    end
  end

  defp checkout_timeout(pool, index, call, wait, pool_timeout) do
    if wait == pool_timeout do
      Error.new(
        :overloaded,
        "pool_timeout",
        "no worker of pool #{inspect(pool.name)} (shard #{index + 1} of #{pool.size}) was free within " <>
          "#{pool_timeout} ms: pass a larger :pool_timeout, or give the pool more workers (:size)",
        %{"pool" => inspect(pool.name), "shard" => index + 1, "pool_timeout_ms" => pool_timeout}
      )
    else
      %{Request.timeout_error(call.timeout) | code: "checkout_timeout"}
      |> Map.update!(:message, &("waiting for a free worker: " <> &1))
    end
  end

  defp not_running(pool, index, reason) do
    Error.new(
      :communication,
      "pool_not_running",
      "pool #{inspect(pool.name)} shard #{index + 1} is not running (#{inspect(reason)}): stopped, or restarting",
      %{"pool" => inspect(pool.name), "shard" => index + 1, "reason" => inspect(reason)}
    )
  end
end

if Code.ensure_loaded?(NimblePool) do
  defmodule PortBridge.Pool.Checkout do
    @moduledoc false
    # The NimblePool worker of one shard of an :exclusive PortBridge.Pool. The
    # resource is the name of a PortBridge.Worker (supervised beside it by the pool):
    # NimblePool only decides who may use it, one caller at a time; the Worker owns
    # the Port, its restarts and the request itself.

    @behaviour NimblePool

    @impl NimblePool
    def init_worker(worker), do: {:ok, worker, worker}

    @impl NimblePool
    def handle_checkout(:checkout, _from, worker, pool_state),
      do: {:ok, worker, worker, pool_state}

    @impl NimblePool
    def handle_checkin(:ok, _from, worker, pool_state), do: {:ok, worker, pool_state}

    @impl NimblePool
    def terminate_worker(_reason, _worker, pool_state), do: {:ok, pool_state}
  end
end
