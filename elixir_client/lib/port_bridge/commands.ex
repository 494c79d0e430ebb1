defmodule PortBridge.Commands do
  @moduledoc """
  Elixir functions for the commands of your own Python modules (`bridge.sdk`'s
  `@command`, exposed by the worker's operator with `--expose`), generated from a
  `describe` snapshot checked into your application.

      # once, and whenever the Python side changes (writes priv/port_bridge/commands.json):
      #   mix port_bridge.commands --expose mathcmds

      defmodule MyApp.Py do
        use PortBridge.Commands, expose: ["mathcmds"]
      end

      {:ok, 3} = MyApp.Py.Mathcmds.add(MyApp.Math, 1, b: 2)

  Each exposed module becomes a module (`mathcmds` -> `MyApp.Py.Mathcmds`), each of
  its commands a function with a `!` variant. A command's required arguments are
  the function's parameters, in the order of the Python function's; its optional
  ones are options (`b: 2`), beside the request options of `PortBridge.request/4`
  (`:timeout`, `:session_id`...). An argument whose name is a request option's is
  given in `args: %{"timeout" => ...}`. The `@doc` is the Python docstring with the
  arguments' types and defaults, the `@spec` comes from the argument schemas.

  Options of `use`:

    * `:expose` - the namespaces (the exposed modules' last names, or what `--expose
      MODULE=NAMESPACE` named them). Required.
    * `:snapshot` - the snapshot's path from the project's root (default
      `"priv/port_bridge/commands.json"`). Read at compile time: a regenerated
      snapshot recompiles the module.

  ## A snapshot that no longer matches

  The first call of a generated function to a target asks that target's worker
  for its `describe` and compares the commands of these namespaces (names,
  arguments, `cpu_bound`) with the snapshot; a mismatch is an error that says what
  changed and how to regenerate, never a call the Python side would read otherwise.
  A match is remembered for the target (`:persistent_term`), so later calls pay one
  lookup. `check/1` runs the comparison at once: call it where your application
  starts, after the pool, to fail at start:

      {:ok, _} = MyApp.Py.check(MyApp.Math)
  """

  alias PortBridge.{Call, Error, JSONSchema, Options, Schema}
  alias PortBridge.Commands.Snapshot

  # Elixir's own words, which a Python name cannot be as a function or variable.
  @reserved ~w(do end fn when and or not in nil true false catch rescue after else)a

  @doc false
  defmacro __using__(opts) do
    {opts, _} = Code.eval_quoted(opts, [], __CALLER__)
    namespaces = Keyword.get(opts, :expose) || compile_error!(__CALLER__, ":expose is required")
    path = Path.expand(Keyword.get(opts, :snapshot, "priv/port_bridge/commands.json"))

    snapshot =
      if File.regular?(path),
        do: Snapshot.read!(path),
        else:
          compile_error!(
            __CALLER__,
            "no commands snapshot at #{path}: run mix port_bridge.commands " <>
              Enum.map_join(namespaces, " ", &"--expose #{&1}")
          )

    for namespace <- namespaces, namespace not in (snapshot["namespaces"] || []) do
      compile_error!(
        __CALLER__,
        "#{path} has no namespace #{inspect(namespace)} (it has #{inspect(snapshot["namespaces"])}): " <>
          "run mix port_bridge.commands with --expose #{namespace}"
      )
    end

    commands = Snapshot.of_namespaces(snapshot["commands"], namespaces)
    parent = __CALLER__.module

    modules =
      for namespace <- namespaces do
        module = Module.concat(parent, Macro.camelize(namespace))

        entries =
          for {name, entry} <- commands, String.starts_with?(name, namespace <> "."), do: entry

        functions =
          Enum.map(Enum.sort_by(entries, & &1["name"]), &function(&1, parent, module, __CALLER__))

        quote do
          defmodule unquote(module) do
            @moduledoc unquote(
                         "The commands of the exposed Python module `#{namespace}` (`#{inspect(parent)}`)."
                       )
            unquote_splicing(functions)
          end
        end
      end

    quote do
      @external_resource unquote(path)

      @doc false
      def __commands__, do: unquote(Macro.escape(%{namespaces: namespaces, commands: commands}))

      @doc """
      Compares the snapshot these functions were generated from with what `target`'s
      worker describes: `{:ok, target}`, or an error that names what changed.
      """
      @spec check(GenServer.server()) :: {:ok, term} | {:error, PortBridge.Error.t()}
      def check(target), do: PortBridge.Commands.check(__MODULE__, target)

      unquote_splicing(modules)
    end
  end

  # One command: `name(target, required..., opts \\ [])` and its `!` variant.
  defp function(entry, parent, module, env) do
    [_namespace, fun] = String.split(entry["name"], ".", parts: 2)
    name = String.to_atom(fun)

    if name in @reserved,
      do: compile_error!(env, "#{entry["name"]}: #{name} cannot name an Elixir function")

    args = entry["args"]
    properties = Map.get(args, "properties", %{})
    required = Map.get(args, "required", [])
    params = Enum.map(required, &Macro.var(param(&1), nil))
    specs = Enum.map(required, &JSONSchema.typespec(properties[&1]))
    request_keys = Schema.keys(Options.request_schema())

    {clashing, optional} =
      JSONSchema.options(args, required)
      |> Enum.split_with(fn {key, _} -> key in request_keys end)

    extra = [
      args: [
        type: :map,
        doc: "arguments by name (string keys), for those whose name is a request option's"
      ]
    ]

    schema = optional ++ extra
    where = "#{inspect(module)}.#{name}/#{length(required) + 2}"

    pairs =
      Enum.map(Enum.zip(required, params), fn {key, var} ->
        quote(do: {unquote(key), unquote(var)})
      end)

    doc = """
    #{entry["description"]}

    The command `#{entry["name"]}`#{if entry["cpu_bound"], do: " (CPU-bound: best served by an `:exclusive` pool)", else: ""}.
    #{arguments_doc(required, properties)}
    #{if optional == [], do: "", else: "Options (its optional arguments):\n\n" <> Schema.docs(optional)}
    #{if clashing == [], do: "", else: "Given in `args:` (their names are request options'): " <> Enum.map_join(clashing, ", ", &"`#{elem(&1, 0)}`") <> "\n"}
    And the request options of `PortBridge.request/4`.
    """

    quote do
      @doc unquote(doc)
      @spec unquote(name)(GenServer.server(), unquote_splicing(specs), keyword) ::
              {:ok, term} | {:error, PortBridge.Error.t()}
      def unquote(name)(target, unquote_splicing(params), opts \\ []) do
        PortBridge.Commands.call(
          unquote(parent),
          target,
          unquote(entry["name"]),
          Map.new([unquote_splicing(pairs)]),
          opts,
          unquote(Macro.escape(schema)),
          unquote(where)
        )
      end

      @doc unquote(
             "Like `#{name}/#{length(required) + 2}`, but returns the result or raises the `PortBridge.Error`."
           )
      @spec unquote(:"#{name}!")(GenServer.server(), unquote_splicing(specs), keyword) :: term
      def unquote(:"#{name}!")(target, unquote_splicing(params), opts \\ []) do
        case unquote(name)(target, unquote_splicing(params), opts) do
          {:ok, result} -> result
          {:error, error} -> raise error
        end
      end
    end
  end

  defp param(name) do
    atom = String.to_atom(name)
    if atom in @reserved, do: String.to_atom(name <> "_"), else: atom
  end

  defp arguments_doc([], _properties), do: ""

  defp arguments_doc(required, properties) do
    "\nArguments:\n\n" <>
      Enum.map_join(required, "\n", fn key ->
        text = JSONSchema.doc(properties[key])
        type = JSONSchema.option_type(properties[key]) |> inspect()
        "  * `#{key}` - #{if text == "", do: type, else: text <> " (#{type})"}"
      end) <> "\n"
  end

  defp compile_error!(env, message),
    do: raise(CompileError, file: env.file, line: env.line, description: message)

  ## At run time

  @doc false
  # A generated function's call: the snapshot checked against the target once, the
  # optional arguments taken from `opts`, the rest request options.
  @spec call(module, GenServer.server(), String.t(), map, keyword, Schema.t(), String.t()) ::
          {:ok, term} | {:error, Error.t()}
  def call(parent, target, command, args, opts, schema, where) do
    Schema.validate!(opts, schema ++ Options.request_schema(), where)
    {given, request_opts} = Keyword.split(opts, Keyword.keys(schema))
    {extra, given} = Keyword.pop(given, :args, %{})

    args =
      Map.merge(Map.merge(args, Map.new(given, fn {k, v} -> {Atom.to_string(k), v} end)), extra)

    # The request options were checked above, with the command's own: the call is
    # built from them as they are (Call.new/5), not checked again.
    with {:ok, _} <- checked(parent, target),
         do: target |> Call.new(command, args, request_opts, where) |> Call.run()
  end

  defp checked(parent, target) do
    key = {__MODULE__, parent, target}

    # A stubbed target (PortBridge.Test) is the test's own worker: nothing to compare.
    if :persistent_term.get(key, false) or PortBridge.Test.lookup(target) do
      {:ok, target}
    else
      with {:ok, _} = ok <- check(parent, target) do
        :persistent_term.put(key, true)
        ok
      end
    end
  end

  @doc false
  @spec check(module, GenServer.server()) :: {:ok, term} | {:error, Error.t()}
  def check(parent, target) do
    %{namespaces: namespaces, commands: expected} = parent.__commands__()

    with {:ok, %{"commands" => live}} <- PortBridge.request(target, "describe") do
      case Snapshot.differences(expected, live, namespaces) do
        [] ->
          {:ok, target}

        changes ->
          {:error,
           Error.new(
             :validation,
             "stale_commands_snapshot",
             "#{inspect(parent)} was generated from a snapshot of #{Enum.join(namespaces, ", ")} " <>
               "that no longer matches the worker's describe: #{Enum.join(changes, "; ")}. " <>
               "Run mix port_bridge.commands " <>
               Enum.map_join(namespaces, " ", &"--expose #{&1}") <> " and recompile",
             %{"changes" => changes}
           )}
      end
    end
  end
end
