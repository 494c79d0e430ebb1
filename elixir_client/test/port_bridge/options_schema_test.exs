defmodule PortBridge.OptionsSchemaTest do
  # Every public entry point checks its options against one schema before doing
  # anything, and documents them from that schema. No worker is needed: the checks
  # come before a target is even looked up.
  use ExUnit.Case, async: true

  alias PortBridge.{DSPy, Options, Pool, Schema, Worker}

  @target :no_such_worker

  test "a misspelt request option is an ArgumentError naming it and the valid ones" do
    error =
      assert_raise ArgumentError, fn ->
        PortBridge.request(@target, "ping", %{}, timout: 5)
      end

    assert error.message =~
             "unknown option :timout for PortBridge.request/4 (did you mean :timeout?); " <>
               "valid options: :session_id, :timeout, :on_event, :meta, :callbacks, :retry, " <>
               ":circuit, :pool_timeout"

    # The keys the engine passes between its own layers are accepted, never offered.
    refute error.message =~ ":deadline"
    refute error.message =~ ":pool,"
  end

  test "types are checked up front, with what was expected" do
    for {opts, message} <- [
          {[timeout: -5],
           "the option :timeout of PortBridge.request/4: expected a positive integer (ms) or :infinity, got: -5"},
          {[session_id: 42],
           "the option :session_id of PortBridge.request/4: expected a string, got: 42"},
          {[on_event: fn _, _ -> :ok end], "expected a function of arity 1"},
          {[meta: [trace_id: "t"]], "the option :meta of PortBridge.request/4: expected a map"},
          {[retry: :yes],
           "the option :retry of PortBridge.request/4: expected a boolean or a keyword list"},
          {[retry: [max_attempts: 0]],
           "the option :max_attempts of the :retry option: expected a positive integer, got: 0"},
          {[retry: [attempts: 2]], "unknown option :attempts for the :retry option"},
          {[circuit: [threshold: "5"]],
           "the option :threshold of the :circuit option: expected a positive integer"},
          {[pool_timeout: 0], "the option :pool_timeout of PortBridge.request/4"},
          {:not_a_list, "the options of PortBridge.request/4 must be a keyword list"}
        ] do
      error = assert_raise ArgumentError, fn -> PortBridge.request(@target, "ping", %{}, opts) end
      assert error.message =~ message
    end
  end

  test "nil is the same as leaving an option out" do
    assert {:error, %PortBridge.Error{code: "not_running"}} =
             PortBridge.request(@target, "ping", %{},
               session_id: nil,
               on_event: nil,
               timeout: 1_000
             )
  end

  test "a request's deadline is fixed by the client, never given as an option" do
    assert_raise ArgumentError, ~r/unknown option :deadline for PortBridge.request\/4/, fn ->
      PortBridge.request(@target, "ping", %{}, deadline: System.monotonic_time(:millisecond))
    end
  end

  test "async_request and stream take no :retry or :circuit, and check before sending" do
    assert_raise ArgumentError, ~r/unknown option :retry for PortBridge.async_request\/4/, fn ->
      PortBridge.async_request(@target, "ping", %{}, retry: true)
    end

    # Checked when the stream is made, not when it is first enumerated.
    assert_raise ArgumentError, ~r/unknown option :circuit for PortBridge.stream\/4/, fn ->
      PortBridge.stream(@target, "ping", %{}, circuit: true)
    end

    assert_raise ArgumentError, ~r/option :timeout of PortBridge.Worker.request\/4/, fn ->
      Worker.request(@target, "ping", %{}, timeout: "1s")
    end

    assert_raise ArgumentError,
                 ~r/unknown option :retry for PortBridge.Pool.async_request\/4/,
                 fn ->
                   Pool.async_request(@target, "ping", %{}, retry: true)
                 end
  end

  test "DSPy functions take their command's arguments and the request options" do
    assert_raise ArgumentError,
                 ~r/unknown option :temprature for PortBridge.DSPy.configure_lm\/2 \(did you mean :temperature\?\); valid options: :model, .*:api_key, .*:timeout_s, :session_id, :timeout/,
                 fn -> DSPy.configure_lm(@target, model: "offline", temprature: 0.5) end

    assert_raise ArgumentError,
                 ~r/unknown option :program_id for PortBridge.DSPy.execute_program\/4/,
                 fn ->
                   DSPy.execute_program(@target, "qa", %{}, program_id: "other")
                 end

    assert_raise ArgumentError,
                 ~r/the option :timeout of PortBridge.DSPy.execute_program\/4/,
                 fn ->
                   DSPy.execute_program!(@target, "qa", %{}, timeout: :never)
                 end

    assert_raise ArgumentError, ~r/evaluate_program\/3 needs the option :devset/, fn ->
      DSPy.evaluate_program(@target, "qa", metric: "exact_match")
    end

    assert_raise ArgumentError,
                 ~r/unknown option :reward for PortBridge.DSPy.create_program\/2/,
                 fn ->
                   DSPy.create_program(@target, signature: "q -> a", reward: fn _ -> 1 end)
                 end
  end

  test "start options: unknown keys and wrong types fail start_link, naming them" do
    assert_raise ArgumentError,
                 ~r/unknown option :ready_timout for PortBridge.Worker.start\/1 \(did you mean :ready_timeout\?\)/,
                 fn ->
                   Worker.start(ready_timout: 5)
                 end

    assert_raise ArgumentError,
                 ~r/the option :respawn of PortBridge.Worker.start_link\/1: expected a boolean, got: "yes"/,
                 fn ->
                   Worker.start_link(respawn: "yes")
                 end

    assert_raise ArgumentError,
                 ~r/the option :on_ready of PortBridge.Worker.start_link\/1: expected \{module, function, args\}/,
                 fn ->
                   Worker.start_link(on_ready: fn -> [] end)
                 end

    assert_raise ArgumentError,
                 ~r/the option :format of PortBridge.Pool.start_link\/1: expected one of :json, :msgpack, got: :xml/,
                 fn ->
                   Pool.start_link(name: :schema_test_pool, format: :xml)
                 end

    assert_raise ArgumentError, ~r/PortBridge.Pool.start_link\/1 needs the option :name/, fn ->
      Pool.start_link(size: 1)
    end

    assert_raise ArgumentError,
                 ~r/the option :worker_args of PortBridge.Pool.start_link\/1: expected a list of \(a string\)/,
                 fn ->
                   Pool.start_link(name: :schema_test_pool, worker_args: [:debug])
                 end

    assert_raise ArgumentError,
                 ~r/unknown option :replica for PortBridge.Cluster.start_link\/1 \(did you mean :replicas\?\)/,
                 fn -> PortBridge.Cluster.start_link(name: :schema_test_cluster, replica: 2) end

    assert_raise ArgumentError,
                 ~r/the option :pool of PortBridge.Cluster.start_link\/1: expected a keyword list/,
                 fn ->
                   PortBridge.Cluster.start_link(name: :schema_test_cluster, pool: %{size: 2})
                 end

    assert_raise ArgumentError,
                 ~r/unknown option :timout for PortBridge.Cluster.request\/4/,
                 fn ->
                   PortBridge.Cluster.request(:schema_test_cluster, "ping", %{}, timout: 1)
                 end
  end

  test "a schema naming a type the checks do not know does not compile (docs/1 checks it)" do
    assert_raise ArgumentError, ~r/unknown type :list for :env/, fn ->
      Schema.docs(env: [type: {:or, [:map, :list]}, doc: "x"])
    end

    # Both forms of :env, as the docs say.
    assert Options.spawn_opts(python: "/bin/sh", env: [{"A", "b"}]).env == [{~c"A", ~c"b"}]
    assert Options.spawn_opts(python: "/bin/sh", env: %{"A" => false}).env == [{~c"A", false}]
  end

  test "the documented options are the schema's, every one of them" do
    docs = function_docs(PortBridge, :request, 4)

    for key <- Schema.visible_keys(Options.request_schema()) do
      assert docs =~ "* `#{inspect(key)}` - ",
             "#{inspect(key)} is not in PortBridge.request/4's doc"
    end

    refute docs =~ "`:deadline`"
    assert function_docs(DSPy, :configure_lm, 2) =~ "* `:model` - a DSPy model string"
    assert function_docs(DSPy, :configure_lm, 2) =~ "Required."
    assert module_doc(PortBridge.Worker) =~ "* `:forward_logs` - "
    assert module_doc(PortBridge.Pool) =~ "* `:strategy` - "

    assert module_doc(PortBridge.Retry) =~
             "* `:max_attempts` - attempts in all, the first included. Default: `3`."
  end

  test "the README's option tables list exactly the options the schemas declare" do
    [spawn, pool, per_call] =
      Path.expand("../../README.md", __DIR__)
      |> File.read!()
      |> String.split("## Configuration")
      |> Enum.at(1)
      |> String.split("\n## ")
      |> hd()
      |> String.split(~r/\n\n+/)
      |> Enum.filter(&String.starts_with?(&1, "| option |"))
      |> Enum.map(&table_keys/1)

    spawn_keys = Schema.visible_keys(Options.spawn_schema())
    assert spawn == MapSet.new(spawn_keys)
    assert per_call == MapSet.new(Schema.visible_keys(Options.request_schema()))
    # The pool's own options: what its generated docs list, less the spawn options.
    assert pool == MapSet.difference(doc_keys(module_doc(Pool)), spawn)
  end

  # The options a Markdown table's first column names (`:a`, or `:a`, `:b`).
  defp table_keys(table) do
    for line <- String.split(table, "\n"),
        [first | _] = String.split(String.trim_leading(line, "|"), "|"),
        [_, name] <- Regex.scan(~r/`:(\w+)`/, first),
        into: MapSet.new(),
        do: String.to_atom(name)
  end

  # The options a generated doc lists (`  * `:key` - ...`).
  defp doc_keys(doc) do
    for [_, name] <- Regex.scan(~r/^  \* `:(\w+)` - /m, doc),
        into: MapSet.new(),
        do: String.to_atom(name)
  end

  defp function_docs(module, name, arity) do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(module)
    [%{"en" => doc}] = for {{:function, ^name, ^arity}, _, _, doc, _} <- docs, do: doc
    doc
  end

  defp module_doc(module) do
    {:docs_v1, _, _, _, %{"en" => doc}, _, _} = Code.fetch_docs(module)
    doc
  end
end
