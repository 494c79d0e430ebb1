defmodule PortBridge.Schema do
  @moduledoc false
  # The options of every public entry point, declared once: checked up front (an
  # unknown key or a value of the wrong type is an ArgumentError that names the
  # option, the function and what is valid) and documented from the same
  # declaration (docs/1 in each @doc). Modelled on NimbleOptions' ideas (a keyword
  # schema, generated docs), written here because the package may not add a Hex
  # dependency.
  #
  # A schema is a keyword list `key: spec`, spec a keyword list of:
  #   * `:type` - see type/0 (default :any)
  #   * `:required` - the key must be given (default false)
  #   * `:default` - documented, and applied by `validate!(opts, schema, where,
  #     defaults: true)`: the one place a default is written
  #   * `:default_doc` - the default said in words, when it is not a value
  #   * `:doc` - the text of the option, or `false`: an internal key the engine
  #     passes between its own layers (accepted, never documented or suggested)
  #
  # `nil` is the same as leaving an optional key out: callers often forward
  # `opts[:key]`. Validation returns the options unchanged, or, with `defaults: true`,
  # with the schema's defaults in place of the keys left out.

  @type type ::
          :any
          | :boolean
          | :atom
          | :string
          | :map
          | :keyword_list
          | :integer
          | :pos_integer
          | :non_neg_integer
          | :number
          | :timeout
          | :mfa
          | {:fun, arity | [arity]}
          | {:in, [term]}
          | {:list, type}
          | {:or, [type]}
          | {:keyword, t}
  @type t :: keyword(keyword)

  @doc false
  # Raises ArgumentError unless `opts` fits `schema`; `where` names the entry point
  # ("PortBridge.request/4"). Returns `opts`; with `defaults: true`, `opts` without
  # nil values and with the schema's `:default`s for the keys left out.
  @spec validate!(term, t, String.t(), keyword) :: keyword
  def validate!(opts, schema, where, how \\ [])

  def validate!(opts, schema, where, defaults: true) do
    opts = validate!(opts, schema, where)
    Keyword.merge(defaults(schema), Enum.reject(opts, &is_nil(elem(&1, 1))))
  end

  def validate!(opts, schema, where, []) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "the options of #{where} must be a keyword list, got: #{inspect(opts, limit: 10)}"
    end

    # Runs on every request: plain list lookups, no string built unless it raises.
    Enum.each(opts, fn {key, value} ->
      case :lists.keyfind(key, 1, schema) do
        {^key, spec} -> check_value!(key, value, spec, where)
        false -> raise ArgumentError, unknown_message(key, schema, where)
      end
    end)

    Enum.each(schema, fn {key, spec} ->
      if :lists.keyfind(:required, 1, spec) == {:required, true} and
           Keyword.get(opts, key) == nil do
        raise ArgumentError, "#{where} needs the option #{inspect(key)}: #{doc_text(spec)}"
      end
    end)

    opts
  end

  defp check_value!(_key, nil, _spec, _where), do: :ok

  defp check_value!(key, value, spec, where) do
    type =
      case :lists.keyfind(:type, 1, spec) do
        {:type, type} -> type
        false -> :any
      end

    # A nested {:keyword, schema} raises its own, more precise, message.
    unless valid?(type, value, {key, where}) do
      raise ArgumentError,
            "invalid value for the option #{inspect(key)} of #{where}: expected " <>
              "#{describe(type)}, got: #{inspect(value, limit: 10, printable_limit: 100)}"
    end
  end

  defp valid?(:any, _value, _where), do: true
  defp valid?(:boolean, value, _where), do: is_boolean(value)
  defp valid?(:atom, value, _where), do: is_atom(value)
  defp valid?(:string, value, _where), do: is_binary(value)
  defp valid?(:map, value, _where), do: is_map(value)
  defp valid?(:keyword_list, value, _where), do: Keyword.keyword?(value)
  defp valid?(:integer, value, _where), do: is_integer(value)
  defp valid?(:pos_integer, value, _where), do: is_integer(value) and value > 0
  defp valid?(:non_neg_integer, value, _where), do: is_integer(value) and value >= 0
  defp valid?(:number, value, _where), do: is_number(value)

  defp valid?(:timeout, value, _where),
    do: value == :infinity or (is_integer(value) and value > 0)

  defp valid?(:mfa, {m, f, a}, _where), do: is_atom(m) and is_atom(f) and is_list(a)
  defp valid?(:mfa, _value, _where), do: false

  defp valid?({:fun, arities}, value, _where),
    do: Enum.any?(List.wrap(arities), &is_function(value, &1))

  defp valid?({:in, values}, value, _where), do: value in values

  defp valid?({:list, type}, value, where),
    do: is_list(value) and Enum.all?(value, &valid?(type, &1, where))

  defp valid?({:or, types}, value, where), do: Enum.any?(types, &valid?(&1, value, where))

  # `at`: {key, where}, made into text only for a nested schema's message (this runs
  # on every request: no inspect/1 on the way).
  defp valid?({:keyword, schema}, value, {key, where}) do
    Keyword.keyword?(value) and
      validate!(value, schema, "the option #{inspect(key)} of #{where}") == value
  end

  defp describe(:any), do: "any term"
  defp describe(:boolean), do: "a boolean"
  defp describe(:atom), do: "an atom"
  defp describe(:string), do: "a string"
  defp describe(:map), do: "a map"
  defp describe(:keyword_list), do: "a keyword list"
  defp describe(:integer), do: "an integer"
  defp describe(:pos_integer), do: "a positive integer"
  defp describe(:non_neg_integer), do: "a non-negative integer"
  defp describe(:number), do: "a number"
  defp describe(:timeout), do: "a positive integer (ms) or :infinity"
  defp describe(:mfa), do: "{module, function, args}"

  defp describe({:fun, arities}),
    do: "a function of arity " <> Enum.map_join(List.wrap(arities), " or ", &to_string/1)

  defp describe({:in, values}), do: "one of " <> Enum.map_join(values, ", ", &inspect/1)
  defp describe({:list, type}), do: "a list of (#{describe(type)})"
  defp describe({:or, types}), do: Enum.map_join(types, " or ", &describe/1)
  defp describe({:keyword, schema}), do: "a keyword list of #{inspect(visible_keys(schema))}"

  defp unknown_message(key, schema, where) do
    valid = visible_keys(schema)

    suggestion =
      case closest(key, valid) do
        nil -> ""
        close -> " (did you mean #{inspect(close)}?)"
      end

    "unknown option #{inspect(key)} for #{where}#{suggestion}; valid options: " <>
      Enum.map_join(valid, ", ", &inspect/1)
  end

  defp closest(key, valid) do
    name = Atom.to_string(key)

    valid
    |> Enum.map(&{String.jaro_distance(name, Atom.to_string(&1)), &1})
    |> Enum.filter(fn {distance, _} -> distance >= 0.8 end)
    |> Enum.max_by(&elem(&1, 0), fn -> {0, nil} end)
    |> elem(1)
  end

  @doc false
  # The keys a caller may give (internal ones left out).
  @spec visible_keys(t) :: [atom]
  def visible_keys(schema), do: for({key, spec} <- schema, spec[:doc] != false, do: key)

  @doc false
  # Every key of the schema, internal ones included.
  @spec keys(t) :: [atom]
  def keys(schema), do: Keyword.keys(schema)

  @doc false
  # The `:default`s the schema declares, as a keyword list.
  @spec defaults(t) :: keyword
  def defaults(schema),
    do: for({key, spec} <- schema, Keyword.has_key?(spec, :default), do: {key, spec[:default]})

  @doc false
  # The schema without `keys`.
  @spec drop(t, [atom]) :: t
  def drop(schema, keys), do: Keyword.drop(schema, keys)

  @doc false
  # The options' documentation: a Markdown list, one item per documented key.
  @spec docs(t) :: String.t()
  def docs(schema) do
    # Every schema is documented at compile time: a type the checks do not know is
    # a compile error here, not a FunctionClauseError at a caller's first use.
    for {key, spec} <- schema, do: known_type!(key, Keyword.get(spec, :type, :any))

    for {key, spec} <- schema, spec[:doc] != false, into: "" do
      text = String.replace(doc_text(spec), "\n", "\n    ")
      "  * `#{inspect(key)}` - " <> text <> required_or_default(spec) <> "\n"
    end
  end

  @scalars [:any, :boolean, :atom, :string, :map, :keyword_list, :integer, :pos_integer] ++
             [:non_neg_integer, :number, :timeout, :mfa]

  defp known_type!(_key, type) when type in @scalars, do: :ok
  defp known_type!(_key, {:fun, arities}) when is_integer(arities) or is_list(arities), do: :ok
  defp known_type!(_key, {:in, values}) when is_list(values), do: :ok
  defp known_type!(key, {:list, type}), do: known_type!(key, type)

  defp known_type!(key, {:or, types}) when is_list(types),
    do: Enum.each(types, &known_type!(key, &1))

  defp known_type!(_key, {:keyword, schema}) do
    _ = docs(schema)
    :ok
  end

  defp known_type!(key, type),
    do:
      raise(
        ArgumentError,
        "unknown type #{inspect(type)} for #{inspect(key)} in an option schema"
      )

  defp doc_text(spec),
    do: Keyword.get(spec, :doc, "") |> String.trim() |> String.trim_trailing(".")

  defp required_or_default(spec) do
    cond do
      spec[:required] -> ". Required."
      Keyword.has_key?(spec, :default_doc) -> ". Default: #{spec[:default_doc]}."
      Keyword.has_key?(spec, :default) -> ". Default: `#{inspect(spec[:default])}`."
      true -> "."
    end
  end
end
