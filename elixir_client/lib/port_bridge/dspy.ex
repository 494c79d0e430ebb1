defmodule PortBridge.DSPy do
  @moduledoc """
  DSPy programs from Elixir, through a `PortBridge.Worker` or a `PortBridge.Pool`.

  On a pool, what builds a scope's state (`configure_lm`, and the programs made by
  `create_program`, `import_program` and `optimize_program`, as `export_program`
  returns them) is recorded in the pool's `PortBridge.Records` when it succeeds, and
  replayed on every fresh Python before any request reaches it: a session survives
  the death of its Python process. The global scope is kept the same on every
  Worker of the pool. Only requests made through this module are recorded.

  Every function takes the `target` (a worker or pool, by pid or name) first, and
  options that are either the command's arguments (listed per function) or request
  options (`:session_id`, `:timeout`, `:on_event`, `:meta`, `:retry`, `:circuit`,
  `:pool_timeout`, `:callbacks`; see `PortBridge.request/4`). Results are
  `{:ok, map}` with the worker's string keys, or `{:error, %PortBridge.Error{}}`.

  Elixir functions the worker calls back (`PortBridge.Callbacks`): `tools: %{"search"
  => fun}` (an agent's tools, each `fun.(args)` with the tool's arguments),
  `metric: fun` for `optimize_program/3` and `evaluate_program/3` (`fun.(example,
  prediction)`, or `fun.(args)`; returns a number or boolean, or `%{"score" => x,
  "feedback" => "..."}`), `reward: fun` when running a `BestOfN` or `Refine` program
  (`fun.(inputs, prediction)`; returns a number).

  A program lives in a scope: the session named by `:session_id`, or the global
  scope without one. An LM configured in a session is that session's; a session
  without its own LM uses the global one. The `"offline"` model is a built-in
  deterministic LM (no network, no key) for demos and tests.

  ```elixir
  {:ok, worker} = PortBridge.Worker.start_link(python: "../.venv/bin/python")
  alias PortBridge.DSPy

  {:ok, %{"model" => "offline"}} = DSPy.configure_lm(worker, model: "offline", session_id: "demo")

  {:ok, %{"program_id" => "qa"}} =
    DSPy.create_program(worker,
      signature: "question -> answer",
      module: "ChainOfThought",
      program_id: "qa",
      session_id: "demo"
    )

  {:ok, %{"outputs" => %{"answer" => answer, "reasoning" => _}}} =
    DSPy.execute_program(worker, "qa", %{question: "What is 2 + 2?"}, session_id: "demo")

  true = is_binary(answer)

  # Streaming: chunk events as the LM writes, then the result.
  [{:chunk, %{"field" => _, "text" => _}} | _] =
    worker |> DSPy.stream("qa", %{question: "Why?"}, session_id: "demo") |> Enum.to_list()

  # Few-shot optimisation, then export and import elsewhere.
  {:ok, %{"demos" => 2}} =
    DSPy.optimize_program(worker, "qa",
      optimizer: "LabeledFewShot",
      trainset: [
        %{inputs: %{question: "1 + 1?"}, outputs: %{answer: "2"}},
        %{inputs: %{question: "2 + 3?"}, outputs: %{answer: "5"}}
      ],
      session_id: "demo"
    )

  {:ok, program} = DSPy.export_program(worker, "qa", session_id: "demo")
  {:ok, %{"program_id" => "qa", "demos" => 2}} = DSPy.import_program(worker, program, session_id: "other")

  GenServer.stop(worker)
  ```

  Typed signatures are best written as modules (`PortBridge.DSPy.Signature`: Elixir
  types, results cast into a struct), and programs too (`PortBridge.DSPy.Program`: a
  definition created wherever it runs). `create_program/2` also takes a signature as
  DSPy's string form (`"question -> answer: int"`) or as a map: `%{inputs:
  %{question: %{type: "str", desc: "..."}}, outputs: %{answer: %{type: "int"}}}`,
  with types `str`, `int`, `float`, `bool`, `list[T]`, `dict[str, T]`,
  `optional[T]`, `%{literal: [...]}` and nested `%{object: %{...}}`; a list of
  `%{name: ..., type: ..., desc: ...}` instead of a map keeps the fields' order
  (Elixir's maps sort their keys, and DSPy's prompts follow the fields' order).

  The arguments of every function are the worker's own (its `describe`, compiled in
  from `priv/dspy_commands.json`): their names, types, defaults and docs below are
  the worker's, checked here before anything is sent.
  """

  alias PortBridge.{Call, Error, Schema}
  alias PortBridge.DSPy.{Advice, Arguments}

  # The arguments of each command come from the worker's own declarations
  # (priv/dspy_commands.json, generated from `describe` by scripts/sync_protocol.sh):
  # their names, types, defaults and docs. What is written here is only what reads
  # better in Elixir terms, the arguments a function takes as parameters, and the
  # options that exist only in Elixir (functions the worker calls back).
  @signature_doc """
  a `PortBridge.DSPy.Signature` module, DSPy's string form `"question, context -> answer"`
  (a field without a type is a string; `"question -> answer: int"`), or a typed map (see
  the module doc)
  """
  @tools_doc """
  the tools a `"ReAct"` agent may call (also with `base_module: "ReAct"`): a list of
  `%{name: "add", description: "...", parameters: %{...}, fun: &MyApp.add/1}`,
  `parameters` a JSON Schema object or a keyword list of `PortBridge.DSPy.Signature`
  types (`[a: :integer, b: :integer]`). Give the same list to `execute_program/4`,
  which calls each `fun` with the tool's arguments (a map with string keys)
  """
  @metric_doc """
  `"exact_match"` (the default), a named metric, an LM judge declared as data
  (`%{judge: %{signature: ..., inputs: %{judge_input => "example.<field>" |
  "prediction.<output>"}, score: output}}`), or an Elixir function
  `fun.(example, prediction)` returning a number, a boolean or `%{"score" => x,
  "feedback" => "..."}`
  """
  @metric [
    type: {:or, [Arguments.type("optimize_program", "metric"), {:fun, [1, 2]}]},
    doc: @metric_doc
  ]

  # Elixir functions the worker calls back while a program runs.
  @run_callbacks [
    tools: [
      type: {:or, [{:list, :map}, :map]},
      doc: """
      the tools of a `"ReAct"` program, as given to `create_program/2` (each with its
      `:fun`), or `%{"name" => fun}`; each `fun.(args)` gets the tool's arguments
      """
    ],
    reward: [
      type: {:fun, [1, 2]},
      doc:
        "a `BestOfN` or `Refine` program's reward: `fun.(inputs, prediction)` returning a number"
    ]
  ]

  # An API key, by value or by reference (PortBridge.Secret checks which).
  @api_key [
    type: :any,
    doc:
      "the provider's key: `{:system, \"VAR\"}`, a zero-arity function, `{module, function, args}` " <>
        "(resolved only into the frame that carries it, see `PortBridge.Secret`), or a string"
  ]

  @lm_args Arguments.schema("configure_lm",
             override: [
               model: [
                 doc: "a DSPy model string such as `\"openai/gpt-4o-mini\"`, or `\"offline\"`"
               ],
               api_key: @api_key
             ]
           )
  @create_program_args Arguments.schema("create_program",
                         override: [
                           signature: [type: {:or, [:string, :map, :atom]}, doc: @signature_doc],
                           program_id: [default_doc: "generated"],
                           tools: [doc: @tools_doc],
                           reward_fn: [
                             doc:
                               "`BestOfN`, `Refine`: `%{callback: \"reward\"}`; run the program with `reward: fun`"
                           ]
                         ]
                       )
  @execute_args Arguments.schema("execute_program",
                  except: ~w(program_id inputs stream),
                  extra: @run_callbacks
                )
  @optimize_args Arguments.schema("optimize_program",
                   except: ~w(program_id),
                   override: [
                     metric: @metric,
                     options: [
                       doc: """
                       the optimizer's options; each optimizer takes some of them
                       (`PortBridge.request(target, "describe")` lists which, under
                       `"backends" => %{"dspy" => %{"optimizers" => ...}}`)
                       """
                     ]
                   ],
                   extra: @run_callbacks
                 )
  @evaluate_args Arguments.schema("evaluate_program",
                   except: ~w(program_id),
                   override: [metric: @metric],
                   extra: @run_callbacks
                 )
  @import_args Arguments.schema("import_program",
                 except: ~w(program),
                 override: [program_id: [default_doc: "the document's"]]
               )
  @embedder_args Arguments.schema("configure_embedder", override: [api_key: @api_key])
  @create_index_args Arguments.schema("create_index",
                       except: ~w(corpus),
                       override: [index_id: [default_doc: "generated"]]
                     )
  @retrieve_args Arguments.schema("retrieve",
                   except: ~w(index_id query),
                   override: [k: [default_doc: "the index's"]]
                 )
  @lm_usage_args Arguments.schema("lm_usage")
  @by_program_id Arguments.schema("get_program", except: ~w(program_id))

  @type target :: GenServer.server()
  @type result :: {:ok, map} | {:error, Error.t()}

  @doc """
  Sets the LM of a session (with `:session_id`) or the global one.

  Arguments:

  #{Schema.docs(@lm_args)}
  """
  @spec configure_lm(target, keyword) :: result
  def configure_lm(target, opts) do
    call(target, "configure_lm", opts, @lm_args, "configure_lm/2")
  end

  @doc """
  Builds a program from a signature. Returns its description, `"program_id"`
  included.

  Arguments:

  #{Schema.docs(@create_program_args)}
  """
  @spec create_program(target, keyword) :: result
  def create_program(target, opts) do
    call(target, "create_program", opts, @create_program_args, "create_program/2")
  end

  @doc """
  Runs a program on one set of inputs (a map with one value per input field).
  Returns `%{"outputs" => %{...}, "usage" => %{...}, "model" => ..., "program_id" => ...}`.

  Options, besides the request options:

  #{Schema.docs(@execute_args)}
  """
  @spec execute_program(target, String.t(), map, keyword) :: result
  def execute_program(target, program_id, inputs, opts \\ []),
    do: execute_as("PortBridge.DSPy.execute_program/4", target, program_id, inputs, opts)

  @doc false
  # execute_program/4 on behalf of another public function (a program module's
  # run/3), which ArgumentErrors name.
  @spec execute_as(String.t(), target, String.t(), map, keyword) :: result
  def execute_as(where, target, program_id, inputs, opts) do
    Arguments.inputs!(inputs, where)

    call(target, "execute_program", opts, @execute_args, where,
      program_id: program_id,
      inputs: inputs
    )
  end

  @doc """
  Runs a program and streams its output: a lazy stream of `{:chunk, %{"field",
  "text", "predictor", "last"}}` as the LM writes, then `{:ok, result}` (as
  `execute_program/4` returns) or `{:error, error}`. Other events come as
  `{:event, name, data}`. Halting the stream early cancels the run. Options as
  `execute_program/4` (`:retry` and `:circuit` do not apply to a stream).
  """
  @spec stream(target, String.t(), map, keyword) :: Enumerable.t()
  def stream(target, program_id, inputs, opts \\ []),
    do: stream_as("PortBridge.DSPy.stream/4", target, program_id, inputs, opts)

  @doc false
  # stream/4 on behalf of another public function (a program module's stream/3).
  @spec stream_as(String.t(), target, String.t(), map, keyword) :: Enumerable.t()
  def stream_as(where, target, program_id, inputs, opts) do
    Arguments.inputs!(inputs, where)
    {args, request_opts} = Arguments.split!(opts, @execute_args, "execute_program", where)
    args = Map.merge(args, %{"program_id" => program_id, "inputs" => inputs, "stream" => true})

    target
    |> Call.new("execute_program", args, Keyword.drop(request_opts, [:retry, :circuit]), where)
    |> Call.stream()
    |> Stream.flat_map(fn
      {:event, "chunk", data} -> [{:chunk, data}]
      # An LM call is telemetry ([:port_bridge, :lm, :call]), not an item.
      {:event, "lm_call", _data} -> []
      {:error, _} = error -> [Advice.elixir(error)]
      other -> [other]
    end)
  end

  @map_args [
    max_concurrency: [
      type: :pos_integer,
      default_doc: "what the target runs at once (1 with `:session_id`)",
      doc: "items in flight at once"
    ]
  ]

  @map_schema @map_args ++ @execute_args ++ PortBridge.Options.request_schema()

  @doc """
  Runs a program over many inputs: a lazy stream of `{:ok, result}` (as
  `execute_program/4` returns) or `{:error, %PortBridge.Error{}}`, one per input, in
  input order. Inputs are read as the stream is consumed, and run as many at once
  as the target can (a pool's Workers times each Python's `--max-concurrency`, a
  cluster's live nodes times that); a failed item never stops the batch, and
  halting the stream (`Enum.take/2`, ...) cancels the items in flight.
  `PortBridge.DSPy.Batch` has the details and the telemetry events (progress).

  ```elixir
  {:ok, _} = DSPy.create_program(MyApp.Tickets, signature: "ticket -> category", program_id: "triage")

  ["The app crashes", "Please refund me", "How do I export?"]
  |> Stream.map(&%{ticket: &1})
  |> then(&DSPy.map(MyApp.Tickets, "triage", &1, timeout: 30_000))
  |> Enum.each(fn
    {:ok, %{"outputs" => %{"category" => category}}} -> IO.puts(category)
    {:error, error} -> IO.puts("failed: " <> Exception.message(error))
  end)
  ```

  Options: `execute_program/4`'s (`:timeout` is each item's), and

  #{Schema.docs(@map_args)}
  """
  @spec map(target, String.t(), Enumerable.t(), keyword) :: Enumerable.t()
  def map(target, program_id, inputs, opts \\ []) do
    Schema.validate!(opts, @map_schema, "PortBridge.DSPy.map/4")

    {batch_opts, opts} = Keyword.split(opts, Keyword.keys(@map_args))
    batch_opts = Keyword.put(batch_opts, :session_id, opts[:session_id])

    PortBridge.DSPy.Batch.stream(target, program_id, inputs, batch_opts, fn inputs ->
      execute_program(target, program_id, inputs, opts)
    end)
  end

  @doc """
  Optimises a program from labelled examples; `progress` events go to `:on_event`.
  Returns `%{"program_id", "demos", "bootstrapped", ...}`.

  Arguments:

  #{Schema.docs(@optimize_args)}
  """
  @spec optimize_program(target, String.t(), keyword) :: result
  def optimize_program(target, program_id, opts) do
    call(
      target,
      "optimize_program",
      opts,
      @optimize_args,
      "optimize_program/3",
      program_id: program_id
    )
  end

  @doc """
  A program as a JSON document (its definition and learned state: instructions,
  demos); never LM settings or keys. `import_program/3` rebuilds it, on this worker
  or any other.
  """
  @spec export_program(target, String.t(), keyword) :: result
  def export_program(target, program_id, opts \\ []) do
    with {:ok, %{"program" => program}} <- by_id(target, "export_program", program_id, opts),
         do: {:ok, program}
  end

  @doc """
  Rebuilds a program from an `export_program/3` document. Returns the program's
  description.

  Arguments:

  #{Schema.docs(@import_args)}
  """
  @spec import_program(target, map, keyword) :: result
  def import_program(target, program, opts \\ []) when is_map(program) do
    call(target, "import_program", opts, @import_args, "import_program/3", program: program)
  end

  @doc "The programs of the scope, as a list of descriptions."
  @spec list_programs(target, keyword) :: {:ok, [map]} | {:error, Error.t()}
  def list_programs(target, opts \\ []) do
    with {:ok, %{"programs" => programs}} <-
           call(target, "list_programs", opts, [], "list_programs/2"),
         do: {:ok, programs}
  end

  @doc "One program's description (module, signature, demos, optimizations)."
  @spec get_program(target, String.t(), keyword) :: result
  def get_program(target, program_id, opts \\ []),
    do: by_id(target, "get_program", program_id, opts)

  @doc "Forgets a program."
  @spec delete_program(target, String.t(), keyword) :: result
  def delete_program(target, program_id, opts \\ []),
    do: by_id(target, "delete_program", program_id, opts)

  @doc """
  Token usage per model of the scope's calls.

  Arguments:

  #{Schema.docs(@lm_usage_args)}
  """
  @spec lm_usage(target, keyword) :: result
  def lm_usage(target, opts \\ []),
    do: call(target, "lm_usage", opts, @lm_usage_args, "lm_usage/2")

  @doc """
  Ends a session at once: its queued and running requests are cancelled, its
  programs and LM freed (and a pool forgets what it recorded to rebuild it).
  """
  @spec end_session(target, String.t(), keyword) :: result
  def end_session(target, session_id, opts \\ []) do
    call(target, "end_session", [session_id: session_id] ++ opts, [], "end_session/3",
      session_id: session_id
    )
  end

  @doc """
  Scores a program over a labelled devset, as `dspy.Evaluate`; `progress` events
  (`%{"done", "total", "errors", "score"}`) go to `:on_event`. Returns `%{"score"
  => percent, "results" => [%{"index", "score", "outputs" | "error"}], "count",
  "errors", "usage", ...}`.

  Arguments:

  #{Schema.docs(@evaluate_args)}
  """
  @spec evaluate_program(target, String.t(), keyword) :: result
  def evaluate_program(target, program_id, opts) do
    call(
      target,
      "evaluate_program",
      opts,
      @evaluate_args,
      "evaluate_program/3",
      program_id: program_id
    )
  end

  @doc """
  Sets the embedding model of a session (with `:session_id`) or the global one,
  used by `create_index/3`.

  Arguments:

  #{Schema.docs(@embedder_args)}
  """
  @spec configure_embedder(target, keyword) :: result
  def configure_embedder(target, opts) do
    call(target, "configure_embedder", opts, @embedder_args, "configure_embedder/2")
  end

  @doc """
  Embeds a corpus (a list of passages) with the scope's embedder into an index held
  in the scope; `progress` events (`%{"embedded", "total"}`) go to `:on_event`.
  Returns `%{"index_id", "count", "dimensions", "bytes", ...}`. Bounds (passages,
  characters, bytes per index and per worker) are in `describe`.

  Arguments:

  #{Schema.docs(@create_index_args)}

  A program declared with `retrieve: %{index_id: id, query: "question", context:
  "context", k: 3}` in `create_program/2` searches the index with its `query` input
  and fills its `context` input (not sent by the caller) before the module runs;
  `execute_program/4` then also returns `"retrieved" => %{"passages", "indices",
  "scores"}`.

  On a pool, the embedder and the index (its corpus included) are recorded and
  rebuilt on a fresh Python by embedding the corpus again.
  """
  @spec create_index(target, [String.t()], keyword) :: result
  def create_index(target, corpus, opts \\ []) when is_list(corpus) do
    call(target, "create_index", opts, @create_index_args, "create_index/3", corpus: corpus)
  end

  @doc """
  The top passages of an index for a query: `{:ok, %{"passages" => [...], "indices"
  => [...], "scores" => [...]}}`.

  Arguments:

  #{Schema.docs(@retrieve_args)}
  """
  @spec retrieve(target, String.t(), String.t(), keyword) :: result
  def retrieve(target, index_id, query, opts \\ []) do
    call(target, "retrieve", opts, @retrieve_args, "retrieve/4", index_id: index_id, query: query)
  end

  @doc "The retrieval indexes of the scope, as a list of descriptions."
  @spec list_indexes(target, keyword) :: {:ok, [map]} | {:error, Error.t()}
  def list_indexes(target, opts \\ []) do
    with {:ok, %{"indexes" => indexes}} <-
           call(target, "list_indexes", opts, [], "list_indexes/2"),
         do: {:ok, indexes}
  end

  @doc "Forgets a retrieval index (its memory is freed)."
  @spec delete_index(target, String.t(), keyword) :: result
  def delete_index(target, index_id, opts \\ []) do
    call(target, "delete_index", opts, [], "delete_index/3", index_id: index_id)
  end

  ## The ! variants: the result, or the PortBridge.Error raised

  @doc "Like `configure_lm/2`, but returns the result or raises the `PortBridge.Error`."
  @spec configure_lm!(target, keyword) :: map
  def configure_lm!(target, opts), do: unwrap!(configure_lm(target, opts))

  @doc "Like `create_program/2`, but returns the result or raises the `PortBridge.Error`."
  @spec create_program!(target, keyword) :: map
  def create_program!(target, opts), do: unwrap!(create_program(target, opts))

  @doc "Like `execute_program/4`, but returns the result or raises the `PortBridge.Error`."
  @spec execute_program!(target, String.t(), map, keyword) :: map
  def execute_program!(target, program_id, inputs, opts \\ []),
    do: unwrap!(execute_program(target, program_id, inputs, opts))

  @doc "Like `optimize_program/3`, but returns the result or raises the `PortBridge.Error`."
  @spec optimize_program!(target, String.t(), keyword) :: map
  def optimize_program!(target, program_id, opts),
    do: unwrap!(optimize_program(target, program_id, opts))

  @doc "Like `export_program/3`, but returns the document or raises the `PortBridge.Error`."
  @spec export_program!(target, String.t(), keyword) :: map
  def export_program!(target, program_id, opts \\ []),
    do: unwrap!(export_program(target, program_id, opts))

  @doc "Like `import_program/3`, but returns the result or raises the `PortBridge.Error`."
  @spec import_program!(target, map, keyword) :: map
  def import_program!(target, program, opts \\ []),
    do: unwrap!(import_program(target, program, opts))

  @doc "Like `list_programs/2`, but returns the list or raises the `PortBridge.Error`."
  @spec list_programs!(target, keyword) :: [map]
  def list_programs!(target, opts \\ []), do: unwrap!(list_programs(target, opts))

  @doc "Like `get_program/3`, but returns the result or raises the `PortBridge.Error`."
  @spec get_program!(target, String.t(), keyword) :: map
  def get_program!(target, program_id, opts \\ []),
    do: unwrap!(get_program(target, program_id, opts))

  @doc "Like `delete_program/3`, but returns the result or raises the `PortBridge.Error`."
  @spec delete_program!(target, String.t(), keyword) :: map
  def delete_program!(target, program_id, opts \\ []),
    do: unwrap!(delete_program(target, program_id, opts))

  @doc "Like `lm_usage/2`, but returns the result or raises the `PortBridge.Error`."
  @spec lm_usage!(target, keyword) :: map
  def lm_usage!(target, opts \\ []), do: unwrap!(lm_usage(target, opts))

  @doc "Like `end_session/3`, but returns the result or raises the `PortBridge.Error`."
  @spec end_session!(target, String.t(), keyword) :: map
  def end_session!(target, session_id, opts \\ []),
    do: unwrap!(end_session(target, session_id, opts))

  @doc "Like `evaluate_program/3`, but returns the result or raises the `PortBridge.Error`."
  @spec evaluate_program!(target, String.t(), keyword) :: map
  def evaluate_program!(target, program_id, opts),
    do: unwrap!(evaluate_program(target, program_id, opts))

  @doc "Like `configure_embedder/2`, but returns the result or raises the `PortBridge.Error`."
  @spec configure_embedder!(target, keyword) :: map
  def configure_embedder!(target, opts), do: unwrap!(configure_embedder(target, opts))

  @doc "Like `create_index/3`, but returns the result or raises the `PortBridge.Error`."
  @spec create_index!(target, [String.t()], keyword) :: map
  def create_index!(target, corpus, opts \\ []), do: unwrap!(create_index(target, corpus, opts))

  @doc "Like `retrieve/4`, but returns the result or raises the `PortBridge.Error`."
  @spec retrieve!(target, String.t(), String.t(), keyword) :: map
  def retrieve!(target, index_id, query, opts \\ []),
    do: unwrap!(retrieve(target, index_id, query, opts))

  @doc "Like `list_indexes/2`, but returns the list or raises the `PortBridge.Error`."
  @spec list_indexes!(target, keyword) :: [map]
  def list_indexes!(target, opts \\ []), do: unwrap!(list_indexes(target, opts))

  @doc "Like `delete_index/3`, but returns the result or raises the `PortBridge.Error`."
  @spec delete_index!(target, String.t(), keyword) :: map
  def delete_index!(target, index_id, opts \\ []),
    do: unwrap!(delete_index(target, index_id, opts))

  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, %Error{} = error}), do: raise(error)

  defp by_id(target, command, program_id, opts) do
    call(target, command, opts, @by_program_id, "#{command}/3", program_id: program_id)
  end

  # `opts`: the caller's options, checked against the command's arguments (`args`)
  # and the request options; `positional`: the arguments given as parameters.
  # `function`: "name/arity" of a function of this module, or the full name of the
  # public function that called on its behalf.
  defp call(target, command, opts, args, function, positional \\ []) do
    where = if String.contains?(function, "."), do: function, else: "PortBridge.DSPy." <> function
    {args, request_opts} = Arguments.split!(opts, args, command, where)

    args =
      Map.merge(args, Map.new(positional, fn {key, value} -> {Atom.to_string(key), value} end))

    # Through the recorder: on a pool, what builds a session's state is recorded so
    # that a fresh Python gets it back.
    target
    |> Call.new(command, args, request_opts, where)
    |> PortBridge.DSPy.Recorder.run()
    |> Advice.elixir()
  end
end
