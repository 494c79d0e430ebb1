defmodule PortBridge.DSPy.Signature do
  @moduledoc """
  A DSPy signature as an Elixir module: its inputs and outputs, with Elixir types.

      defmodule MyApp.Triage do
        use PortBridge.DSPy.Signature, instructions: "Classify a support ticket."

        input :ticket, :string, desc: "the ticket text"
        output :category, {:enum, ["billing", "bug", "other"]}
        output :urgent, :boolean
        output :tags, {:list, :string}
      end

  The module is a struct of its outputs (`%MyApp.Triage{category: "bug", urgent:
  true, tags: [...]}`), with a `t/0` type; a program built from it
  (`PortBridge.DSPy.Program`) returns its results cast into that struct. The types
  are `PortBridge.DSPy.Types`': `:string :integer :float :boolean`, `{:list, t}`,
  `{:map, t}`, `{:enum, values}`, `{:optional, t}`, and another signature module
  for an object:

      defmodule MyApp.Item do
        use PortBridge.DSPy.Signature
        field :sku, :string
        field :qty, {:optional, :integer}, desc: "how many; nil when not said"
      end

  (`field` is `output` under the name that reads right in a module used as an
  object type, which declares no inputs.)

  Options of `use`: `:instructions` (the task, as DSPy's signature docstring), and
  `:name` (the signature's name in DSPy, by default the module's last part:
  `"Triage"`). Each field takes `:desc`, its description for the LM.

  Mistakes are compile errors: an unknown type, a field declared twice, a name
  DSPy reserves (`signature`, `demos`, `config`, `lm`, `prediction`, `model_*`...)
  or that is not an identifier.

  `__signature__/0` is the signature as the worker takes it (the map form of
  `PortBridge.DSPy.create_program/2`'s `:signature`, fields as ordered lists), so
  `DSPy.create_program(target, signature: MyApp.Triage)` works too.
  """

  alias PortBridge.DSPy.Types

  # Names dspy.Predict takes for itself (an input of that name never reaches the LM),
  # BootstrapFewShot's mark on demos, and pydantic's namespace (bridge/backends/dspy/spec.py).
  @reserved ~w(signature demos config lm prediction new_signature augmented)a
  @name ~r/^[A-Za-z][A-Za-z0-9_]{0,63}$/

  @doc false
  defmacro __using__(opts) do
    quote do
      import PortBridge.DSPy.Signature,
        only: [input: 2, input: 3, output: 2, output: 3, field: 2, field: 3]

      Module.register_attribute(__MODULE__, :portbridge_fields, accumulate: true)
      @portbridge_signature_opts unquote(opts)
      @before_compile PortBridge.DSPy.Signature
    end
  end

  @doc "Declares an input field: `input :question, :string, desc: \"...\"`."
  defmacro input(name, type, opts \\ []), do: declare(:input, name, type, opts, __CALLER__)

  @doc "Declares an output field: a field of the struct, filled from the program's answer."
  defmacro output(name, type, opts \\ []), do: declare(:output, name, type, opts, __CALLER__)

  @doc "Declares a field of a module used as an object type (the same as `output/3`)."
  defmacro field(name, type, opts \\ []), do: declare(:output, name, type, opts, __CALLER__)

  defp declare(kind, name, type, opts, caller) do
    type = expand_aliases(type, caller)

    quote do
      PortBridge.DSPy.Signature.__field__(
        __MODULE__,
        unquote(kind),
        unquote(name),
        unquote(type),
        unquote(opts),
        unquote(caller.file),
        unquote(caller.line)
      )
    end
  end

  # `{:list, Item}` names a module through the caller's aliases.
  defp expand_aliases(type, caller),
    do: Macro.prewalk(type, fn node -> Macro.expand(node, caller) end)

  @doc false
  def __field__(module, kind, name, type, opts, file, line) do
    fail = fn message -> raise CompileError, file: file, line: line, description: message end
    where = "#{kind} #{inspect(name)} of #{inspect(module)}"

    cond do
      not is_atom(name) or not Regex.match?(@name, Atom.to_string(name)) ->
        fail.(
          "#{where}: a field name is an atom like :question (a letter, then letters, digits or _)"
        )

      name in @reserved or String.starts_with?(Atom.to_string(name), "model_") ->
        fail.("#{where}: #{inspect(name)} is reserved by DSPy; rename the field")

      List.keymember?(Module.get_attribute(module, :portbridge_fields), name, 1) ->
        fail.("#{where}: the field #{inspect(name)} is declared twice")

      not Keyword.keyword?(opts) or Keyword.keys(opts) -- [:desc] != [] ->
        fail.("#{where}: the only option of a field is :desc, got: #{inspect(opts)}")

      not is_binary(Keyword.get(opts, :desc, "")) ->
        fail.("#{where}: :desc must be a string")

      reason = Types.invalid(type) ->
        fail.("#{where}: #{reason}")

      true ->
        Module.put_attribute(module, :portbridge_fields, {kind, name, type, opts})
    end
  end

  @doc false
  defmacro __before_compile__(env) do
    fields = env.module |> Module.get_attribute(:portbridge_fields) |> Enum.reverse()
    opts = Module.get_attribute(env.module, :portbridge_signature_opts)
    inputs = for {:input, name, type, opts} <- fields, do: {name, type, opts[:desc] || ""}
    outputs = for {:output, name, type, opts} <- fields, do: {name, type, opts[:desc] || ""}
    name = Keyword.get_lazy(opts, :name, fn -> env.module |> Module.split() |> List.last() end)

    unless Keyword.keyword?(opts) and Keyword.keys(opts) -- [:instructions, :name] == [] do
      raise CompileError,
        file: env.file,
        description:
          "use PortBridge.DSPy.Signature takes :instructions and :name, got: #{inspect(opts)}"
    end

    unless is_binary(name) and Regex.match?(@name, name),
      do: raise(CompileError, file: env.file, description: ":name must be an identifier string")

    wire_fields = fn list ->
      for {field, type, desc} <- list,
          do: %{"name" => Atom.to_string(field), "type" => Types.wire(type), "desc" => desc}
    end

    wire =
      %{"name" => name, "inputs" => wire_fields.(inputs), "outputs" => wire_fields.(outputs)}
      |> then(fn wire ->
        case opts[:instructions] do
          nil -> wire
          text -> Map.put(wire, "instructions", text)
        end
      end)

    struct_type =
      for {field, type, _} <- outputs, do: {field, quote(do: unquote(Types.typespec(type)) | nil)}

    quote do
      defstruct unquote(Enum.map(outputs, &elem(&1, 0)))

      @typedoc "The outputs of the signature #{unquote(name)}."
      @type t :: %__MODULE__{unquote_splicing(struct_type)}

      @doc """
      The signature as the worker takes it (`PortBridge.DSPy.create_program/2`'s
      `:signature`). With an argument: `:name`, `:inputs` and `:outputs` (lists of
      `{name, type, desc}`), `:wire_fields` (the outputs as the worker's object fields),
      `:cast` (the outputs as `{name, "name", type}`, to cast answers).
      """
      def __signature__, do: unquote(Macro.escape(wire))

      @doc false
      def __signature__(:name), do: unquote(name)
      def __signature__(:inputs), do: unquote(Macro.escape(inputs))
      def __signature__(:outputs), do: unquote(Macro.escape(outputs))
      def __signature__(:wire_fields), do: unquote(Macro.escape(wire["outputs"]))

      def __signature__(:cast),
        do:
          unquote(
            Macro.escape(
              for {field, type, _} <- outputs, do: {field, Atom.to_string(field), type}
            )
          )
    end
  end
end
