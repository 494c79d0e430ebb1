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

  alias PortBridge.Error

  @request_keys [
    :session_id,
    :timeout,
    :on_event,
    :meta,
    :retry,
    :circuit,
    :pool_timeout,
    :callbacks
  ]
  @lm_keys [
    :model,
    :api_key,
    :api_base,
    :temperature,
    :max_tokens,
    :cache,
    :num_retries,
    :timeout_s
  ]

  @type target :: GenServer.server()
  @type result :: {:ok, map} | {:error, Error.t()}

  @doc """
  Sets the LM of a session (with `:session_id`) or the global one.

  Arguments: `:model` (required: a DSPy model string such as `"openai/gpt-4o-mini"`,
  or `"offline"`), `:api_key`, `:api_base`, `:temperature`, `:max_tokens`, `:cache`
  (default false), `:num_retries`, `:timeout_s`. The API key is never echoed, logged
  or exported by the worker.
  """
  @spec configure_lm(target, keyword) :: result
  def configure_lm(target, opts) do
    call(target, "configure_lm", opts, @lm_keys, required: [:model])
  end

  @doc """
  Builds a program from a signature.

  Arguments: `:signature` (required: `"question, context -> answer"` or a typed map,
  see the module doc), `:module` (`"Predict"`, default, or `"ChainOfThought"`),
  `:program_id` (generated if absent), `:instructions`, `:adapter`, `:retrieve`
  (retrieve -> generate, see `create_index/3`), `:replace` (replace a program of the
  same id). Returns its description, `"program_id"` included.
  """
  @spec create_program(target, keyword) :: result
  def create_program(target, opts) do
    call(
      target,
      "create_program",
      opts,
      [:signature, :module, :adapter, :program_id, :instructions, :retrieve, :replace],
      required: [:signature]
    )
  end

  @doc """
  Runs a program on one set of inputs (a map with one value per input field).
  Returns `%{"outputs" => %{...}, "usage" => %{...}, "model" => ..., "program_id" => ...}`.
  """
  @spec execute_program(target, String.t(), map, keyword) :: result
  def execute_program(target, program_id, inputs, opts \\ []) do
    call(target, "execute_program", [program_id: program_id, inputs: inputs] ++ opts, [
      :program_id,
      :inputs
    ])
  end

  @doc """
  Runs a program and streams its output: a lazy stream of `{:chunk, %{"field",
  "text", "predictor", "last"}}` as the LM writes, then `{:ok, result}` (as
  `execute_program/4` returns) or `{:error, error}`. Other events come as
  `{:event, name, data}`. Halting the stream early cancels the run.
  """
  @spec stream(target, String.t(), map, keyword) :: Enumerable.t()
  def stream(target, program_id, inputs, opts \\ []) do
    {args, request_opts} = split!(elixir_callbacks(opts), [], "execute_program")
    args = Map.merge(args, %{"program_id" => program_id, "inputs" => inputs, "stream" => true})

    target
    |> PortBridge.stream("execute_program", args, Keyword.drop(request_opts, [:retry, :circuit]))
    |> Stream.map(fn
      {:event, "chunk", data} -> {:chunk, data}
      other -> other
    end)
  end

  @doc """
  Optimises a program from labelled examples; `progress` events go to `:on_event`.

  Arguments: `:optimizer` (required: `"LabeledFewShot"` or `"BootstrapFewShot"`),
  `:trainset` (required: a list of `%{inputs: %{...}, outputs: %{...}}`), `:metric`
  (`"exact_match"` by default), `:metric_fields`, `:options` (`k`,
  `max_bootstrapped_demos`, `max_labeled_demos`, `max_rounds`, `max_errors`,
  `metric_threshold`), `:save_as` (keep the original and save the result under
  this id), `:replace`. Returns `%{"program_id", "demos", "bootstrapped", ...}`.
  """
  @spec optimize_program(target, String.t(), keyword) :: result
  def optimize_program(target, program_id, opts) do
    keys = [
      :program_id,
      :optimizer,
      :trainset,
      :valset,
      :metric,
      :metric_fields,
      :options,
      :save_as,
      :replace
    ]

    call(target, "optimize_program", [program_id: program_id] ++ opts, keys,
      required: [:optimizer, :trainset]
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
  Rebuilds a program from an `export_program/3` document. Arguments: `:program_id`
  (default: the document's), `:replace`. Returns the program's description.
  """
  @spec import_program(target, map, keyword) :: result
  def import_program(target, program, opts \\ []) when is_map(program) do
    call(target, "import_program", [program: program] ++ opts, [:program, :program_id, :replace])
  end

  @doc "The programs of the scope, as a list of descriptions."
  @spec list_programs(target, keyword) :: {:ok, [map]} | {:error, Error.t()}
  def list_programs(target, opts \\ []) do
    with {:ok, %{"programs" => programs}} <- call(target, "list_programs", opts, []),
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

  @doc "Token usage per model of the scope's calls. Argument: `:reset` (zero the counters)."
  @spec lm_usage(target, keyword) :: result
  def lm_usage(target, opts \\ []), do: call(target, "lm_usage", opts, [:reset])

  @doc """
  Ends a session at once: its queued and running requests are cancelled, its
  programs and LM freed (and a pool forgets what it recorded to rebuild it).
  """
  @spec end_session(target, String.t(), keyword) :: result
  def end_session(target, session_id, opts \\ []) do
    call(target, "end_session", [session_id: session_id] ++ opts, [],
      also: %{"session_id" => session_id}
    )
  end

  @doc """
  Scores a program over a labelled devset, as `dspy.Evaluate`; `progress` events
  (`%{"done", "total", "errors", "score"}`) go to `:on_event`.

  Arguments: `:devset` (required: a list of `%{inputs: %{...}, outputs: %{...}}`),
  `:metric` (a named metric, `"exact_match"` by default, or an LM judge declared as
  data: `%{judge: %{signature: ..., inputs: %{judge_input => "example.<field>" |
  "prediction.<output>"}, score: output}}`), `:metric_fields`, `:num_threads`,
  `:max_errors`, `:return_outputs`. Returns `%{"score" => percent, "results" =>
  [%{"index", "score", "outputs" | "error"}], "count", "errors", "usage", ...}`.
  """
  @spec evaluate_program(target, String.t(), keyword) :: result
  def evaluate_program(target, program_id, opts) do
    keys = [
      :program_id,
      :devset,
      :metric,
      :metric_fields,
      :num_threads,
      :max_errors,
      :return_outputs
    ]

    call(target, "evaluate_program", [program_id: program_id] ++ opts, keys, required: [:devset])
  end

  @embedder_keys [:model, :api_key, :api_base, :dimensions, :batch_size, :num_retries, :timeout_s]

  @doc """
  Sets the embedding model of a session (with `:session_id`) or the global one,
  used by `create_index/3`.

  Arguments: `:model` (required: a provider's embedding model through
  `dspy.Embedder`, such as `"openai/text-embedding-3-small"`, or `"offline"`: a
  built-in deterministic embedder, no network), `:api_key`, `:api_base`,
  `:dimensions`, `:batch_size` (texts per embedding call, default 200),
  `:num_retries`, `:timeout_s`.
  """
  @spec configure_embedder(target, keyword) :: result
  def configure_embedder(target, opts) do
    call(target, "configure_embedder", opts, @embedder_keys, required: [:model])
  end

  @doc """
  Embeds a corpus (a list of passages) with the scope's embedder into an index held
  in the scope; `progress` events (`%{"embedded", "total"}`) go to `:on_event`.

  Arguments: `:index_id` (generated if absent), `:k` (passages a search returns,
  default 5), `:replace`. Returns `%{"index_id", "count", "dimensions", "bytes", ...}`.
  Bounds (passages, characters, bytes per index and per worker) are in `describe`.

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
    call(target, "create_index", [corpus: corpus] ++ opts, [:corpus, :index_id, :k, :replace])
  end

  @doc """
  The top passages of an index for a query: `{:ok, %{"passages" => [...], "indices"
  => [...], "scores" => [...]}}`. Argument: `:k` (default: the index's).
  """
  @spec retrieve(target, String.t(), String.t(), keyword) :: result
  def retrieve(target, index_id, query, opts \\ []) do
    call(target, "retrieve", [index_id: index_id, query: query] ++ opts, [:index_id, :query, :k])
  end

  @doc "The retrieval indexes of the scope, as a list of descriptions."
  @spec list_indexes(target, keyword) :: {:ok, [map]} | {:error, Error.t()}
  def list_indexes(target, opts \\ []) do
    with {:ok, %{"indexes" => indexes}} <- call(target, "list_indexes", opts, []),
         do: {:ok, indexes}
  end

  @doc "Forgets a retrieval index (its memory is freed)."
  @spec delete_index(target, String.t(), keyword) :: result
  def delete_index(target, index_id, opts \\ []) do
    call(target, "delete_index", [index_id: index_id] ++ opts, [:index_id])
  end

  defp by_id(target, command, program_id, opts) do
    call(target, command, [program_id: program_id] ++ opts, [:program_id])
  end

  defp call(target, command, opts, arg_keys, checks \\ []) do
    {args, request_opts} = split!(elixir_callbacks(opts), arg_keys, command)

    for key <- Keyword.get(checks, :required, []), not Map.has_key?(args, Atom.to_string(key)) do
      raise ArgumentError, "#{command} needs #{inspect(key)}"
    end

    # Through the recorder: on a pool, what builds a session's state is recorded so
    # that a fresh Python gets it back.
    PortBridge.DSPy.Recorder.request(
      target,
      command,
      Map.merge(args, Keyword.get(checks, :also, %{})),
      request_opts
    )
  end

  # Elixir functions given as `tools:`, `metric:` or `reward:` become callbacks the
  # worker calls back (PortBridge.Callbacks), under the names the request declares:
  # a tool's own name, "metric" (the argument becomes {"callback": "metric"}),
  # "reward" (a BestOfN or Refine program created with reward_fn: {"callback": "reward"}).
  defp elixir_callbacks(opts) do
    {tools, opts} = Keyword.pop(opts, :tools, %{})
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
        tools!(tools),
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

  # Options are the command's arguments or request options; anything else is a typo.
  defp split!(opts, arg_keys, command) do
    {args, rest} = Keyword.split(opts, arg_keys)
    {request_opts, unknown} = Keyword.split(rest, @request_keys)

    if unknown != [] do
      raise ArgumentError,
            "unknown options for #{command}: #{inspect(Keyword.keys(unknown))} " <>
              "(arguments: #{inspect(arg_keys)}; request options: #{inspect(@request_keys)})"
    end

    {Map.new(args, fn {key, value} -> {Atom.to_string(key), value} end), request_opts}
  end
end
