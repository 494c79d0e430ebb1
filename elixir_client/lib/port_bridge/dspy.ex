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

  Typed signatures are maps: `%{inputs: %{question: %{type: "str", desc: "..."}},
  outputs: %{answer: %{type: "int"}, confidence: %{type: "float"}}}`, with types
  `str`, `int`, `float`, `bool`, `list[T]`, `dict[str, T]`, `optional[T]`,
  `%{literal: [...]}` and nested `%{object: %{...}}` (see `describe` on a worker).
  """

  alias PortBridge.{Call, Error, Options, Schema}

  # The arguments of each command (sent to the worker, which checks their values
  # and answers a `validation` error), by function. Request options are added to
  # each (Options.request_schema/0).
  @lm_args [
    model: [
      required: true,
      doc: "a DSPy model string such as `\"openai/gpt-4o-mini\"`, or `\"offline\"`"
    ],
    api_key: [doc: "the provider's key; never echoed, logged or exported by the worker"],
    api_base: [doc: "the provider's base URL (an OpenAI-compatible server)"],
    temperature: [doc: "0 to 2"],
    max_tokens: [doc: "the longest answer, in tokens"],
    cache: [default: false, doc: "DSPy's response cache"],
    num_retries: [doc: "the LM client's own retries of a failed call (0 to 10)"],
    timeout_s: [doc: "the LM client's timeout per call, in seconds"]
  ]
  @create_program_args [
    signature: [
      required: true,
      doc: "`\"question, context -> answer\"` or a typed map, see the module doc"
    ],
    module: [default: "Predict", doc: "`\"Predict\"`, `\"ChainOfThought\"`, ... (see `describe`)"],
    program_id: [default_doc: "generated", doc: "the program's id in its scope"],
    instructions: [doc: "the signature's instructions"],
    adapter: [doc: "`\"chat\"`, `\"json\"` or `\"xml\"`"],
    retrieve: [
      doc: "retrieve -> generate: `%{index_id:, query:, context:, k:}`, see `create_index/3`"
    ],
    tools: [
      doc:
        "`module: \"ReAct\"` (or `base_module:`): the tools it may call, as a list of " <>
          "`%{name:, description:, parameters: <JSON Schema object>}`; run the program " <>
          "with `tools: %{\"name\" => fun}`"
    ],
    max_iters: [doc: "ReAct: at most this many tool calls (default 20)"],
    base_module: [
      doc:
        "`BestOfN`, `Refine`: the module run N times (`\"Predict\"`, `\"ChainOfThought\"`, `\"ReAct\"`)"
    ],
    N: [doc: "`BestOfN`, `Refine`: attempts"],
    reward_fn: [
      doc: "`BestOfN`, `Refine`: `%{callback: \"reward\"}`; run the program with `reward: fun`"
    ],
    threshold: [doc: "`BestOfN`, `Refine`: stop at the first reward at least this"],
    fail_count: [doc: "`BestOfN`, `Refine`: failed attempts allowed (default N)"],
    replace: [default: false, doc: "replace a program of the same id"]
  ]
  # Elixir functions the worker calls back while a program runs.
  @run_callbacks [
    tools: [doc: "`%{\"name\" => fun}`: an agent's tools, each `fun.(args)`"],
    reward: [
      doc:
        "a `BestOfN` or `Refine` program's reward: `fun.(inputs, prediction)` returning a number"
    ]
  ]
  @metric_doc """
  `"exact_match"` (the default), a named metric, an LM judge declared as data
  (`%{judge: %{signature: ..., inputs: %{judge_input => "example.<field>" |
  "prediction.<output>"}, score: output}}`), or an Elixir function
  `fun.(example, prediction)` returning a number, a boolean or `%{"score" => x,
  "feedback" => "..."}`
  """
  @optimize_args [
    optimizer: [
      required: true,
      doc: "`\"LabeledFewShot\"`, `\"BootstrapFewShot\"`, `\"MIPROv2\"`, ... (see `describe`)"
    ],
    trainset: [required: true, doc: "a list of `%{inputs: %{...}, outputs: %{...}}`"],
    valset: [doc: "as `:trainset`, for the optimizers that take one"],
    metric: [doc: @metric_doc],
    metric_fields: [doc: "the output fields the metric compares"],
    options: [
      doc: "the optimizer's options (`k`, `max_bootstrapped_demos`, `max_labeled_demos`, ...)"
    ],
    save_as: [doc: "keep the original and save the result under this id"],
    replace: [default: false, doc: "replace a program of the `:save_as` id"]
  ]
  @evaluate_args [
    devset: [required: true, doc: "a list of `%{inputs: %{...}, outputs: %{...}}`"],
    metric: [doc: @metric_doc],
    metric_fields: [doc: "the output fields the metric compares"],
    num_threads: [default: 1, doc: "examples run at once (1 to 32)"],
    max_errors: [doc: "failed examples after which the evaluation stops"],
    return_outputs: [default: true, doc: "each result carries its outputs"]
  ]
  @import_args [
    program_id: [default_doc: "the document's", doc: "the id to import it under"],
    replace: [default: false, doc: "replace a program of the same id"]
  ]
  @embedder_args [
    model: [
      required: true,
      doc: """
      a provider's embedding model through `dspy.Embedder`, such as
      `"openai/text-embedding-3-small"`, or `"offline"`: a built-in deterministic
      embedder, no network
      """
    ],
    api_key: [doc: "the provider's key; never echoed, logged or exported by the worker"],
    api_base: [doc: "the provider's base URL"],
    dimensions: [doc: "the vectors' dimensions, for the models that take it"],
    batch_size: [default: 200, doc: "texts per embedding call"],
    num_retries: [doc: "the client's own retries of a failed call"],
    timeout_s: [doc: "the client's timeout per call, in seconds"]
  ]
  @create_index_args [
    index_id: [default_doc: "generated", doc: "the index's id in its scope"],
    k: [default: 5, doc: "passages a search returns"],
    replace: [default: false, doc: "replace an index of the same id"]
  ]

  @request_schema Options.request_schema()

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

  #{Schema.docs(@run_callbacks)}
  """
  @spec execute_program(target, String.t(), map, keyword) :: result
  def execute_program(target, program_id, inputs, opts \\ []) do
    call(target, "execute_program", opts, @run_callbacks, "execute_program/4",
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
  def stream(target, program_id, inputs, opts \\ []) do
    {args, request_opts} = split!(opts, @run_callbacks, "stream/4")
    args = Map.merge(args, %{"program_id" => program_id, "inputs" => inputs, "stream" => true})

    target
    |> Call.new(
      "execute_program",
      args,
      Keyword.drop(request_opts, [:retry, :circuit]),
      "PortBridge.DSPy.stream/4"
    )
    |> Call.stream()
    |> Stream.map(fn
      {:event, "chunk", data} -> {:chunk, data}
      other -> other
    end)
  end

  @doc """
  Optimises a program from labelled examples; `progress` events go to `:on_event`.
  Returns `%{"program_id", "demos", "bootstrapped", ...}`.

  Arguments:

  #{Schema.docs(@optimize_args ++ @run_callbacks)}
  """
  @spec optimize_program(target, String.t(), keyword) :: result
  def optimize_program(target, program_id, opts) do
    call(
      target,
      "optimize_program",
      opts,
      @optimize_args ++ @run_callbacks,
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

  @lm_usage_args [reset: [default: false, doc: "zero the counters"]]

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

  #{Schema.docs(@evaluate_args ++ @run_callbacks)}
  """
  @spec evaluate_program(target, String.t(), keyword) :: result
  def evaluate_program(target, program_id, opts) do
    call(
      target,
      "evaluate_program",
      opts,
      @evaluate_args ++ @run_callbacks,
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

  @retrieve_args [k: [default_doc: "the index's", doc: "passages to return"]]

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
    call(target, command, opts, [], "#{command}/3", program_id: program_id)
  end

  # `opts`: the caller's options, checked against the command's arguments (`args`)
  # and the request options; `positional`: the arguments given as parameters.
  defp call(target, command, opts, args, function, positional \\ []) do
    {args, request_opts} = split!(opts, args, function)

    args =
      Map.merge(args, Map.new(positional, fn {key, value} -> {Atom.to_string(key), value} end))

    # Through the recorder: on a pool, what builds a session's state is recorded so
    # that a fresh Python gets it back.
    target
    |> Call.new(command, args, request_opts, "PortBridge.DSPy." <> function)
    |> PortBridge.DSPy.Recorder.run()
  end

  # Options are the command's arguments or request options; anything else is a
  # mistake, reported with the valid ones. Elixir functions given as `tools:`,
  # `metric:` or `reward:` become callbacks the worker calls back.
  defp split!(opts, arg_schema, function) do
    Schema.validate!(opts, arg_schema ++ @request_schema, "PortBridge.DSPy." <> function)
    opts = elixir_callbacks(opts)
    {args, request_opts} = Keyword.split(opts, Keyword.keys(arg_schema))
    {Map.new(args, fn {key, value} -> {Atom.to_string(key), value} end), request_opts}
  end

  # Elixir functions given as `tools:`, `metric:` or `reward:` become callbacks the
  # worker calls back (PortBridge.Callbacks), under the names the request declares:
  # a tool's own name, "metric" (the argument becomes {"callback": "metric"}),
  # "reward" (a BestOfN or Refine program created with reward_fn: {"callback": "reward"}).
  # A list of tools is create_program's declaration of a ReAct program's tools: an argument.
  defp elixir_callbacks(opts) do
    {tools, opts} = if is_list(opts[:tools]), do: {nil, opts}, else: Keyword.pop(opts, :tools)

    {reward, opts} = Keyword.pop(opts, :reward)

    {metric, opts} =
      case Keyword.fetch(opts, :metric) do
        {:ok, fun} when is_function(fun) ->
          {fun, Keyword.put(opts, :metric, %{"callback" => "metric"})}

        _ ->
          {nil, opts}
      end

    added =
      Map.merge(
        tools!(tools || %{}),
        Map.reject(
          %{"metric" => adapt(metric, "example"), "reward" => adapt(reward, "inputs")},
          &is_nil(elem(&1, 1))
        )
      )

    if added == %{},
      do: opts,
      else: Keyword.update(opts, :callbacks, added, &Map.merge(added, &1))
  end

  defp tools!(tools) when is_map(tools) do
    Map.new(tools, fn
      {name, fun} when is_function(fun, 1) ->
        {to_string(name), fun}

      other ->
        raise ArgumentError,
              ":tools must map tool names to 1-arity functions, got: #{inspect(other)}"
    end)
  end

  defp tools!(other), do: raise(ArgumentError, ":tools must be a map, got: #{inspect(other)}")

  # A metric (example, prediction) or a reward (inputs, prediction) of arity 2 gets
  # the two parts of the worker's arguments; arity 1 gets them whole.
  defp adapt(nil, _first), do: nil
  defp adapt(fun, _first) when is_function(fun, 1), do: fun

  defp adapt(fun, first) when is_function(fun, 2),
    do: fn args -> fun.(args[first], args["prediction"]) end

  defp adapt(other, _first),
    do:
      raise(
        ArgumentError,
        "a metric or reward must be a function of 1 or 2 arguments, got: #{inspect(other)}"
      )
end
