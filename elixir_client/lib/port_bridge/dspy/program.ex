defmodule PortBridge.DSPy.Program do
  @moduledoc """
  A DSPy program as an Elixir module: a definition, run on whichever Python serves
  the call.

      defmodule MyApp.TriageProgram do
        use PortBridge.DSPy.Program, signature: MyApp.Triage, module: "ChainOfThought"
      end

      {:ok, %MyApp.Triage{category: "bug", urgent: true}} =
        MyApp.TriageProgram.run(MyApp.Python, %{ticket: "The app crashes"}, session_id: user)

  `run/3` returns the outputs cast into the signature's struct (a value that does
  not fit its type is an `output_parse` error); `execute/3` also returns the whole
  reply (other outputs such as ChainOfThought's `"reasoning"`, `"usage"`, `"model"`);
  `stream/3` gives `{:chunk, %{"field", "text", ...}}` items as the LM writes, then
  `{:ok, struct}` or `{:error, error}`; `run!/3` and `stream!/3` raise the
  `PortBridge.Error`. They take the options of `PortBridge.DSPy.execute_program/4`
  (`:session_id`, `:timeout`, per-call `:lm` options...). The target is a
  `PortBridge.Worker`, `PortBridge.Pool` or `PortBridge.Cluster`, or a name that
  `PortBridge.Test.stub/2` answers.

  ## A definition, not a state

  The program is created in the scope that runs it (the session, or the global
  scope) on the Python that serves the call, when that Python does not have it: a
  run that meets `unknown_program` creates it and runs again, so nothing is checked
  on the way of a call that finds it. Its id (`program_id/0`) is the module's name and
  a hash of its definition, so an id always means this very definition: creating it
  again is never a conflict (`program_exists` is success), boot code and tests can
  run it any number of times, and a changed definition is a new program. It is
  created through `PortBridge.DSPy`, so a pool or a cluster records it and rebuilds
  it on a fresh Python like any other. `create/2` creates it at once (warm-up).

  ## Options of `use`

    * `:signature` - the `PortBridge.DSPy.Signature` module. Required.
    * `:module` - `"Predict"` (default), `"ChainOfThought"`, `"ReAct"`, `"BestOfN"`,
      `"Refine"`, `"Pipeline"`, ... and that module's options, as
      `PortBridge.DSPy.create_program/2` takes them (`adapter:`, `max_iters:`, `N:`,
      `threshold:`, `steps:`; a step's `signature:` may be a signature module).
    * `:tools` - a ReAct agent's tools, with their functions
      (`PortBridge.DSPy.Tools`): declared at creation, called back at every run.
    * `:reward` - a `BestOfN` or `Refine` program's reward, `fun.(inputs, prediction)`.
    * `:optimized` - the path (from the project's root, e.g.
      `"priv/dspy/triage.json"`) of an `export_program/3` document of an optimised
      program of this definition: its demos and instructions are loaded at creation.
      Read at compile time (a changed file recompiles the module).
    * `:name` - the base of the program's id (default: the module's name).

  The options are evaluated at compile time (module attributes and variables are not
  in scope); mistakes are compile errors.
  """

  alias PortBridge.{DSPy, Error}
  alias PortBridge.DSPy.{Program.Definition, Types}

  @doc false
  defmacro __using__(opts) do
    unless Keyword.keyword?(opts) do
      raise CompileError,
        file: __CALLER__.file,
        line: __CALLER__.line,
        description: "use PortBridge.DSPy.Program takes a literal keyword list of options"
    end

    {evaluated, _} = Code.eval_quoted(opts, [], __CALLER__)
    definition = Definition.build!(__CALLER__.module, evaluated, __CALLER__)
    signature = definition.signature

    quote do
      if unquote(definition.external), do: @external_resource(unquote(definition.external))

      @doc false
      def __program__, do: unquote(Macro.escape(definition))

      @doc false
      # The functions the worker calls back while the program runs (evaluated here,
      # at run time: they may be any function).
      def __callbacks__,
        do: PortBridge.DSPy.Program.callbacks(unquote(opts[:tools]), unquote(opts[:reward]))

      @doc "The program's id: this module's name and a hash of its definition."
      @spec program_id() :: String.t()
      def program_id, do: unquote(definition.id)

      @doc """
      Runs the program on `inputs` (a map, one value per input of
      `#{inspect(unquote(signature))}`): `{:ok, %#{inspect(unquote(signature))}{}}`.
      See `PortBridge.DSPy.Program`.
      """
      @spec run(PortBridge.DSPy.target(), map, keyword) ::
              {:ok, unquote(signature).t()} | {:error, PortBridge.Error.t()}
      def run(target, inputs, opts \\ []),
        do: PortBridge.DSPy.Program.run(__MODULE__, target, inputs, opts)

      @doc "Like `run/3`, but returns the struct or raises the `PortBridge.Error`."
      @spec run!(PortBridge.DSPy.target(), map, keyword) :: unquote(signature).t()
      def run!(target, inputs, opts \\ []),
        do: PortBridge.DSPy.Program.unwrap!(run(target, inputs, opts))

      @doc """
      Like `run/3`, and also returns the worker's whole reply (`"outputs"` with any
      output the module adds, such as `"reasoning"`; `"usage"`, `"model"`...).
      """
      @spec execute(PortBridge.DSPy.target(), map, keyword) ::
              {:ok, unquote(signature).t(), map} | {:error, PortBridge.Error.t()}
      def execute(target, inputs, opts \\ []),
        do: PortBridge.DSPy.Program.execute(__MODULE__, target, inputs, opts)

      @doc """
      Runs the program and streams its output: `{:chunk, data}` items as the LM
      writes, then `{:ok, %#{inspect(unquote(signature))}{}}` or `{:error, error}`.
      """
      @spec stream(PortBridge.DSPy.target(), map, keyword) :: Enumerable.t()
      def stream(target, inputs, opts \\ []),
        do: PortBridge.DSPy.Program.stream(__MODULE__, target, inputs, opts)

      @doc "Like `stream/3`, but ends with the struct itself, and raises the `PortBridge.Error`."
      @spec stream!(PortBridge.DSPy.target(), map, keyword) :: Enumerable.t()
      def stream!(target, inputs, opts \\ []),
        do: PortBridge.DSPy.Program.stream!(__MODULE__, target, inputs, opts)

      @doc """
      Creates the program in the scope of `opts` (`:session_id`) on the Python that
      serves the call, if it is not there: a warm-up, `run/3` does it when needed.
      """
      @spec create(PortBridge.DSPy.target(), keyword) :: :ok | {:error, PortBridge.Error.t()}
      def create(target, opts \\ []), do: PortBridge.DSPy.Program.create(__MODULE__, target, opts)
    end
  end

  ## At run time

  @doc false
  @spec run(module, DSPy.target(), map, keyword) :: {:ok, struct} | {:error, Error.t()}
  def run(module, target, inputs, opts) do
    program = module.__program__()

    with {:ok, %{"outputs" => outputs}} <-
           execute_reply(module, program, target, inputs, opts, "run/3"),
         do: cast(program, outputs)
  end

  @doc false
  @spec execute(module, DSPy.target(), map, keyword) :: {:ok, struct, map} | {:error, Error.t()}
  def execute(module, target, inputs, opts) do
    program = module.__program__()

    with {:ok, %{"outputs" => outputs} = reply} <-
           execute_reply(module, program, target, inputs, opts, "execute/3"),
         {:ok, struct} <- cast(program, outputs),
         do: {:ok, struct, reply}
  end

  defp execute_reply(module, program, target, inputs, opts, function) do
    where = Map.fetch!(program.where, function)
    started = System.monotonic_time(:millisecond)
    inputs = inputs!(program, inputs, where)
    opts = with_callbacks(module, program, opts)

    reply =
      case DSPy.execute_as(where, target, program.id, inputs, opts) do
        {:error, %Error{code: "unknown_program"}} ->
          opts = one_budget(target, opts, started)

          with :ok <- create(module, target, opts),
               do: DSPy.execute_as(where, target, program.id, inputs, opts)

        reply ->
          reply
      end

    # The worker is untrusted: its reply's shape is checked on either path (first
    # try, or after creating the program).
    case reply do
      {:ok, %{"outputs" => outputs}} when is_map(outputs) ->
        reply

      {:ok, other} ->
        {:error,
         Error.new(
           :protocol,
           "malformed_result",
           "execute_program answered #{inspect(other, limit: 5)}"
         )}

      error ->
        error
    end
  end

  @doc false
  @spec stream(module, DSPy.target(), map, keyword) :: Enumerable.t()
  def stream(module, target, inputs, opts) do
    program = module.__program__()
    where = Map.fetch!(program.where, "stream/3")
    inputs = inputs!(program, inputs, where)
    opts = with_callbacks(module, program, opts)
    attempt = fn opts -> DSPy.stream_as(where, target, program.id, inputs, opts) end

    # Lazy as PortBridge.DSPy.stream/4: sent when first enumerated. A first attempt
    # that meets `unknown_program` (before any chunk) creates the program and runs again.
    Stream.flat_map([:start], fn :start ->
      started = System.monotonic_time(:millisecond)

      opts
      |> attempt.()
      |> Stream.transform(:first, fn
        {:error, %Error{code: "unknown_program"}} = error, :first ->
          opts = one_budget(target, opts, started)

          case create(module, target, opts) do
            :ok -> {Stream.map(attempt.(opts), &cast_item(program, &1)), :retried}
            {:error, _} -> {[error], :retried}
          end

        item, state ->
          {[cast_item(program, item)], if(state == :first, do: :chunks, else: state)}
      end)
    end)
  end

  @doc false
  @spec stream!(module, DSPy.target(), map, keyword) :: Enumerable.t()
  def stream!(module, target, inputs, opts) do
    module
    |> stream(target, inputs, opts)
    |> Stream.map(fn
      {:ok, struct} -> struct
      {:error, %Error{} = error} -> raise error
      item -> item
    end)
  end

  defp cast_item(program, {:ok, %{"outputs" => outputs}}), do: cast(program, outputs)
  defp cast_item(_program, item), do: item

  @doc false
  # Creates the program where `opts` say (its session, or the global scope); one that
  # is there already is this very definition (the id is its hash).
  @spec create(module, DSPy.target(), keyword) :: :ok | {:error, Error.t()}
  def create(module, target, opts) do
    %{id: id, create: create} = module.__program__()
    opts = Keyword.take(opts, [:session_id, :timeout, :meta])

    result =
      case create do
        {:create_program, args} -> DSPy.create_program(target, args ++ [program_id: id] ++ opts)
        {:import_program, doc} -> DSPy.import_program(target, doc, [program_id: id] ++ opts)
      end

    case result do
      {:ok, _} -> :ok
      {:error, %Error{code: "program_exists"}} -> :ok
      error -> error
    end
  end

  # What is left of the call's :timeout after its first attempt, for the creation and
  # the second attempt: one budget for the whole run (at least 1 ms: the next request
  # then ends with the timeout error a caller expects).
  defp one_budget(target, opts, started) do
    timeout =
      case opts[:timeout] do
        nil -> PortBridge.Call.new(target, "execute_program", %{}).timeout
        timeout -> timeout
      end

    case timeout do
      :infinity ->
        opts

      ms ->
        Keyword.put(opts, :timeout, max(started + ms - System.monotonic_time(:millisecond), 1))
    end
  end

  defp with_callbacks(module, %{callbacks?: true}, opts) do
    Enum.reduce(module.__callbacks__(), opts, fn {key, value}, opts ->
      Keyword.put_new(opts, key, value)
    end)
  end

  defp with_callbacks(_module, _program, opts), do: opts

  @doc false
  # The Elixir functions of a program module, as PortBridge.DSPy's options take them
  # (which turn the tools into callbacks, once per run).
  @spec callbacks([map] | nil, function | nil) :: keyword
  def callbacks(tools, reward) do
    Enum.reject([tools: tools, reward: reward], &is_nil(elem(&1, 1)))
  end

  # Inputs: a map of the signature's input fields (a keyword list, or an unknown
  # field, is a mistake said at once).
  defp inputs!(program, inputs, where) when is_map(inputs) and not is_struct(inputs) do
    for {key, _} <- inputs, not MapSet.member?(program.inputs, input_key(key)) do
      raise ArgumentError,
            "#{where}: #{inspect(key)} is not an input of #{inspect(program.signature)}; " <>
              "its inputs are #{inspect(MapSet.to_list(program.inputs))}"
    end

    if program.dump?, do: Types.dump(inputs), else: inputs
  end

  defp inputs!(program, inputs, where) do
    raise ArgumentError,
          "#{where} takes its inputs as a map, such as %{#{hd(MapSet.to_list(program.inputs) ++ [:question])}: ...}" <>
            if(Keyword.keyword?(inputs) and inputs != [],
              do: " (Map.new/1 makes one of a keyword list)",
              else: ""
            ) <>
            "; got: #{inspect(inputs, limit: 5)}"
  end

  defp input_key(key) when is_atom(key), do: key

  defp input_key(key) when is_binary(key) do
    String.to_existing_atom(key)
  rescue
    ArgumentError -> nil
  end

  defp input_key(_key), do: nil

  defp cast(program, outputs),
    do: Types.cast_fields(program.signature, program.outputs, outputs, program.root)

  @doc false
  def unwrap!({:ok, value}), do: value
  def unwrap!({:error, %Error{} = error}), do: raise(error)
end
