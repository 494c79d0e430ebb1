defmodule PortBridge.Call do
  @moduledoc """
  One request on its way to a Python worker: what it asks, where it goes, and its one
  deadline.

  A call is built once, at the public edge (`PortBridge.request/4`, `async_request/4`,
  `stream/4`, `PortBridge.DSPy`, and the request functions of `PortBridge.Worker`,
  `PortBridge.Pool` and `PortBridge.Cluster`): its options are checked there, once, and
  its deadline fixed there, once. Every layer under it (retries, a circuit breaker, a
  pool's choice of Worker, a cluster's route, the Worker itself) takes it as it is: none
  checks the options again or starts a budget of its own. A follow-up request made on the
  caller's behalf (a program exported to be recorded, a session rebuilt) is `derive/3`d
  from it and spends the same budget.

  Fields: `target` (what the caller named), `module` and `config` (the
  `PortBridge.Target` that serves it), `command`, `args`, `session_id`, `meta`,
  `timeout` (ms or `:infinity`, what the caller asked for, for messages), `deadline`
  (monotonic ms or `:infinity`), `on_event`, `callbacks`, `retry`, `circuit`,
  `pool_timeout`, and `pool` (the pool that serves it, set by the pool, for telemetry).
  """

  alias PortBridge.{
    Callbacks,
    CircuitBreaker,
    Error,
    Options,
    Request,
    Retry,
    Schema,
    Target,
    Test
  }

  @enforce_keys [:target, :module, :config, :command, :args]
  defstruct [
    :target,
    :module,
    :config,
    :command,
    :args,
    :session_id,
    :meta,
    :on_event,
    :retry,
    :circuit,
    :pool_timeout,
    :pool,
    # Both set by every constructor (nil only while one builds the call).
    :timeout,
    :deadline,
    callbacks: %{}
  ]

  @type t :: %__MODULE__{
          target: term,
          module: module,
          config: term,
          command: String.t() | atom,
          args: map,
          session_id: String.t() | nil,
          meta: map | nil,
          timeout: timeout,
          deadline: integer | :infinity,
          on_event: (Request.event() -> any) | nil,
          callbacks: Callbacks.fun_map(),
          retry: boolean | keyword | nil,
          circuit: term,
          pool_timeout: timeout | nil,
          pool: atom | nil
        }

  @request_schema Options.request_schema()
  @async_schema Options.async_schema()
  # new!/7 skips the check of an empty option list: no request option may be required.
  [] = for {key, spec} <- @request_schema, spec[:required], do: key

  @doc false
  # A call from a caller's options, checked against the request options (`:request`) or
  # those of a request that is not awaited (`:async`: no retry, no circuit breaker).
  # `where` names the public function, for ArgumentErrors. `served_by`: `{module,
  # config}` when the function fixes what serves the call (`PortBridge.Pool.request/4`),
  # else nil: resolved from the target.
  @spec new!(
          term,
          String.t() | atom,
          map,
          keyword,
          :request | :async,
          String.t(),
          {module, term} | nil
        ) ::
          t
  def new!(target, command, args, opts, kind, where, served_by \\ nil) do
    # No request option is required: no options, nothing to check.
    if opts != [],
      do:
        Schema.validate!(
          opts,
          if(kind == :async, do: @async_schema, else: @request_schema),
          where
        )

    # A target stubbed for this process (PortBridge.Test) answers from the test's
    # function, whichever function the call came through.
    {module, config} = Test.target(target) || served_by || Target.resolve!(target, where)
    build(target, module, config, command, args, opts)
  end

  @doc false
  # A call from options already checked (by a caller that checked them with its own
  # arguments, as PortBridge.DSPy does) or made by the client itself (replays,
  # recording, cluster members); `:deadline` may be given to spend an existing budget.
  @spec new(term, String.t(), map, keyword, String.t()) :: t
  def new(target, command, args, opts \\ [], where \\ "PortBridge") do
    {module, config} = Test.target(target) || Target.resolve!(target, where)
    build(target, module, config, command, args, opts)
  end

  @doc false
  # A budget of `timeout` ms starting now, for waits of the client's own that serve no
  # caller's request (a cluster member asking another). Not a request: no target.
  @spec budget(timeout) :: t
  def budget(timeout) do
    %__MODULE__{
      target: nil,
      module: nil,
      config: nil,
      command: nil,
      args: %{},
      timeout: timeout,
      deadline: Request.deadline(timeout)
    }
  end

  # (Every call made with no options: one struct, built once.)
  defp build(target, module, config, command, args, []) do
    timeout = module.default_timeout(config)

    %__MODULE__{
      target: target,
      module: module,
      config: config,
      command: command,
      args: args,
      timeout: timeout,
      deadline: Request.deadline(timeout)
    }
  end

  defp build(target, module, config, command, args, opts) do
    call = %__MODULE__{
      target: target,
      module: module,
      config: config,
      command: command,
      args: args
    }

    call = Enum.reduce(opts, call, &put/2)
    timeout = call.timeout || module.default_timeout(config)
    %{call | timeout: timeout, deadline: call.deadline || Request.deadline(timeout)}
  end

  defp put({_key, nil}, call), do: call
  defp put({:timeout, timeout}, call), do: %{call | timeout: timeout}
  defp put({:deadline, deadline}, call), do: %{call | deadline: deadline}
  defp put({:session_id, session_id}, call), do: %{call | session_id: session_id}
  defp put({:meta, meta}, call), do: %{call | meta: meta}
  defp put({:on_event, fun}, call), do: %{call | on_event: fun}
  defp put({:callbacks, callbacks}, call), do: %{call | callbacks: Callbacks.check!(callbacks)}
  defp put({:retry, retry}, call), do: %{call | retry: retry}
  defp put({:circuit, circuit}, call), do: %{call | circuit: circuit}
  defp put({:pool_timeout, ms}, call), do: %{call | pool_timeout: ms}

  @doc false
  # A follow-up of `call` (same target, session and budget) that asks `command` with
  # `args`: no events, callbacks, retries or breaker of its own unless `changes` say so.
  @spec derive(t, String.t(), map, keyword) :: t
  def derive(%__MODULE__{} = call, command, args, changes \\ []) do
    derived = %{
      call
      | command: command,
        args: args,
        on_event: nil,
        callbacks: %{},
        retry: nil,
        circuit: nil
    }

    Enum.reduce(changes, derived, fn {key, value}, acc -> Map.replace!(acc, key, value) end)
  end

  @doc false
  # The same call, served by another target (a pool's Worker, a cluster's pool).
  @spec to(t, module, term) :: t
  def to(%__MODULE__{} = call, module, config), do: %{call | module: module, config: config}

  @doc false
  # Sends the call and waits for its final reply, through its retry and circuit breaker
  # options. Every attempt comes out of the call's one deadline.
  @spec run(t) :: {:ok, term} | {:error, Error.t()}
  def run(%__MODULE__{retry: retry, circuit: circuit} = call)
      when retry in [nil, false] and circuit in [nil, false],
      do: call.module.call(call.config, call)

  def run(%__MODULE__{} = call) do
    breaker = CircuitBreaker.options(call.circuit, {call.target, call.session_id})

    attempt = fn ->
      CircuitBreaker.call(fn -> call.module.call(call.config, call) end, breaker)
    end

    case Retry.options(call.retry) do
      nil -> attempt.()
      retry -> Retry.run(attempt, Keyword.put(retry, :deadline, call.deadline))
    end
  end

  @doc false
  # Sends the call without waiting for it.
  @spec async(t) :: Request.t() | {:error, Error.t()}
  def async(%__MODULE__{} = call), do: call.module.async(call.config, call)

  @doc false
  # The call as a lazy stream of its events and final reply (PortBridge.stream/4): sent
  # when first enumerated, its budget starting then.
  @spec stream(t) :: Enumerable.t()
  def stream(%__MODULE__{} = call) do
    Stream.flat_map([:send], fn :send ->
      case async(%{call | deadline: Request.deadline(call.timeout)}) do
        %Request{} = request -> Request.stream(request)
        {:error, _} = error -> [error]
      end
    end)
  end

  @doc false
  # Milliseconds left of the call's budget (never negative), or :infinity.
  @spec remaining(t) :: non_neg_integer | :infinity
  def remaining(%__MODULE__{deadline: deadline}), do: Request.remaining(deadline)
end
