defmodule PortBridge.DSPy.Tools do
  @moduledoc """
  An agent's tools, one shape everywhere: a list of maps

      tools = [
        %{
          name: "add",
          description: "Add two integers.",
          parameters: [a: :integer, b: :integer],
          fun: fn %{"a" => a, "b" => b} -> a + b end
        }
      ]

  given as it is to `PortBridge.DSPy.create_program/2` (`module: "ReAct"`: the
  worker gets each tool's `name`, `description` and `parameters`), to
  `PortBridge.DSPy.execute_program/4` and `PortBridge.DSPy.stream/4` (each `fun`
  answers the worker's calls of its tool), and to `use PortBridge.DSPy.Program`.

  `parameters` is a keyword list of `PortBridge.DSPy.Types` (every parameter
  required unless `{:optional, t}`), or a JSON Schema object as a map
  (`%{"type" => "object", "properties" => %{...}}`); none: the tool takes no
  argument. `fun` takes the tool's arguments as a map with string keys and returns
  a JSON-encodable value, or `{:error, message}`; a raise becomes an `execution`
  error the agent sees. Keys may be atoms or strings.

  `PortBridge.DSPy.execute_program/4` also takes `tools: %{"add" => fun}`, when
  the declarations are elsewhere.
  """

  alias PortBridge.DSPy.Types

  @typedoc "One tool."
  @type tool :: %{
          required(:name) => String.t() | atom,
          optional(:description) => String.t(),
          optional(:parameters) => keyword(Types.t()) | map,
          optional(:fun) => (map -> term)
        }

  @doc false
  # The worker's declarations of a list of tools (create_program's `tools`).
  @spec declarations([tool | map]) :: [map]
  def declarations(tools) when is_list(tools) do
    Enum.map(tools, fn tool ->
      tool = normalise!(tool)

      %{"name" => tool.name}
      |> put_present("description", tool.description)
      |> put_present("parameters", parameters!(tool.name, tool.parameters))
    end)
  end

  def declarations(other),
    do: raise(ArgumentError, ":tools must be a list of tool maps, got: #{inspect(other)}")

  @doc false
  # `%{"name" => fun}` of a list of tools (each with its `:fun`), or of such a map.
  @spec callbacks([tool | map] | map) :: %{String.t() => (map -> term)}
  def callbacks(tools) when is_map(tools) do
    Map.new(tools, fn
      {name, fun} when is_function(fun, 1) and (is_binary(name) or is_atom(name)) ->
        {to_string(name), fun}

      other ->
        raise ArgumentError,
              "tools given as a map map names to 1-arity functions, got: #{inspect(other)}"
    end)
  end

  def callbacks(tools) when is_list(tools) do
    Map.new(tools, fn tool ->
      case normalise!(tool) do
        %{fun: fun, name: name} when is_function(fun, 1) ->
          {name, fun}

        %{name: name} ->
          raise ArgumentError,
                "the tool #{inspect(name)} has no :fun (a 1-arity function) to answer its calls"
      end
    end)
  end

  def callbacks(other),
    do: raise(ArgumentError, ":tools must be a list of tool maps, got: #{inspect(other)}")

  @keys [:name, :description, :parameters, :fun]

  defp normalise!(tool) when is_map(tool) do
    tool = Map.new(tool, fn {key, value} -> {key(key, tool), value} end)

    case tool do
      %{name: name} when is_binary(name) or (is_atom(name) and name != nil) ->
        Map.merge(%{description: nil, parameters: nil, fun: nil}, %{tool | name: to_string(name)})

      _ ->
        raise ArgumentError, "a tool needs a :name (a string), got: #{inspect(tool)}"
    end
  end

  defp normalise!(other),
    do:
      raise(
        ArgumentError,
        "a tool is a map %{name: ..., description: ..., parameters: ..., fun: ...}, got: #{inspect(other)}"
      )

  defp key(key, _tool) when key in @keys, do: key

  defp key(key, tool) when is_binary(key) do
    case Enum.find(@keys, &(Atom.to_string(&1) == key)) do
      nil -> unknown_key!(key, tool)
      atom -> atom
    end
  end

  defp key(key, tool), do: unknown_key!(key, tool)

  defp unknown_key!(key, tool),
    do:
      raise(
        ArgumentError,
        "unknown key #{inspect(key)} in the tool #{inspect(tool)}; a tool has #{inspect(@keys)}"
      )

  defp parameters!(_name, nil), do: nil
  defp parameters!(_name, schema) when is_map(schema), do: schema
  defp parameters!(_name, []), do: %{"type" => "object", "properties" => %{}}

  defp parameters!(name, params) when is_list(params) do
    unless Keyword.keyword?(params),
      do:
        raise(ArgumentError, "the parameters of the tool #{inspect(name)} must be a keyword list")

    for {param, type} <- params, reason = Types.invalid(type) do
      raise ArgumentError, "parameter #{inspect(param)} of the tool #{inspect(name)}: #{reason}"
    end

    required = for {param, type} <- params, not match?({:optional, _}, type), do: "#{param}"

    %{
      "type" => "object",
      "properties" =>
        Map.new(params, fn {param, type} -> {"#{param}", Types.json_schema(type)} end),
      "additionalProperties" => false
    }
    |> put_present("required", if(required != [], do: required))
  end

  defp parameters!(name, other),
    do:
      raise(
        ArgumentError,
        "the parameters of the tool #{inspect(name)} are a keyword list of types or a JSON Schema map, got: #{inspect(other)}"
      )

  defp put_present(map, _key, nil), do: map
  defp put_present(map, key, value), do: Map.put(map, key, value)
end
