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
    * `setup!/1`, `mix port_bridge.setup`, `PortBridge.Release` - the Python
      environment, in Livebook and scripts, in a Mix project, in a release.

  The functions here take a worker, a pool or a cluster as `target` (a pid or a
  registered name): a name that a `PortBridge.Pool` or a `PortBridge.Cluster` was
  started with goes to it, anything else to a `PortBridge.Worker`.

  See the README (`elixir_client/README.md`) for the supervision tree line, the
  options and a complete example.
  """

  alias PortBridge.{Call, Error, Options, Request, Schema}

  @request_schema Options.request_schema()

  @doc """
  Makes (or reuses) the Python environment workers run in, and returns its
  interpreter, for Livebook (`Mix.install/2`) and scripts, where no Mix task runs:
  `{PortBridge.Pool, name: MyApp.Python, python: PortBridge.setup!()}`. See
  `PortBridge.Setup.setup!/1` for the options.
  """
  @spec setup!(keyword) :: String.t()
  defdelegate setup!(opts \\ []), to: PortBridge.Setup

  @doc "The default `:timeout` of a request, in ms."
  @spec default_timeout() :: pos_integer
  def default_timeout, do: Options.default_timeout()

  @doc """
  Sends `command` with `args` and waits for the final reply.

  Returns `{:ok, result}` or `{:error, %PortBridge.Error{}}`; it raises only for
  programming errors: an unknown option or one of the wrong type, or a target that
  names nothing a request could reach, is an `ArgumentError` that says what is valid.

  Options:

  #{Schema.docs(@request_schema)}
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(target, command, args \\ %{}, opts \\ []) do
    target
    |> Call.new!(command, args, opts, :request, "PortBridge.request/4")
    |> Call.run()
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
    target
    |> Call.new!(command, args, opts, :async, "PortBridge.async_request/4")
    |> Call.async()
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
    # Checked now; its deadline starts when the stream is first enumerated.
    target
    |> Call.new!(command, args, opts, :async, "PortBridge.stream/4")
    |> Call.stream()
  end
end
