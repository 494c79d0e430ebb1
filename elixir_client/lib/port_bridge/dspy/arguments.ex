defmodule PortBridge.DSPy.Arguments do
  @moduledoc false
  # The arguments of the DSPy commands, as the worker declares them: read at compile
  # time from priv/dspy_commands.json (a copy of protocol/dspy_commands.json, which
  # scripts/sync_protocol.sh generates from a real worker's `describe`). PortBridge.DSPy
  # builds each function's options, their checks and their docs from here, so an
  # argument is declared once, in the worker (bridge/backends/dspy/schemas.py), and
  # cannot drift: the Python suite fails while the file differs from `describe`, the
  # Elixir suite while the copy differs from the file or from a live worker.
  #
  # At run time, what a caller's options become in a request: the command's args
  # (signature modules and tools as data, Elixir functions as callbacks) and the
  # request options.

  alias PortBridge.{JSONSchema, Options, Schema}
  alias PortBridge.DSPy.{Tools, Types}

  @request_schema Options.request_schema()

  @path PortBridge.ProtocolFile.path("dspy_commands.json")
  @external_resource @path
  @commands PortBridge.ProtocolFile.read!("dspy_commands.json")["commands"]

  @doc false
  # The file's commands: name -> describe's entry (name, description, args, ...).
  @spec commands() :: %{String.t() => map}
  def commands, do: @commands

  @doc false
  # `command`'s arguments as a PortBridge.Schema, without those in `:except` (the
  # function's parameters), each entry merged with `:override` (what reads better
  # in Elixir terms: a doc, a wider type for Elixir functions), followed by `:extra`
  # (Elixir-only options). Raises at compile time when the worker has no such
  # command or argument: the function would send what the worker refuses.
  @spec schema(String.t(), keyword) :: PortBridge.Schema.t()
  def schema(command, opts \\ []) do
    args =
      case Map.fetch(@commands, command) do
        {:ok, %{"args" => args}} -> args
        :error -> raise ArgumentError, "#{@path} has no DSPy command #{inspect(command)}"
      end

    except = Keyword.get(opts, :except, [])
    known = Map.keys(Map.get(args, "properties", %{}))

    for name <- except ++ Enum.map(Keyword.keys(opts[:override] || []), &Atom.to_string/1),
        name not in known do
      raise ArgumentError,
            "#{@path}: #{command} has no argument #{inspect(name)} (it has #{inspect(known)})"
    end

    overrides = Keyword.get(opts, :override, [])

    Enum.map(JSONSchema.options(args, except), fn {key, spec} ->
      {key, Keyword.merge(spec, Keyword.get(overrides, key, []))}
    end) ++ Keyword.get(opts, :extra, [])
  end

  @doc false
  # The PortBridge.Schema type of one argument of `command`.
  @spec type(String.t(), String.t()) :: PortBridge.Schema.type()
  def type(command, arg),
    do: JSONSchema.option_type(@commands[command]["args"]["properties"][arg])

  @doc false
  # The worker's one-line description of a command.
  @spec description(String.t()) :: String.t()
  def description(command), do: @commands[command]["description"]

  ## What a caller's options become in a request

  @doc false
  # Inputs are a map (one value per input field); a keyword list would reach the JSON
  # encoder as a list of tuples and fail there, far from the mistake.
  @spec inputs!(term, String.t()) :: :ok
  def inputs!(inputs, _function) when is_map(inputs) and not is_struct(inputs), do: :ok

  def inputs!(inputs, function) do
    hint =
      if inputs != [] and Keyword.keyword?(inputs),
        do: " (a keyword list: pass Map.new(inputs) or write %{...} instead of [...])",
        else: ""

    raise ArgumentError,
          "the inputs of #{function} are a map with one value per input " <>
            "field, such as %{question: \"...\"}#{hint}; got: #{inspect(inputs, limit: 5)}"
  end

  @doc false
  # Options are the command's arguments or request options; anything else is a
  # mistake, reported with the valid ones. `create_program` takes a signature
  # module and tools as data; elsewhere, Elixir functions given as `tools:`,
  # `metric:` or `reward:` become callbacks the worker calls back.
  @spec split!(keyword, PortBridge.Schema.t(), String.t(), String.t()) :: {map, keyword}
  def split!(opts, arg_schema, command, where) do
    opts = rate_limit(opts)
    Schema.validate!(opts, arg_schema ++ @request_schema, where)

    opts =
      case command do
        "create_program" -> as_data(opts)
        # Scripted answers may be signature structs (%MyApp.Triage{...}): maps on the wire.
        "configure_lm" -> Keyword.replace_lazy(opts, :answers, &Types.dump/1)
        _ -> elixir_callbacks(opts)
      end

    {args, request_opts} = Keyword.split(opts, Keyword.keys(arg_schema))
    request_opts = Keyword.replace_lazy(request_opts, :on_event, &without_lm_calls/1)
    {Map.new(args, fn {key, value} -> {Atom.to_string(key), arg(key, value)} end), request_opts}
  end

  # An argument whose Elixir form is not the wire's: a key given by reference (kept as
  # such in records and replays, resolved only when its frame is built).
  defp arg(:api_key, value) when value != nil, do: PortBridge.Secret.new!(value, :api_key)
  defp arg(_key, value), do: value

  # `rate_limit:` as a keyword list (or a map with atom keys) becomes the wire's map,
  # checked here: a limit that is not a positive integer is an ArgumentError naming it.
  defp rate_limit(opts) do
    case Keyword.get(opts, :rate_limit) do
      nil ->
        opts

      limits ->
        wire = limits |> PortBridge.RateLimit.limits!() |> PortBridge.RateLimit.to_wire()
        Keyword.put(opts, :rate_limit, wire)
    end
  end

  # An LM call is telemetry ([:port_bridge, :lm, :call]), not an event for on_event.
  defp without_lm_calls(nil), do: nil

  defp without_lm_calls(on_event) do
    fn
      {"lm_call", _data} -> :ok
      event -> on_event.(event)
    end
  end

  defp as_data(opts) do
    opts
    |> Keyword.replace_lazy(:tools, &Tools.declarations/1)
    |> Keyword.replace_lazy(:signature, fn
      module when is_atom(module) -> signature_module!(module)
      signature -> signature
    end)
  end

  defp signature_module!(module) do
    if Code.ensure_loaded?(module) and function_exported?(module, :__signature__, 0),
      do: module.__signature__(),
      else:
        raise(
          ArgumentError,
          "#{inspect(module)} is not a signature module (use PortBridge.DSPy.Signature); " <>
            ":signature takes such a module, a string or a map"
        )
  end

  # Elixir functions given as `tools:`, `metric:` or `reward:` become callbacks the
  # worker calls back (PortBridge.Callbacks), under the names the request declares:
  # a tool's own name, "metric" (the argument becomes {"callback": "metric"}),
  # "reward" (a BestOfN or Refine program created with reward_fn: {"callback": "reward"}).
  defp elixir_callbacks(opts) do
    {tools, opts} = Keyword.pop(opts, :tools)
    {reward, opts} = Keyword.pop(opts, :reward)

    {metric, opts} =
      case Keyword.fetch(opts, :metric) do
        {:ok, fun} when is_function(fun) ->
          {fun, Keyword.put(opts, :metric, %{"callback" => "metric"})}

        _ ->
          {nil, opts}
      end

    added =
      Map.merge(
        if(tools, do: Tools.callbacks(tools), else: %{}),
        Map.reject(
          %{"metric" => adapt(metric, "example"), "reward" => adapt(reward, "inputs")},
          &is_nil(elem(&1, 1))
        )
      )

    if added == %{},
      do: opts,
      else: Keyword.update(opts, :callbacks, added, &Map.merge(added, &1))
  end

  # A metric (example, prediction) or a reward (inputs, prediction) of arity 2 gets
  # the two parts of the worker's arguments; arity 1 gets them whole.
  defp adapt(nil, _first), do: nil
  defp adapt(fun, _first) when is_function(fun, 1), do: fun

  defp adapt(fun, first) when is_function(fun, 2),
    do: fn args -> fun.(args[first], args["prediction"]) end

  defp adapt(other, _first),
    do:
      raise(
        ArgumentError,
        "a metric or reward must be a function of 1 or 2 arguments, got: #{inspect(other)}"
      )
end
