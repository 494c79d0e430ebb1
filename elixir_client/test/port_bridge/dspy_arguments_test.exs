defmodule PortBridge.DSPyArgumentsTest do
  # PortBridge.DSPy's options come from the worker's own declarations
  # (priv/dspy_commands.json, generated from `describe`): the file must match a live
  # worker, every command in it must have its function, and the options, their
  # checks and their docs must be the file's.
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy
  alias PortBridge.DSPy.Arguments

  # Each DSPy command and the function that sends it, with the arguments it takes
  # as parameters (and the one it sets itself).
  @functions %{
    "configure_lm" => {:configure_lm, 2, []},
    "create_program" => {:create_program, 2, []},
    "execute_program" => {:execute_program, 4, ~w(program_id inputs stream)},
    "list_programs" => {:list_programs, 2, []},
    "get_program" => {:get_program, 3, ~w(program_id)},
    "delete_program" => {:delete_program, 3, ~w(program_id)},
    "export_program" => {:export_program, 3, ~w(program_id)},
    "import_program" => {:import_program, 3, ~w(program)},
    "optimize_program" => {:optimize_program, 3, ~w(program_id)},
    "evaluate_program" => {:evaluate_program, 3, ~w(program_id)},
    "lm_usage" => {:lm_usage, 2, []},
    "configure_embedder" => {:configure_embedder, 2, []},
    "create_index" => {:create_index, 3, ~w(corpus)},
    "retrieve" => {:retrieve, 4, ~w(index_id query)},
    "list_indexes" => {:list_indexes, 2, []},
    "delete_index" => {:delete_index, 3, ~w(index_id)}
  }

  # Nothing reaches a target in these tests: the checks raise first.
  @target :no_such_target

  test "every DSPy command of the worker has its PortBridge.DSPy function and a ! variant" do
    Code.ensure_loaded!(DSPy)
    missing = Map.keys(Arguments.commands()) -- Map.keys(@functions)
    assert missing == [], "commands without a PortBridge.DSPy function: #{inspect(missing)}"

    for {_command, {name, arity, _}} <- @functions do
      assert function_exported?(DSPy, name, arity), "PortBridge.DSPy.#{name}/#{arity}"
      assert function_exported?(DSPy, :"#{name}!", arity), "PortBridge.DSPy.#{name}!/#{arity}"
    end
  end

  test "each function documents every argument of its command that it takes as an option" do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(DSPy)

    for {command, {name, arity, positional}} <- @functions do
      [doc] = for {{:function, ^name, ^arity}, _, _, %{"en" => doc}, _} <- docs, do: doc
      properties = Arguments.commands()[command]["args"]["properties"]

      for {arg, _schema} <- Map.drop(properties, positional) do
        assert doc =~ "`:#{arg}`", "#{name}/#{arity} does not document :#{arg} of #{command}"
      end
    end
  end

  test "a default, a description and a type come from the file" do
    lm = Arguments.schema("configure_lm")
    cache = Arguments.commands()["configure_lm"]["args"]["properties"]["cache"]
    assert lm[:cache][:default] == cache["default"]
    assert lm[:cache][:doc] =~ cache["description"]
    assert lm[:cache][:type] == :boolean
    assert lm[:model][:required]
    # An exposed dspy.Module class takes init, not a signature: the worker requires neither.
    refute Arguments.schema("create_program")[:signature][:required]
    assert Arguments.schema("create_program")[:init][:type] == :map

    assert_raise ArgumentError,
                 ~r/invalid value for the option :model .* expected a string/,
                 fn ->
                   DSPy.configure_lm(@target, model: 4)
                 end

    assert_raise ArgumentError, ~r/:adapter .* expected one of "chat", "json"/, fn ->
      DSPy.create_program(@target, signature: "q -> a", adapter: "yaml")
    end

    assert_raise ArgumentError, ~r/:k of PortBridge.DSPy.retrieve\/4: expected an integer/, fn ->
      DSPy.retrieve(@target, "idx", "query", k: "five")
    end
  end

  test "inputs given as a keyword list raise an ArgumentError that says how to write them" do
    for call <- [
          fn -> DSPy.execute_program(@target, "qa", question: "why?") end,
          fn -> DSPy.stream(@target, "qa", question: "why?") end
        ] do
      error = assert_raise ArgumentError, call
      assert error.message =~ "are a map with one value per input field"
      assert error.message =~ "Map.new(inputs)"
    end
  end
end

defmodule PortBridge.DSPyArgumentsLiveTest do
  use PortBridge.TestCase, async: true

  alias PortBridge.DSPy.Arguments

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  test "the file is what a live worker's describe says" do
    {:ok, worker} =
      PortBridge.Worker.start_link(dspy_worker_opts(worker_args: ["--backends", "dspy"]))

    {:ok, %{"commands" => commands}} = PortBridge.request(worker, "describe")
    GenServer.stop(worker)

    live = for {name, %{"backend" => "dspy"} = entry} <- commands, into: %{}, do: {name, entry}

    stale =
      for name <- Enum.uniq(Map.keys(live) ++ Map.keys(Arguments.commands())),
          live[name] != Arguments.commands()[name],
          do: name

    assert stale == [],
           "priv/dspy_commands.json differs from the worker's describe for #{inspect(stale)}: " <>
             "run scripts/sync_protocol.sh and commit protocol/dspy_commands.json with its priv/ copy"
  end
end
