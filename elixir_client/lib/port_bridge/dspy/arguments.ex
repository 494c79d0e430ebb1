defmodule PortBridge.DSPy.Arguments do
  @moduledoc false
  # The arguments of the DSPy commands, as the worker declares them: read at compile
  # time from priv/dspy_commands.json (a copy of protocol/dspy_commands.json, which
  # scripts/sync_protocol.sh generates from a real worker's `describe`). PortBridge.DSPy
  # builds each function's options, their checks and their docs from here, so an
  # argument is declared once, in the worker (bridge/backends/dspy/schemas.py), and
  # cannot drift: the Python suite fails while the file differs from `describe`, the
  # Elixir suite while the copy differs from the file or from a live worker.

  alias PortBridge.JSONSchema

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
end
