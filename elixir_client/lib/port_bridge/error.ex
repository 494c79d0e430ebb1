defmodule PortBridge.Error do
  @moduledoc """
  Every failure a request can meet, as one struct (and exception).

      %PortBridge.Error{
        category: :timeout,            # a key of protocol/errors.json, as an atom
        code: "receive_timeout",       # a stable snake_case reason within the category
        message: "no reply within 100 ms; cancel was sent to the worker",
        severity: :high,               # from the table
        recovery: :backoff_retry,      # from the table: what a caller should do
        retryable: true,               # from the table
        details: %{"timeout_ms" => 100}
      }

  Errors from the worker keep the category and code it sent; the client adds its
  own in the same categories (`communication` when the Python process died or a
  port broke, `timeout` and `overloaded` for receive and pool timeouts,
  `initialization` when a worker never became ready).

  The category table is `protocol/errors.json`, the very file the Python worker
  loads. The package ships a byte-for-byte copy of it in `priv/errors.json` (the
  test suite checks they are equal; `scripts/sync_protocol.sh` refreshes it), read
  here at compile time and tracked with `@external_resource`, so editing it
  recompiles this module. `table/0` returns it.
  """

  @table_path PortBridge.ProtocolFile.path("errors.json")
  @external_resource @table_path
  @raw_table PortBridge.ProtocolFile.read!("errors.json")

  @table (for {name, row} <- @raw_table["categories"], into: %{} do
            {String.to_atom(name),
             %{
               severity: String.to_atom(row["severity"]),
               recovery: String.to_atom(row["recovery"]),
               retryable: row["retryable"] == true,
               description: row["description"]
             }}
          end)

  @wire_names Map.new(@table, fn {name, _} -> {Atom.to_string(name), name} end)
  @severities Enum.map(@raw_table["severities"], &String.to_atom/1)
  @recoveries Enum.map(Map.keys(@raw_table["recoveries"]), &String.to_atom/1)
  @fallback %{severity: :critical, recovery: :abandon, retryable: false, description: nil}

  defexception [:category, :code, :message, :severity, :recovery, :retryable, details: %{}]

  @type category :: atom | String.t()
  @type t :: %__MODULE__{
          category: category,
          code: String.t(),
          message: String.t(),
          severity: atom | String.t(),
          recovery: atom | String.t(),
          retryable: boolean,
          details: map
        }

  @doc """
  The category table of `protocol/errors.json`: category -> severity, recovery,
  retryable, description.
  """
  @spec table() :: %{atom => map}
  def table, do: @table

  @doc "The categories of the table."
  @spec categories() :: [atom]
  def categories, do: Map.keys(@table)

  @doc "The severities the table defines, lowest first."
  @spec severities() :: [atom]
  def severities, do: @severities

  @doc "The recovery strategies the table defines."
  @spec recoveries() :: [atom]
  def recoveries, do: @recoveries

  @doc "Where the table was read from at compile time."
  @spec table_path() :: String.t()
  def table_path, do: @table_path

  @doc """
  A client-side error of a category of the table; severity, recovery and
  retryability come from the table. Raises `ArgumentError` for an unknown category.
  """
  @spec new(atom, String.t(), String.t(), map) :: t
  def new(category, code, message, details \\ %{}) when is_atom(category) do
    row =
      Map.get(@table, category) ||
        raise ArgumentError, "unknown error category #{inspect(category)}; see #{@table_path}"

    %__MODULE__{
      category: category,
      code: code,
      message: message,
      severity: row.severity,
      recovery: row.recovery,
      retryable: row.retryable,
      details: details
    }
  end

  @doc """
  The error of a worker's reply (`"error"` map of a `success: false` reply).

  A category this client's table does not know (a newer worker) is kept as a
  string, with the severity, recovery and retryability the reply carries.
  The worker is not trusted: an error that is not a map with string `category`,
  `code` and `message` becomes a `protocol` error (`malformed_error`) that says
  what came, never an exception.
  """
  @spec from_wire(term) :: t
  def from_wire(%{"category" => wire_category, "code" => code, "message" => message} = error)
      when is_binary(wire_category) and is_binary(code) and is_binary(message) do
    {category, row} =
      case Map.fetch(@wire_names, wire_category) do
        {:ok, atom} -> {atom, Map.fetch!(@table, atom)}
        :error -> {wire_category, wire_row(error)}
      end

    %__MODULE__{
      category: category,
      code: code,
      message: PortBridge.Setup.Lookup.remedy(category, code, message),
      severity: row.severity,
      recovery: row.recovery,
      retryable: row.retryable,
      details: if(is_map(error["details"]), do: error["details"], else: %{})
    }
  end

  def from_wire(other) do
    new(:protocol, "malformed_error", "the worker sent an error reply of the wrong shape", %{
      "error" => inspect(other, limit: 10, printable_limit: 200)
    })
  end

  defp wire_row(error) do
    %{
      @fallback
      | severity: known_or_string(error["severity"], @severities) || @fallback.severity,
        recovery: known_or_string(error["recovery"], @recoveries) || @fallback.recovery,
        retryable: error["retryable"] == true
    }
  end

  # A value of the table's vocabulary as its atom, another string as it is; not a
  # string: nil (the fallback applies).
  defp known_or_string(value, known) when is_binary(value) do
    Enum.find(known, value, &(Atom.to_string(&1) == value))
  end

  defp known_or_string(_value, _known), do: nil

  @impl true
  @spec message(t) :: String.t()
  def message(%__MODULE__{category: category, code: code, message: message}) do
    "#{category}/#{code}: #{message}"
  end
end
