defmodule PortBridge.Test do
  @moduledoc """
  Tests of code that uses PortBridge, without Python: a target answers from an
  Elixir function.

      test "triage files a bug" do
        PortBridge.Test.stub(MyApp.Python, fn
          "execute_program", %{"inputs" => %{"ticket" => _}} ->
            {:ok, %{"outputs" => %{"category" => "bug", "urgent" => true, "tags" => ["crash"]}}}

          _command, _args ->
            {:ok, %{}}
        end)

        assert {:ok, %MyApp.Triage{category: "bug"}} = MyApp.TriageProgram.run(MyApp.Python, %{ticket: "It crashes"})
      end

  The function sees every request made to `target` at the wire level, `fun.(command,
  args)`: the command's name and the arguments as the worker would get them (string
  keys: the args go through JSON and back), and answers `{:ok, result}` or `{:error,
  %PortBridge.Error{}}` (`PortBridge.Error.new(:not_found, "unknown_program",
  "...")`). A result goes through JSON as well, so it reaches the caller as the
  worker's would (string keys). Every path is stubbed: `PortBridge.request/4`,
  `async_request/4`, `stream/4` and every `PortBridge.DSPy` function, program creation
  by a `PortBridge.DSPy.Program` included; answering `{:ok, %{}}` to set-up commands
  (`configure_lm`, `create_program`) is enough for them. Nothing needs to run under the
  target's name.

  A stub answers the process that set it and the processes it starts (those that
  carry it in `$callers`: `Task`s, `start_supervised` children that are tasks...), so
  `async: true` tests stub the same name independently. `allow/3` lets another
  process (a GenServer of yours) use a test's stub. A stub goes with the process that
  set it.

  Inside the function, `emit/2` sends the request's caller an event (`emit("chunk",
  %{"field" => "answer", "text" => "Hel"})`: what `PortBridge.DSPy.stream/4` turns
  into `{:chunk, ...}` items), and `callback/2` runs one of the request's callbacks
  as the worker would (a ReAct program's tool: `callback("add", %{"a" => 1, "b" => 2})`).

  The check costs nothing until a stub is first set: a `:persistent_term` flag.
  """

  alias PortBridge.Test.Stubs

  @flag {__MODULE__, :active}

  @typedoc "What a stub answers."
  @type answer :: {:ok, term} | {:error, PortBridge.Error.t()}

  @doc """
  Makes `target` (the name or pid the code under test uses) answer from `fun` for
  the calling process and the processes it starts. Setting a stub again replaces it.

  `fun` may take a third argument, the request's envelope beside its args:
  `%{session_id: ..., meta: ..., timeout: ...}`.
  """
  @spec stub(term, (String.t(), map -> answer) | (String.t(), map, map -> answer)) :: :ok
  def stub(target, fun) when is_function(fun, 2) or is_function(fun, 3) do
    ensure_started!()
    :ok = Stubs.put(self(), target, fun)
    unless :persistent_term.get(@flag, false), do: :persistent_term.put(@flag, true)
    :ok
  end

  def stub(_target, fun),
    do:
      raise(
        ArgumentError,
        "a stub is a function of (command, args) or (command, args, request), got: #{inspect(fun)}"
      )

  @doc "Removes the calling process's stub of `target`."
  @spec unstub(term) :: :ok
  def unstub(target) do
    ensure_started!()
    Stubs.delete(self(), target)
  end

  @doc """
  Lets `pid` (and the processes it starts) use the stubs `owner` set on `target`:
  for a process that does not carry `owner` in its `$callers`.
  """
  @spec allow(term, pid, pid) :: :ok
  def allow(target, owner, pid) when is_pid(owner) and is_pid(pid) do
    ensure_started!()
    Stubs.allow(owner, target, pid)
  end

  @doc """
  Inside a stub: sends the request's caller the event `name` with `data`, as the
  worker's events arrive (the caller's `:on_event`, an `async_request/4`'s messages,
  a stream's items).
  """
  @spec emit(String.t(), term) :: :ok
  def emit(name, data) when is_binary(name) do
    case Process.get(@flag) do
      %{emit: emit} -> emit.(name, normalise(data))
      nil -> raise ArgumentError, "PortBridge.Test.emit/2 is for the inside of a stub"
    end
  end

  @doc """
  Inside a stub: runs the request's callback `name` with `args` (a tool of a ReAct
  program, a metric, a reward), as the worker would ask it, and returns what it
  returned. Raises when the request registered no such callback.
  """
  @spec callback(String.t(), map) :: term
  def callback(name, args) when is_binary(name) do
    case Process.get(@flag) do
      %{callbacks: %{^name => fun}} ->
        case fun.(normalise(args)) do
          {:ok, value} -> value
          other -> other
        end

      %{callbacks: callbacks} ->
        raise ArgumentError,
              "the request registered no callback #{inspect(name)} (it has #{inspect(Map.keys(callbacks))})"

      nil ->
        raise ArgumentError, "PortBridge.Test.callback/2 is for the inside of a stub"
    end
  end

  @doc false
  # The stub that answers `target` for the calling process, or nil. A
  # :persistent_term read while no stub was ever set.
  @spec lookup(term) :: (String.t(), map -> answer) | nil
  def lookup(target) do
    if :persistent_term.get(@flag, false), do: Stubs.find(target), else: nil
  end

  @doc false
  # What serves a call to `target` when it is stubbed for the calling process
  # (PortBridge.Call asks before it resolves a target), else nil.
  @spec target(term) :: {module, function} | nil
  def target(target) do
    case lookup(target) do
      nil -> nil
      fun -> {PortBridge.Test.StubTarget, fun}
    end
  end

  @doc false
  # Runs a stub for a request as the worker would answer it: args and result through
  # JSON, `emit/2` and `callback/2` available to the function.
  @spec answer(function, PortBridge.Call.t(), (String.t(), term -> any)) :: answer
  def answer(fun, %PortBridge.Call{} = call, emit) do
    %{command: command, args: args, callbacks: callbacks} = call

    with {:ok, args} <- through_json(args, "unencodable_request", "the request") do
      Process.put(@flag, %{emit: emit, callbacks: callbacks})

      try do
        answered =
          if is_function(fun, 3),
            do: fun.(to_string(command), args, Map.take(call, [:session_id, :meta, :timeout])),
            else: fun.(to_string(command), args)

        case answered do
          {:ok, result} ->
            through_json(result, "unencodable_result", "the stub's result")

          {:error, %PortBridge.Error{}} = error ->
            error

          other ->
            raise ArgumentError,
                  "a PortBridge.Test stub must answer {:ok, result} or {:error, %PortBridge.Error{}}; " <>
                    "for #{inspect(command)} it answered #{inspect(other, limit: 10)}"
        end
      after
        Process.delete(@flag)
      end
    end
  end

  # As the worker sees and answers: JSON and back (string keys, no atoms or tuples);
  # what JSON cannot carry fails as it would on the way to a worker.
  defp through_json(term, code, what) do
    with {:ok, json} <- PortBridge.Codec.encode(term, :json),
         {:ok, decoded} <- PortBridge.Codec.decode(IO.iodata_to_binary(json), :json) do
      {:ok, decoded}
    else
      {:error, reason} ->
        {:error,
         PortBridge.Error.new(:serialization, code, "#{what} cannot be encoded as JSON", %{
           "reason" => inspect(reason, limit: 10, printable_limit: 200)
         })}
    end
  end

  defp normalise(term) do
    case through_json(term, "unencodable", "a stub's event or callback arguments") do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  defp ensure_started! do
    unless Process.whereis(Stubs) do
      raise ArgumentError,
            "PortBridge.Test needs the :port_bridge application started (it is, under mix test, " <>
              "unless the test helper starts ExUnit with --no-start)"
    end
  end
end
