defmodule PortBridge do
  @moduledoc """
  Python ML frameworks (DSPy first) from Elixir, through `portbridge worker`
  processes spawned as Erlang Ports (4-byte length-prefixed JSON or MessagePack
  frames on their stdin and stdout).

    * `PortBridge.Worker` - one Port, many callers at once (the worker multiplexes):
      the one request engine.
    * `PortBridge.Pool` - N Workers: `:multiplexed` (many requests in flight on each,
      for LM-bound work) or `:exclusive` (NimblePool, one caller per Worker, for
      CPU-bound work); sessions pinned to a Worker and rebuilt after a crash.
    * `PortBridge.Cluster` - a pool on every node of a distributed Erlang cluster:
      sessions routed to one node by rendezvous hashing, and rebuilt on another when
      their node leaves.
    * `PortBridge.DSPy` - configure LMs, create, run, stream, optimize, export and
      import DSPy programs.
    * `PortBridge.Error` - every failure, categorised by `protocol/errors.json`.

  The functions here take a worker, a pool or a cluster as `target` (a pid or a
  registered name): a name that a `PortBridge.Pool` or a `PortBridge.Cluster` was
  started with goes to it, anything else to a `PortBridge.Worker`.

  See the README (`elixir_client/README.md`) for the supervision tree line, the
  options and a complete example.
  """

  alias PortBridge.{CircuitBreaker, Cluster, Error, Pool, Request, Retry, Worker}

  @default_timeout 60_000

  @doc "The default `:timeout` of a request, in ms."
  def default_timeout, do: @default_timeout

  @doc """
  Sends `command` with `args` and waits for the final reply.

  Returns `{:ok, result}` or `{:error, %PortBridge.Error{}}`; it raises only for
  programming errors (bad options).

  Options:

    * `:session_id` - the session to work in (its programs and LM configuration);
      a pool sends all of a session's requests to the same worker.
    * `:timeout` - the whole budget of the request in ms (default
      #{@default_timeout}, a pool's `:timeout` for a pool) or `:infinity`: waiting for
      a worker, writing, waiting for the reply, and any retries. At the deadline the
      result is a `timeout` error and the worker is sent `cancel` for the request;
      nothing blocks the caller past it.
    * `:on_event` - a function called with `{name, data}` for each event of the
      request (`{"chunk", %{...}}`, `{"progress", %{...}}`) before the reply.
    * `:meta` - a map echoed back by the worker and put in its logs (`trace_id`).
    * `:callbacks` - `%{"name" => fun}`: Elixir functions the worker may call back
      while this request runs (an agent's tools, a metric), see `PortBridge.Callbacks`.
    * `:retry` - `true` or options: retry following the error table, see
      `PortBridge.Retry`. Off by default.
    * `:circuit` - `true`, a key or options: fail at once while calls with the
      same key keep failing with `circuit_break` errors, see
      `PortBridge.CircuitBreaker`. Off by default.
    * `:pool_timeout` - exclusive pools only: ms to wait for a free worker (default
      5_000), within `:timeout`.
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(target, command, args \\ %{}, opts \\ []) do
    {module, resolved} = via(target)
    opts = with_deadline(module, resolved, opts)
    circuit = CircuitBreaker.options(opts[:circuit], {target, opts[:session_id]})
    call = fn -> module.request(resolved, command, args, opts) end
    Retry.run(fn -> CircuitBreaker.call(call, circuit) end, retry_options(opts))
  end

  # A name a pool or a cluster was started with goes to it, anything else to a worker.
  defp via(target) do
    with :error <- Pool.lookup(target),
         :error <- Cluster.lookup(target) do
      {Worker, target}
    else
      {:ok, %{member: _} = cluster} -> {Cluster, cluster}
      {:ok, pool} -> {Pool, pool}
    end
  end

  # The one budget of a request, fixed when it starts: every attempt, checkout and
  # wait comes out of it.
  defp with_deadline(module, resolved, opts) do
    timeout = Keyword.get_lazy(opts, :timeout, fn -> default_timeout(module, resolved) end)
    deadline = Keyword.get_lazy(opts, :deadline, fn -> Request.deadline(timeout) end)
    Keyword.merge(opts, timeout: timeout, deadline: deadline)
  end

  defp default_timeout(Pool, pool), do: pool.timeout
  defp default_timeout(Cluster, cluster), do: cluster.timeout
  defp default_timeout(Worker, _worker), do: @default_timeout

  defp retry_options(opts) do
    case Retry.options(opts[:retry]) do
      nil -> nil
      retry -> Keyword.put(retry, :deadline, opts[:deadline])
    end
  end

  @doc "Like `request/4`, but returns the result or raises the `PortBridge.Error`."
  @spec request!(GenServer.server(), String.t() | atom, map, keyword) :: term
  def request!(target, command, args \\ %{}, opts \\ []) do
    case request(target, command, args, opts) do
      {:ok, result} -> result
      {:error, error} -> raise error
    end
  end

  @doc """
  Sends a request without waiting for it: returns a `PortBridge.Request` to
  `await/2`, `cancel/1` or consume with `stream/1` (its events arrive as messages,
  see `PortBridge.Request`). Takes the options of `request/4` except `:retry`.
  """
  @spec async_request(GenServer.server(), String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(target, command, args \\ %{}, opts \\ []) do
    {module, resolved} = via(target)
    module.async_request(resolved, command, args, with_deadline(module, resolved, opts))
  end

  @doc "Waits for a request from `async_request/4`; `on_event` gets each `{name, data}` event."
  defdelegate await(request, on_event \\ nil), to: Request

  @doc "Cancels a request from `async_request/4`."
  defdelegate cancel(request), to: Request

  @doc """
  Sends a request and returns its events and final reply as a lazy stream:
  `{:event, name, data}` items, then `{:ok, result}` or `{:error, error}`. Halting
  the stream early cancels the request.
  """
  @spec stream(GenServer.server(), String.t() | atom, map, keyword) :: Enumerable.t()
  def stream(target, command, args \\ %{}, opts \\ []) do
    # Lazy: the request is sent when the stream is first enumerated.
    Stream.flat_map([:send], fn :send ->
      case async_request(target, command, args, opts) do
        %Request{} = request -> Request.stream(request)
        {:error, _} = error -> [error]
      end
    end)
  end
end
