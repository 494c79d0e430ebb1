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

  alias PortBridge.{CircuitBreaker, Cluster, Error, Options, Pool, Request, Retry, Schema, Worker}

  @request_schema Options.request_schema()
  @async_schema Options.async_schema()

  @doc "The default `:timeout` of a request, in ms."
  @spec default_timeout() :: pos_integer
  def default_timeout, do: Options.default_timeout()

  @doc """
  Sends `command` with `args` and waits for the final reply.

  Returns `{:ok, result}` or `{:error, %PortBridge.Error{}}`; it raises only for
  programming errors: an unknown option or one of the wrong type is an
  `ArgumentError` that names it and the valid ones.

  Options:

  #{Schema.docs(@request_schema)}
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(target, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @request_schema, "PortBridge.request/4")
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
  defp default_timeout(Worker, _worker), do: Options.default_timeout()

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
  see `PortBridge.Request`). Takes the options of `request/4` except `:retry` and
  `:circuit`.
  """
  @spec async_request(GenServer.server(), String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(target, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @async_schema, "PortBridge.async_request/4")
    {module, resolved} = via(target)
    module.async_request(resolved, command, args, with_deadline(module, resolved, opts))
  end

  @doc "Waits for a request from `async_request/4`; `on_event` gets each `{name, data}` event."
  @spec await(Request.t(), (Request.event() -> any) | nil) :: {:ok, term} | {:error, Error.t()}
  defdelegate await(request, on_event \\ nil), to: Request

  @doc "Cancels a request from `async_request/4`."
  @spec cancel(Request.t()) :: :ok
  defdelegate cancel(request), to: Request

  @doc """
  Sends a request and returns its events and final reply as a lazy stream:
  `{:event, name, data}` items, then `{:ok, result}` or `{:error, error}`. Halting
  the stream early cancels the request. Options as `async_request/4` (checked
  here, before the stream is enumerated).
  """
  @spec stream(GenServer.server(), String.t() | atom, map, keyword) :: Enumerable.t()
  def stream(target, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @async_schema, "PortBridge.stream/4")
    # Lazy: the request is sent when the stream is first enumerated.
    Stream.flat_map([:send], fn :send ->
      case async_request(target, command, args, opts) do
        %Request{} = request -> Request.stream(request)
        {:error, _} = error -> [error]
      end
    end)
  end
end
