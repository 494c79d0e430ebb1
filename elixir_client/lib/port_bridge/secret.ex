defmodule PortBridge.Secret do
  @moduledoc """
  A secret given by reference (an LM provider's `api_key:`), resolved only while
  the frame that carries it to the Python worker is built.

      DSPy.configure_lm(MyApp.Python, model: "openai/gpt-4o-mini", api_key: {:system, "OPENAI_API_KEY"})
      DSPy.configure_lm(MyApp.Python, model: "openai/gpt-4o-mini", api_key: &MyApp.Vault.openai_key/0)
      DSPy.configure_lm(MyApp.Python, model: "openai/gpt-4o-mini", api_key: {MyApp.Vault, :fetch, ["openai"]})

  The forms: `{:system, "VAR"}` (the environment variable, read each time),
  a zero-arity function, or `{module, function, args}`; each must give a non-empty
  string. What the client keeps (a pool's records that rebuild a session on a fresh
  Python, a cluster's copies on other nodes) is the reference, never the key: a key
  that rotates is read anew on each rebuild, and no process state or ETS table
  holds it. A plain string is accepted too, and then is what is kept (in memory, on
  the nodes that hold the session's records); prefer a reference. So is a function
  that closes over the value (`fn -> key end` keeps `key` in its environment): name
  a function instead (`&MyApp.Vault.openai_key/0`, an MFA). The reference is
  resolved on the node that runs the Python: a variable must be set there, a
  function's module loaded there.

  `inspect/2` (and so logs, crash reports, `:sys.get_status`) shows where the
  secret comes from, never its value: `#PortBridge.Secret<api_key: {:system,
  "OPENAI_API_KEY"}>`. An unset variable or a function that raises is a
  `validation` error naming the option and the reference, never the value (a
  raised exception is named by its module only: its message might hold the key).
  """

  alias PortBridge.Error

  @enforce_keys [:source, :option]
  defstruct [:source, :option]

  @type source :: {:system, String.t()} | (() -> String.t()) | mfa | {:value, String.t()}
  @type t :: %__MODULE__{source: source, option: atom}

  @doc """
  The secret for option `option` (an atom: `:api_key`), from what a caller gave:
  raises an `ArgumentError` that names the option for anything that is not a
  reference or a string (without showing it).
  """
  @spec new!(term, atom) :: t
  def new!(%__MODULE__{} = secret, _option), do: secret

  def new!({:system, var} = source, option) when is_binary(var) and var != "",
    do: %__MODULE__{source: source, option: option}

  def new!(fun, option) when is_function(fun, 0), do: %__MODULE__{source: fun, option: option}

  def new!({m, f, a} = source, option) when is_atom(m) and is_atom(f) and is_list(a),
    do: %__MODULE__{source: source, option: option}

  def new!(value, option) when is_binary(value) and value != "",
    do: %__MODULE__{source: {:value, value}, option: option}

  def new!(value, option) do
    raise ArgumentError,
          "#{inspect(option)} must be a string, {:system, \"VAR\"}, a zero-arity function " <>
            "or {module, function, args}; got #{shape(value)}"
  end

  @doc """
  The secret's value: `{:ok, string}`, or `{:error, %PortBridge.Error{}}` (category
  `validation`, code `secret_unavailable`) that names the option and the reference.
  """
  @spec resolve(t) :: {:ok, String.t()} | {:error, Error.t()}
  def resolve(%__MODULE__{source: {:value, value}}), do: {:ok, value}

  def resolve(%__MODULE__{source: {:system, var}} = secret) do
    case System.get_env(var) do
      nil -> unavailable(secret, "the environment variable #{var} is not set")
      "" -> unavailable(secret, "the environment variable #{var} is empty")
      value -> {:ok, value}
    end
  end

  def resolve(%__MODULE__{source: source} = secret) do
    case call(source) do
      value when is_binary(value) and value != "" -> {:ok, value}
      "" -> unavailable(secret, "#{describe(source)} returned an empty string")
      other -> unavailable(secret, "#{describe(source)} returned #{shape(other)}, not a string")
    end
  rescue
    exception ->
      unavailable(secret, "#{describe(source)} raised #{inspect(exception.__struct__)}")
  catch
    :exit, _ -> unavailable(secret, "#{describe(source)} exited")
    :throw, _ -> unavailable(secret, "#{describe(source)} threw")
  end

  defp call({m, f, a}), do: apply(m, f, a)
  defp call(fun), do: fun.()

  defp unavailable(%__MODULE__{option: option}, why) do
    {:error,
     Error.new(:validation, "secret_unavailable", "#{inspect(option)}: #{why}", %{
       "option" => Atom.to_string(option)
     })}
  end

  @doc """
  `term` with every secret in it (in maps, lists and tuples) replaced by its value:
  for the frame builder only, whose result goes to the Port and is dropped.
  """
  @spec reveal(term) :: {:ok, term} | {:error, Error.t()}
  def reveal(term) do
    {:ok, reveal!(term)}
  catch
    {__MODULE__, error} -> {:error, error}
  end

  defp reveal!(%__MODULE__{} = secret) do
    case resolve(secret) do
      {:ok, value} -> value
      {:error, error} -> throw({__MODULE__, error})
    end
  end

  defp reveal!(map) when is_map(map) and not is_struct(map),
    do: Map.new(map, fn {k, v} -> {k, reveal!(v)} end)

  defp reveal!(list) when is_list(list), do: Enum.map(list, &reveal!/1)
  defp reveal!(other), do: other

  @doc """
  A request's arguments with the secrets among their values resolved (the frame
  builder's: secrets are top-level arguments, such as `"api_key"`); the same map,
  untouched, when there are none.
  """
  @spec reveal_args(term) :: {:ok, term} | {:error, Error.t()}
  def reveal_args(args) when map_size(args) == 0, do: {:ok, args}

  def reveal_args(args) when is_map(args) do
    # (Every frame passes here: a plain walk of the values, no protocol dispatch.)
    if secret_among?(:maps.values(args)), do: reveal(args), else: {:ok, args}
  end

  def reveal_args(args), do: {:ok, args}

  defp secret_among?([%__MODULE__{} | _]), do: true
  defp secret_among?([_ | rest]), do: secret_among?(rest)
  defp secret_among?([]), do: false

  @doc "True when `term` holds a secret anywhere."
  @spec any?(term) :: boolean
  def any?(%__MODULE__{}), do: true

  def any?(map) when is_map(map) and not is_struct(map),
    do: Enum.any?(map, fn {_, v} -> any?(v) end)

  def any?(list) when is_list(list), do: Enum.any?(list, &any?/1)
  def any?(_other), do: false

  @doc """
  `term` with every secret (in maps, structs, lists and tuples) replaced by its
  `inspect/2` text, which never holds its value: for `format_status/1`, whose state
  `:sys.get_status/1` and crash reports show as it is.
  """
  @spec redact(term) :: term
  def redact(%__MODULE__{} = secret), do: inspect(secret)

  def redact(%{__struct__: module} = struct) do
    struct |> Map.from_struct() |> redact() |> Map.put(:__struct__, module)
  end

  def redact(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, redact(v)} end)
  def redact([head | tail]), do: [redact(head) | redact(tail)]

  def redact(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> redact() |> List.to_tuple()

  def redact(other), do: other

  @doc false
  # Where a secret comes from, in words that never include its value.
  @spec describe(source) :: String.t()
  def describe({:system, var}), do: "{:system, #{inspect(var)}}"
  def describe({:value, _}), do: "a string"
  def describe({m, f, a}), do: "#{inspect(m)}.#{f}/#{length(a)}"

  def describe(fun) when is_function(fun) do
    info = Function.info(fun)

    case info[:type] do
      :external -> "&#{inspect(info[:module])}.#{info[:name]}/0"
      _ -> "the function given"
    end
  end

  defp shape(value) when is_binary(value), do: "an empty string"
  defp shape(value) when is_list(value), do: "a list"
  defp shape(value) when is_map(value), do: "a map"
  defp shape(value) when is_tuple(value), do: "a tuple of #{tuple_size(value)}"
  defp shape(value) when is_atom(value), do: inspect(value)
  defp shape(value) when is_integer(value), do: "an integer"

  defp shape(value) when is_function(value),
    do: "a function of arity #{Function.info(value)[:arity]}"

  defp shape(_value), do: "a value of another type"

  defimpl Inspect do
    def inspect(%{source: source, option: option}, _opts) do
      "#PortBridge.Secret<#{option}: #{from(source)}>"
    end

    defp from({:value, _}), do: "**redacted**"
    defp from(source), do: PortBridge.Secret.describe(source)
  end
end
