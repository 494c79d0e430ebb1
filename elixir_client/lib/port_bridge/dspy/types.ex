defmodule PortBridge.DSPy.Types do
  @moduledoc """
  The field types of `PortBridge.DSPy.Signature` modules (and of tool parameters
  declared as a keyword list), and what each becomes on the wire and back.

  | type | the worker's type | a value comes back as |
  |---|---|---|
  | `:string` | `str` | a string |
  | `:integer` | `int` | an integer |
  | `:float` | `float` | a float (an integer answer is made a float) |
  | `:boolean` | `bool` | `true` or `false` |
  | `{:list, t}` | `list[t]` | a list of `t` |
  | `{:map, t}` | `dict[str, t]` | a map of string keys to `t` |
  | `{:enum, values}` | `{"literal": values}` | one of `values` (strings, integers, booleans or atoms; an atom travels as its name and comes back as the atom) |
  | `{:optional, t}` | `optional[t]` | `nil` or a `t` |
  | a signature module | `{"object": fields, "name": ...}` | that module's struct, its `output`s (or `field`s) as fields |

  A value that does not cast is an `output_parse` error (the LM's answer did not
  fit the signature), with the field's path in its message and `details`.
  """

  alias PortBridge.Error

  @typedoc "A field type."
  @type t ::
          :string
          | :integer
          | :float
          | :boolean
          | {:list, t}
          | {:map, t}
          | {:enum, [String.t() | integer | boolean | atom]}
          | {:optional, t}
          | module

  @scalars %{string: "str", integer: "int", float: "float", boolean: "bool"}

  @doc false
  # nil when `type` is a valid type, else why not (checked at compile time by the
  # Signature DSL, so a mistake is a compile error that names the field).
  @spec invalid(term) :: String.t() | nil
  def invalid(type) when is_map_key(@scalars, type), do: nil
  def invalid({kind, inner}) when kind in [:list, :map, :optional], do: invalid(inner)

  def invalid({:enum, [_ | _] = values}) do
    if Enum.all?(values, &(is_binary(&1) or is_integer(&1) or is_atom(&1))) and
         length(Enum.uniq(Enum.map(values, &wire_literal/1))) == length(values),
       do: nil,
       else: "{:enum, values} takes distinct strings, integers, booleans or atoms"
  end

  def invalid({:enum, _}), do: "{:enum, values} takes a non-empty list"

  def invalid(module) when is_atom(module) do
    case Code.ensure_compiled(module) do
      {:module, ^module} ->
        if function_exported?(module, :__signature__, 1),
          do: object_invalid(module),
          else: "#{inspect(module)} is not a PortBridge.DSPy.Signature module"

      _ ->
        "unknown type #{inspect(module)} (not a type, nor a module that can be compiled)"
    end
  end

  def invalid(other),
    do:
      "unknown type #{inspect(other)}; the types are :string, :integer, :float, :boolean, " <>
        "{:list, t}, {:map, t}, {:enum, values}, {:optional, t} and signature modules"

  defp object_invalid(module) do
    if module.__signature__(:inputs) == [],
      do: nil,
      else: "#{inspect(module)} has inputs: a module used as an object type declares only fields"
  end

  defp wire_literal(value) when is_boolean(value) or is_nil(value), do: value
  defp wire_literal(value) when is_atom(value), do: Atom.to_string(value)
  defp wire_literal(value), do: value

  @doc false
  # The worker's spelling of a type: a string where one says it, else a map;
  # an object's fields as a list, so their order survives the JSON map.
  @spec wire(t) :: String.t() | map
  def wire(type) when is_map_key(@scalars, type), do: Map.fetch!(@scalars, type)

  def wire({kind, inner}) when kind in [:list, :map, :optional] do
    key = %{list: "list", map: "dict", optional: "optional"}[kind]

    case wire(inner) do
      text when is_binary(text) and kind == :map -> "dict[str, #{text}]"
      text when is_binary(text) -> "#{key}[#{text}]"
      nested -> %{key => nested}
    end
  end

  def wire({:enum, values}), do: %{"literal" => Enum.map(values, &wire_literal/1)}

  def wire(module) when is_atom(module),
    do: %{"object" => module.__signature__(:wire_fields), "name" => module.__signature__(:name)}

  @doc false
  # A JSON Schema of the type (a tool's parameters).
  @spec json_schema(t) :: map
  def json_schema(:string), do: %{"type" => "string"}
  def json_schema(:integer), do: %{"type" => "integer"}
  def json_schema(:float), do: %{"type" => "number"}
  def json_schema(:boolean), do: %{"type" => "boolean"}
  def json_schema({:list, t}), do: %{"type" => "array", "items" => json_schema(t)}
  def json_schema({:map, t}), do: %{"type" => "object", "additionalProperties" => json_schema(t)}
  def json_schema({:enum, values}), do: %{"enum" => Enum.map(values, &wire_literal/1)}
  def json_schema({:optional, t}), do: %{"anyOf" => [json_schema(t), %{"type" => "null"}]}

  def json_schema(module) when is_atom(module) do
    fields = module.__signature__(:outputs)
    required = for {name, type, _} <- fields, not match?({:optional, _}, type), do: "#{name}"
    properties = Map.new(fields, fn {name, type, _} -> {"#{name}", json_schema(type)} end)
    schema = %{"type" => "object", "properties" => properties, "additionalProperties" => false}
    if required == [], do: schema, else: Map.put(schema, "required", required)
  end

  @doc false
  # The typespec of a value of the type.
  @spec typespec(t) :: Macro.t()
  def typespec(:string), do: quote(do: String.t())
  def typespec(:integer), do: quote(do: integer())
  def typespec(:float), do: quote(do: float())
  def typespec(:boolean), do: quote(do: boolean())
  def typespec({:list, t}), do: quote(do: [unquote(typespec(t))])
  def typespec({:map, t}), do: quote(do: %{optional(String.t()) => unquote(typespec(t))})
  def typespec({:optional, t}), do: quote(do: unquote(typespec(t)) | nil)

  def typespec({:enum, values}) do
    values
    |> Enum.map(fn
      value when is_binary(value) -> quote(do: String.t())
      value -> value
    end)
    |> Enum.uniq()
    |> Enum.reduce(&quote(do: unquote(&2) | unquote(&1)))
  end

  def typespec(module) when is_atom(module), do: quote(do: unquote(module).t())

  ## Values from the worker

  @doc false
  # A signature module's struct from the worker's string-keyed map; `fields` are its
  # `__signature__(:cast)`: [{name, "name", type}].
  @spec cast_fields(module, [{atom, String.t(), t}], map, String.t()) ::
          {:ok, struct} | {:error, Error.t()}
  def cast_fields(module, fields, map, root) do
    {:ok, struct_of(module, fields, map, [root])}
  catch
    {:bad_value, at, expected, got} -> {:error, cast_error(at, expected, got)}
  end

  # `path`: where the value is, as a list of segments, innermost first; made into
  # text only for an error (this runs on every result).
  defp cast!(:string, value, _path) when is_binary(value), do: value
  defp cast!(:integer, value, _path) when is_integer(value), do: value
  defp cast!(:float, value, _path) when is_float(value), do: value
  defp cast!(:float, value, _path) when is_integer(value), do: value * 1.0
  defp cast!(:boolean, value, _path) when is_boolean(value), do: value
  defp cast!({:optional, _}, nil, _path), do: nil
  defp cast!({:optional, type}, value, path), do: cast!(type, value, path)
  defp cast!({:list, type}, value, path) when is_list(value), do: cast_list(type, value, path, 0)

  defp cast!({:map, type}, value, path) when is_map(value),
    do: Map.new(value, fn {key, item} -> {key, cast!(type, item, [{:key, key} | path])} end)

  defp cast!({:enum, values} = type, value, path) do
    case Enum.find(values, :none, &(wire_literal(&1) === value)) do
      :none -> throw({:bad_value, path, type, value})
      found -> found
    end
  end

  defp cast!(module, value, path) when is_atom(module) and is_map(value) and not is_struct(value),
    do: struct_of(module, module.__signature__(:cast), value, path)

  defp cast!(type, value, path), do: throw({:bad_value, path, type, value})

  defp cast_list(_type, [], _path, _i), do: []

  defp cast_list(type, [item | rest], path, i),
    do: [cast!(type, item, [{:index, i} | path]) | cast_list(type, rest, path, i + 1)]

  # Every field of the struct is set (a missing optional one to nil), so the map is
  # built whole, without struct/2's checks.
  defp struct_of(module, fields, map, path) do
    pairs =
      for {name, key, type} <- fields do
        case map do
          %{^key => value} -> {name, cast!(type, value, [{:key, key} | path])}
          _ when is_tuple(type) and elem(type, 0) == :optional -> {name, nil}
          _ -> throw({:bad_value, [{:key, key} | path], type, :missing})
        end
      end

    :maps.from_list([{:__struct__, module} | pairs])
  end

  defp path_text(path) do
    path
    |> Enum.reverse()
    |> Enum.map_join(fn
      {:key, key} -> ".#{key}"
      {:index, i} -> "[#{i}]"
      root -> root
    end)
  end

  defp cast_error(path, type, got) do
    what = if got == :missing, do: "nothing", else: inspect(got, limit: 10, printable_limit: 200)
    path = path_text(path)

    Error.new(
      :output_parse,
      "output_cast",
      "#{path}: expected #{describe(type)}, got #{what}",
      %{"path" => path, "expected" => describe(type)}
    )
  end

  @doc false
  # The type as words, for messages.
  @spec describe(t) :: String.t()
  def describe(:string), do: "a string"
  def describe(:integer), do: "an integer"
  def describe(:float), do: "a number"
  def describe(:boolean), do: "a boolean"
  def describe({:list, t}), do: "a list of (#{describe(t)})"
  def describe({:map, t}), do: "a map of strings to (#{describe(t)})"
  def describe({:optional, t}), do: "nil or #{describe(t)}"
  def describe({:enum, values}), do: "one of " <> Enum.map_join(values, ", ", &inspect/1)
  def describe(module) when is_atom(module), do: "a #{inspect(module)} map"

  ## Values to the worker

  @doc false
  # An input value as the worker takes it: structs of signature modules (objects)
  # become maps, atoms of enums their names.
  @spec dump(term) :: term
  def dump(%module{} = struct) do
    if function_exported?(module, :__signature__, 1),
      do: struct |> Map.from_struct() |> Map.new(fn {k, v} -> {Atom.to_string(k), dump(v)} end),
      else: struct
  end

  def dump(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, dump(v)} end)
  def dump(list) when is_list(list), do: Enum.map(list, &dump/1)
  def dump(value), do: value
end
