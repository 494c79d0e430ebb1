defmodule PortBridge.Callbacks do
  @moduledoc """
  Elixir functions the Python worker may call back while a request runs: an agent's
  tools, a metric, a reward function (protocol/PROTOCOL.md, "Callbacks").

  The client never sends code. A request names what it allows as data (a ReAct
  program's tools, `metric: {"callback": "metric"}`), and the caller registers the
  functions under those names:

    * per request: `PortBridge.request(target, command, args, callbacks: %{"search" => fun})`
      (`PortBridge.DSPy` turns `tools:`, `metric:` and `reward:` into this);
    * per session, on this node: `register(session_id, %{"search" => fun})`, used
      by every request of the session that does not register the name itself.

  When the worker asks (a `callback` event on the request), the `PortBridge.Worker`
  runs the function in a task under `PortBridge.TaskSupervisor`, never in its own
  loop or the caller's: a slow or crashing callback blocks no other reply, and it
  may itself make requests, on the same worker too. The function gets the
  arguments as a map with string keys and returns a JSON-encodable value (or
  `{:ok, value}`), or `{:error, message}`; a raise or an exit is an `execution`
  error, a value that cannot be encoded a `serialization` error, and running past
  the time the worker gave it (`timeout_ms`, the request's remaining budget) a
  `timeout` error. The worker's name is looked up among the registered strings: it
  never becomes an atom and never selects a module or function by itself.
  """

  use GenServer

  require Logger
  alias PortBridge.{Codec, Request, Telemetry}

  @type fun_map :: %{optional(String.t()) => function}
  @type outcome :: {:ok, term} | {:error, String.t(), String.t()}

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @impl true
  def init(:ok) do
    :ets.new(__MODULE__, [:named_table, :public, :set, read_concurrency: true])
    {:ok, nil}
  end

  @doc """
  Registers callbacks for every request of `session_id` made from this node
  (merged with those already registered; a request's own take precedence).
  """
  @spec register(String.t(), fun_map) :: :ok
  def register(session_id, callbacks) when is_binary(session_id) do
    callbacks = check!(callbacks)
    :ets.insert(__MODULE__, {session_id, Map.merge(registered(session_id), callbacks)})
    :ok
  end

  @doc "Forgets the callbacks of a session (`PortBridge.DSPy.end_session/3` does it too)."
  @spec unregister(String.t()) :: :ok
  def unregister(session_id) do
    :ets.delete(__MODULE__, session_id)
    :ok
  end

  @doc "The callbacks registered for a session."
  @spec registered(String.t() | nil) :: fun_map
  def registered(nil), do: %{}

  def registered(session_id) do
    case :ets.lookup(__MODULE__, session_id) do
      [{_, callbacks}] -> callbacks
      [] -> %{}
    end
  end

  @doc false
  # Checks a map of callbacks given as an option; raises ArgumentError.
  @spec check!(term) :: fun_map
  def check!(callbacks) when is_map(callbacks) do
    for {name, fun} <- callbacks do
      unless is_binary(name) and name != "" and is_function(fun, 1) do
        raise ArgumentError,
              "callbacks must map names (strings) to 1-arity functions, got: #{inspect({name, fun})}"
      end
    end

    callbacks
  end

  def check!(other),
    do:
      raise(ArgumentError, ":callbacks must be a map of name => function, got: #{inspect(other)}")

  @doc false
  # The function for `name`: the request's own, else its session's.
  @spec find(fun_map, String.t() | nil, String.t()) :: {:ok, function} | :error
  def find(own, session_id, name) do
    case own do
      %{^name => fun} -> {:ok, fun}
      %{} -> Map.fetch(registered(session_id), name)
    end
  end

  ## What a PortBridge.Worker keeps of the callbacks running for its requests:
  ## `running`, task ref => %{id: callback_id, request: ref, pid, timer, ms}.

  @doc false
  # A callback event of request `ref`: start its function in a task under
  # PortBridge.TaskSupervisor (async_nolink: its result and its exit come to the
  # Worker), or say what to answer at once. `builtins`: the client's own callbacks,
  # name => fun.(args, deadline) -> outcome (`portbridge.admit`), which only the
  # request's own `callbacks:` replace (as the Python client lets a request answer
  # its own admissions), never a session's registrations.
  @spec start(map, reference, map, term, Codec.format(), map) ::
          {:started, map} | {:answer, String.t(), outcome} | :ignore
  def start(running, ref, entry, data, format, builtins \\ %{})

  def start(running, ref, entry, %{"callback_id" => id, "name" => name} = data, format, builtins)
      when is_binary(id) and is_binary(name) do
    args = Map.get(data, "args", %{})
    ms = time_allowed(data["timeout_ms"], entry.deadline)

    task =
      case builtins do
        %{^name => fun} when not is_map_key(entry.callbacks, name) ->
          deadline = if ms, do: System.monotonic_time(:millisecond) + ms, else: :infinity
          Task.Supervisor.async_nolink(PortBridge.TaskSupervisor, fn -> fun.(args, deadline) end)

        %{} ->
          case find(entry.callbacks, entry.session_id, name) do
            {:ok, fun} ->
              span = %{name: name, session_id: entry.session_id, command: entry.command}

              Task.Supervisor.async_nolink(PortBridge.TaskSupervisor, __MODULE__, :run, [
                fun,
                args,
                format,
                span
              ])

            :error ->
              nil
          end
      end

    if task do
      timer = ms && Process.send_after(self(), {:callback_timeout, task.ref}, ms)

      {:started,
       Map.put(running, task.ref, %{id: id, request: ref, pid: task.pid, timer: timer, ms: ms})}
    else
      message =
        "no callback named #{inspect(name)} was registered for this request or its session"

      {:answer, id, {:error, "not_found", message}}
    end
  end

  def start(_running, _ref, _entry, data, _format, _builtins) do
    Logger.warning(
      "portbridge worker sent a callback event of the wrong shape: " <>
        inspect(data, limit: 10, printable_limit: 200)
    )

    case data do
      %{"callback_id" => id} when is_binary(id) ->
        {:answer, id, {:error, "validation", "the callback event has no name"}}

      _ ->
        :ignore
    end
  end

  # The time a callback may take: what the worker gave it, within the request's deadline.
  defp time_allowed(timeout_ms, deadline) do
    left = Request.remaining(deadline)

    case timeout_ms do
      ms when is_integer(ms) and ms > 0 and (left == :infinity or ms < left) -> ms
      _ when left == :infinity -> nil
      _ -> left
    end
  end

  @doc false
  # The task of `task_ref` is over: its callback id (nil if unknown) and the rest.
  @spec finished(map, reference) :: {String.t() | nil, map}
  def finished(running, task_ref) do
    case Map.pop(running, task_ref) do
      {nil, running} ->
        {nil, running}

      {%{id: id, timer: timer}, running} ->
        if timer, do: Process.cancel_timer(timer)
        {id, running}
    end
  end

  @doc false
  # The task of `task_ref` ran out of time: stop it; the outcome to send back.
  @spec timed_out(map, reference) :: outcome
  def timed_out(running, task_ref) do
    %{pid: pid, ms: ms} = Map.fetch!(running, task_ref)
    Process.demonitor(task_ref, [:flush])
    Task.Supervisor.terminate_child(PortBridge.TaskSupervisor, pid)
    {:error, "timeout", "the callback did not return within #{ms} ms"}
  end

  @doc false
  # Stops the callbacks of request `ref` (over: answered, cancelled, its Python gone).
  @spec stop(map, reference) :: map
  def stop(running, _ref) when running == %{}, do: running

  def stop(running, ref) do
    {stopped, kept} = Enum.split_with(running, fn {_task_ref, r} -> r.request == ref end)

    for {task_ref, r} <- stopped do
      Process.demonitor(task_ref, [:flush])
      if r.timer, do: Process.cancel_timer(r.timer)
      Task.Supervisor.terminate_child(PortBridge.TaskSupervisor, r.pid)
    end

    Map.new(kept)
  end

  @doc false
  # Runs a callback (in its task): the outcome to send back, never a raise. A span
  # of telemetry events, [:port_bridge, :callback, :start | :stop] (metadata `span`:
  # name, session_id and the command of the request that asked).
  @spec run(function, term, Codec.format(), map) :: outcome
  def run(fun, args, format, span \\ %{}) do
    started = System.monotonic_time()

    Telemetry.execute(
      [:port_bridge, :callback, :start],
      %{system_time: System.system_time(), monotonic_time: started},
      span
    )

    outcome = call(fun, args, format)
    now = System.monotonic_time()

    {result, category} =
      case outcome do
        {:ok, _} -> {:ok, nil}
        {:error, category, _} -> {:error, category}
      end

    Telemetry.execute(
      [:port_bridge, :callback, :stop],
      %{duration: now - started, monotonic_time: now},
      Map.merge(span, %{result: result, error_category: category})
    )

    outcome
  end

  defp call(fun, args, format) do
    case fun.(args) do
      {:error, message} -> {:error, "execution", text(message)}
      {:ok, value} -> encodable(value, format)
      value -> encodable(value, format)
    end
  rescue
    exception -> {:error, "execution", Exception.message(exception)}
  catch
    kind, reason -> {:error, "execution", Exception.format_banner(kind, reason)}
  end

  defp encodable(value, format) do
    case Codec.encode(%{"result" => value}, format) do
      {:ok, _} ->
        {:ok, value}

      {:error, reason} ->
        {:error, "serialization",
         "the callback returned a value that cannot be sent as #{format}: " <>
           inspect(reason, limit: 5, printable_limit: 200)}
    end
  end

  defp text(message) when is_binary(message), do: message
  defp text(other), do: inspect(other, limit: 10, printable_limit: 500)

  @doc false
  # The arguments of the `callback_result` command for an outcome.
  @spec result_args(String.t(), outcome) :: map
  def result_args(callback_id, {:ok, value}),
    do: %{"callback_id" => callback_id, "result" => value}

  def result_args(callback_id, {:error, category, message}),
    do: %{
      "callback_id" => callback_id,
      "error" => %{"category" => category, "message" => message}
    }
end
