defmodule PortBridge.JSONSchema do
  @moduledoc false
  # A worker's argument schemas (what `describe` reports: the subset of JSON Schema
  # that bridge/schema.py enforces) seen from Elixir, at compile time: the option
  # type PortBridge.Schema checks, the typespec a generated function declares, and
  # the line of docs that describes it. PortBridge.DSPy builds its options from
  # priv/dspy_commands.json through here, and `use PortBridge.Commands` its
  # functions from a describe snapshot.
  #
  # The worker checks every value in full (ranges, patterns, nested keys) and
  # answers a `validation` error; the client checks the shape it can see cheaply
  # (type, enum), which catches the programming mistakes before anything is sent.

  @typedoc "A decoded JSON Schema (string keys)."
  @type t :: map

  @doc false
  # The options of a command: one PortBridge.Schema entry per property of its args
  # schema not in `except` (the arguments a function takes as parameters), required
  # ones first, then by name (the file's decoded maps keep no order).
  @spec options(t, [String.t()]) :: PortBridge.Schema.t()
  def options(args_schema, except \\ []) do
    required = Map.get(args_schema, "required", [])

    args_schema
    |> Map.get("properties", %{})
    |> Map.drop(except)
    |> Enum.sort_by(fn {name, _} -> {name not in required, name} end)
    |> Enum.map(fn {name, schema} -> {String.to_atom(name), option(schema, name in required)} end)
  end

  defp option(schema, required?) do
    spec = [type: option_type(schema), doc: doc(schema)]
    spec = if required?, do: [{:required, true} | spec], else: spec

    case Map.fetch(schema, "default") do
      {:ok, default} -> spec ++ [default: default]
      :error -> spec
    end
  end

  @doc false
  # The PortBridge.Schema type a value of `schema` must have.
  @spec option_type(t) :: PortBridge.Schema.type()
  def option_type(%{"enum" => values}), do: {:in, values}
  def option_type(%{"const" => value}), do: {:in, [value]}
  def option_type(%{"anyOf" => schemas}), do: union(Enum.map(schemas, &option_type/1))

  def option_type(%{"type" => types} = schema) when is_list(types),
    do: union(Enum.map(types, &option_type(Map.put(schema, "type", &1))))

  def option_type(%{"type" => "string"}), do: :string
  def option_type(%{"type" => "integer"}), do: :integer
  def option_type(%{"type" => "number"}), do: :number
  def option_type(%{"type" => "boolean"}), do: :boolean
  def option_type(%{"type" => "object"}), do: :map
  def option_type(%{"type" => "array"} = schema), do: {:list, option_type(schema["items"] || %{})}
  def option_type(%{"type" => "null"}), do: {:in, [nil]}
  def option_type(_schema), do: :any

  defp union(types) do
    case Enum.uniq(types) do
      [type] -> type
      types -> if :any in types, do: :any, else: {:or, types}
    end
  end

  @doc false
  # The quoted typespec of a value of `schema`.
  @spec typespec(t) :: Macro.t()
  def typespec(%{"enum" => values}), do: values |> Enum.map(&literal_spec/1) |> spec_union()
  def typespec(%{"const" => value}), do: literal_spec(value)
  def typespec(%{"anyOf" => schemas}), do: schemas |> Enum.map(&typespec/1) |> spec_union()

  def typespec(%{"type" => types} = schema) when is_list(types),
    do: types |> Enum.map(&typespec(Map.put(schema, "type", &1))) |> spec_union()

  def typespec(%{"type" => "string"}), do: quote(do: String.t())
  def typespec(%{"type" => "integer"}), do: quote(do: integer())
  def typespec(%{"type" => "number"}), do: quote(do: number())
  def typespec(%{"type" => "boolean"}), do: quote(do: boolean())
  def typespec(%{"type" => "object"}), do: quote(do: map())
  def typespec(%{"type" => "null"}), do: nil

  def typespec(%{"type" => "array"} = schema) do
    item = typespec(schema["items"] || %{})
    quote(do: [unquote(item)])
  end

  def typespec(_schema), do: quote(do: term())

  defp literal_spec(value) when is_binary(value), do: quote(do: String.t())
  defp literal_spec(value) when is_integer(value) or is_atom(value), do: value
  defp literal_spec(value) when is_float(value), do: quote(do: float())
  defp literal_spec(_value), do: quote(do: term())

  defp spec_union(specs) do
    specs
    |> Enum.uniq()
    |> Enum.reduce(fn spec, acc -> quote(do: unquote(acc) | unquote(spec)) end)
  end

  @doc false
  # One line (or a few) of docs: the schema's description, then what the values
  # may be when the description does not say it.
  @spec doc(t) :: String.t()
  def doc(schema) do
    [Map.get(schema, "description"), constraint(schema)]
    |> Enum.reject(&(&1 in [nil, ""]))
    |> Enum.join("; ")
  end

  defp constraint(%{"enum" => values}),
    do: "one of " <> Enum.map_join(values, ", ", &"`#{inspect(&1)}`")

  defp constraint(%{"type" => type} = schema) when type in ["integer", "number"] do
    case {schema["minimum"], schema["maximum"]} do
      {nil, nil} -> nil
      {min, nil} -> "at least #{min}"
      {nil, max} -> "at most #{max}"
      {min, max} -> "#{min} to #{max}"
    end
  end

  defp constraint(%{"type" => "object", "properties" => properties})
       when map_size(properties) > 0,
       do: "a map with " <> keys(properties)

  defp constraint(%{"type" => "array", "items" => %{"properties" => properties}})
       when map_size(properties) > 0,
       do: "a list of maps with " <> keys(properties)

  defp constraint(%{"type" => "array", "items" => %{"type" => type}}) when is_binary(type),
    do: "a list of #{type}s"

  defp constraint(_schema), do: nil

  defp keys(properties),
    do: properties |> Map.keys() |> Enum.sort() |> Enum.map_join(", ", &"`#{&1}`")
end
