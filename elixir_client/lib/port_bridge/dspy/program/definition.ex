defmodule PortBridge.DSPy.Program.Definition do
  @moduledoc false
  # What `use PortBridge.DSPy.Program` makes of its options, at compile time: checked
  # (a mistake is a compile error), turned into the request that creates the program
  # on a Python (create_program, or import_program of an optimised document), and
  # named by a hash of that request, so that an id always means one definition: a
  # Python that has the id has this very program, and creating it again is never a
  # conflict.

  alias PortBridge.DSPy.{Arguments, Tools}
  alias PortBridge.Schema

  # What a program module takes besides create_program's own arguments.
  @own [
    signature: [type: :atom, required: true, doc: "the `PortBridge.DSPy.Signature` module"],
    name: [type: :string, doc: "the base of the program's id (default: the module's name)"],
    optimized: [type: :string, doc: "an `export_program` document (a JSON file) to load"],
    tools: [type: {:list, :map}, doc: "the agent's tools (`PortBridge.DSPy.Tools`)"],
    reward: [type: {:fun, [1, 2]}, doc: "a `BestOfN` or `Refine` program's reward"]
  ]
  @taken ~w(signature program_id replace tools)
  # A program module has a signature, so its module is one the worker builds from one; an
  # exposed dspy.Module class ("namespace.Class", with init:) is created with
  # PortBridge.DSPy.create_program/2.
  @built_in for(
              %{"enum" => names} <-
                Arguments.commands()["create_program"]["args"]["properties"]["module"]["anyOf"],
              do: names
            )
            |> List.flatten()

  @doc false
  # The program's definition from the evaluated options of `use`.
  @spec build!(module, keyword, Macro.Env.t()) :: map
  def build!(module, opts, env) do
    schema =
      @own ++
        Arguments.schema("create_program",
          except: ["init" | @taken],
          override: [module: [type: {:in, @built_in}]]
        )

    try do
      Schema.validate!(opts, schema, "use PortBridge.DSPy.Program in #{inspect(module)}")
    rescue
      error in ArgumentError -> fail!(env, error.message)
    end

    signature = signature!(opts[:signature], env)
    {own, args} = Keyword.split(opts, Keyword.keys(@own))

    args =
      args
      |> Enum.map(fn {key, value} -> {key, signature_modules(value)} end)
      |> Keyword.put(:signature, signature.__signature__())
      |> Keyword.put_new(:module, "Predict")
      |> put_if(:tools, own[:tools] && Tools.declarations(own[:tools]))
      |> put_if(:reward_fn, own[:reward] && %{"callback" => "reward"})

    optimized = own[:optimized] && optimized!(own[:optimized], args, signature, env)
    create = if optimized, do: {:import_program, optimized}, else: {:create_program, args}
    id = program_id(own[:name] || inspect(module), create)

    %{
      id: id,
      signature: signature,
      outputs: signature.__signature__(:cast),
      root: inspect(signature),
      inputs: MapSet.new(for {name, _, _} <- signature.__signature__(:inputs), do: name),
      # Structs of object types become maps on the way out; other inputs go as they are.
      dump?: Enum.any?(signature.__signature__(:inputs), fn {_, type, _} -> object?(type) end),
      create: create,
      external: own[:optimized] && Path.expand(own[:optimized]),
      # The public functions, as ArgumentErrors name them (made once, not per call).
      where: Map.new(~w(run/3 execute/3 stream/3), &{&1, "#{inspect(module)}.#{&1}"}),
      callbacks?: own[:tools] != nil or own[:reward] != nil
    }
  end

  defp signature!(module, env) do
    case Code.ensure_compiled(module) do
      {:module, ^module} ->
        if function_exported?(module, :__signature__, 0),
          do: module,
          else: fail!(env, "#{inspect(module)} is not a PortBridge.DSPy.Signature module")

      _ ->
        fail!(env, ":signature names #{inspect(module)}, which is not a module that compiles")
    end
  end

  # A signature module anywhere in the options (a pipeline step's :signature) travels
  # as its wire map.
  defp signature_modules(value) when is_list(value), do: Enum.map(value, &signature_modules/1)

  defp signature_modules(value) when is_map(value) and not is_struct(value) do
    Map.new(value, fn
      {key, module} when key in [:signature, "signature"] and is_atom(module) and module != nil ->
        {key, module.__signature__()}

      {key, inner} ->
        {key, signature_modules(inner)}
    end)
  end

  defp signature_modules(value), do: value

  defp object?(type) when type in [:string, :integer, :float, :boolean], do: false
  defp object?({:enum, _values}), do: false
  defp object?({_kind, inner}), do: object?(inner)
  defp object?(module) when is_atom(module), do: true

  defp put_if(args, _key, nil), do: args
  defp put_if(args, key, value), do: Keyword.put(args, key, value)

  # An export_program document (or a reply that holds one under "program"), read now:
  # the program is imported from it with this module's definition (signature, module,
  # options) and the document's learned state (demos, instructions).
  defp optimized!(path, args, signature, env) do
    full = Path.expand(path)

    doc =
      case File.read(full) do
        {:ok, text} -> text |> PortBridge.Codec.decode!(:json) |> unwrap()
        {:error, reason} -> fail!(env, "cannot read #{full}: #{:file.format_error(reason)}")
      end

    unless is_map(doc) and doc["format"] == "portbridge.dspy.program",
      do: fail!(env, "#{full} is not a document from PortBridge.DSPy.export_program/3")

    if doc["module"] != args[:module],
      do:
        fail!(env, "#{full} holds a #{doc["module"]} program; this module is a #{args[:module]}")

    for side <- ["inputs", "outputs"] do
      ours = for field <- signature.__signature__()[side], do: field["name"]
      theirs = field_names(doc["signature"][side])

      if Enum.sort(ours) != Enum.sort(theirs),
        do:
          fail!(
            env,
            "#{full} has the #{side} #{inspect(theirs)}; #{inspect(signature)} has #{inspect(ours)}"
          )
    end

    options =
      Map.new(Keyword.drop(args, [:signature, :module, :instructions]), fn {k, v} ->
        {"#{k}", v}
      end)

    %{
      doc
      | "signature" => signature.__signature__(),
        "options" => Map.merge(doc["options"] || %{}, options)
    }
  end

  defp unwrap(%{"program" => doc}), do: doc
  defp unwrap(doc), do: doc

  defp field_names(fields) when is_map(fields), do: Map.keys(fields)
  defp field_names(fields) when is_list(fields), do: for(%{"name" => name} <- fields, do: name)
  defp field_names(_), do: []

  # The id names the definition: the module's name (or :name) and a hash of the request
  # that creates it. At most 128 characters, as the worker's ids.
  defp program_id(base, create) do
    hash =
      create
      |> :erlang.term_to_binary([:deterministic])
      |> :erlang.md5()
      |> Base.encode16(case: :lower)
      |> binary_part(0, 12)

    base = base |> String.replace(~r/[^A-Za-z0-9_.:-]/, "_") |> String.slice(0, 100)
    "#{base}-#{hash}"
  end

  defp fail!(env, message),
    do: raise(CompileError, file: env.file, line: env.line, description: message)
end
