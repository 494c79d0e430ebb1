defmodule PortBridge.DSPy.Batch do
  @moduledoc """
  `PortBridge.DSPy.map/4`: one program over many inputs, as a lazy stream of
  results in input order, as many at once as the target can run.

  Each item runs as `PortBridge.DSPy.execute_program/4` (with the batch's options:
  `:timeout` is each item's own budget, `retry:` retries an item) in a task linked
  to the process that consumes the stream: halting the stream (`Enum.take/2`, the
  consumer exiting) kills the items in flight, and their Workers cancel their
  requests. Inputs are read as the stream is consumed: at most twice the
  concurrency of them are read and not yet given out, however slow one item is. A failed item is an `{:error, %PortBridge.Error{}}` element and the
  batch goes on; an item that is not a map is one too (`validation`, code
  `invalid_item`, naming its index).

  Concurrency: `:max_concurrency`, by default what the target runs at once: a
  Worker's `--max-concurrency` (from its `ready` event), times the Workers of a
  pool (1 each for an `:exclusive` one), times the live nodes of a cluster. With a
  `:session_id` it is 1: the Python runs a session's requests one at a time, in
  arrival order (run batches on programs of the global scope to run them side by
  side).

  Telemetry (with `:telemetry`), `batch` a reference that ties the events of one
  batch:

    * `[:port_bridge, :batch, :start]` - `%{system_time}`; `%{batch, program_id,
      total, max_concurrency}` (`total`: the number of inputs when the enumerable
      knows it without being run, as a list does; else nil).
    * `[:port_bridge, :batch, :item]` - as each result comes out, in order:
      `%{duration, done, failed}` (the item's own duration, native units; the
      batch's counts so far); `%{batch, program_id, index, total, result: :ok |
      :error, error_category}`.
    * `[:port_bridge, :batch, :stop]` - `%{duration, done, failed}`; `%{batch,
      program_id, total, halted}` (`halted`: the consumer stopped before the end).
  """

  alias PortBridge.{Cluster, Error, Pool, Protocol, Target, Telemetry, Worker}
  alias PortBridge.DSPy.Batch.Window

  @doc false
  # `run` executes one item's inputs: `{:ok, result} | {:error, error}`.
  @spec stream(GenServer.server(), String.t(), Enumerable.t(), keyword, (map -> term)) ::
          Enumerable.t()
  def stream(target, program_id, inputs, opts, run) do
    Stream.flat_map([:start], fn :start ->
      concurrency = opts[:max_concurrency] || capacity(target, opts[:session_id])
      total = total(inputs)
      meta = %{batch: make_ref(), program_id: program_id, total: total}
      started = System.monotonic_time()

      Telemetry.execute(
        [:port_bridge, :batch, :start],
        %{system_time: System.system_time()},
        Map.put(meta, :max_concurrency, concurrency)
      )

      # Results wait in input order behind a slow item: at most two rounds of
      # `concurrency` items are read and not yet emitted.
      inputs
      |> Stream.with_index()
      |> Window.stream(&item(&1, run), concurrency, 2 * concurrency)
      |> Stream.transform(
        fn -> %{done: 0, failed: 0, index: 0} end,
        fn outcome, counts -> emit(outcome, counts, meta) end,
        fn counts -> stop(counts, meta, started) end
      )
    end)
  end

  defp total(inputs) do
    case Enumerable.count(inputs) do
      {:ok, n} -> n
      _ -> nil
    end
  end

  # One item, in its task: never raises (a raise here would take the consumer down).
  defp item({inputs, index}, run) when is_map(inputs) do
    started = System.monotonic_time()

    result =
      try do
        run.(inputs)
      rescue
        exception -> {:error, crashed(index, Exception.message(exception))}
      catch
        kind, reason -> {:error, crashed(index, Exception.format_banner(kind, reason))}
      end

    {result, System.monotonic_time() - started}
  end

  defp item({other, index}, _run) do
    error =
      Error.new(
        :validation,
        "invalid_item",
        "item #{index} of the batch is not a map of inputs: #{inspect(other, limit: 5, printable_limit: 100)}",
        %{"index" => index}
      )

    {{:error, error}, 0}
  end

  defp crashed(index, why) do
    Error.new(:execution, "batch_item_failed", "item #{index} of the batch failed: #{why}", %{
      "index" => index
    })
  end

  defp emit(outcome, counts, meta) do
    {result, duration} =
      case outcome do
        {:ok, {result, duration}} -> {result, duration}
        {:exit, reason} -> {{:error, crashed(counts.index, inspect(reason, limit: 5))}, 0}
      end

    counts = %{
      done: counts.done + 1,
      failed: counts.failed + if(match?({:error, _}, result), do: 1, else: 0),
      index: counts.index + 1
    }

    Telemetry.execute(
      [:port_bridge, :batch, :item],
      %{duration: duration, done: counts.done, failed: counts.failed},
      Map.merge(meta, %{
        index: counts.index - 1,
        result: elem(result, 0),
        error_category: with({:error, %Error{category: c}} <- result, do: c, else: (_ -> nil))
      })
    )

    {[result], counts}
  end

  defp stop(counts, meta, started) do
    Telemetry.execute(
      [:port_bridge, :batch, :stop],
      %{duration: System.monotonic_time() - started, done: counts.done, failed: counts.failed},
      Map.put(meta, :halted, meta.total != nil and counts.done < meta.total)
    )
  end

  @doc false
  # How many requests `target` runs at once (see the moduledoc).
  @spec capacity(GenServer.server(), String.t() | nil) :: pos_integer
  def capacity(_target, session_id) when is_binary(session_id), do: 1

  def capacity(target, nil) do
    case Target.lookup(target) do
      {:ok, {Cluster, cluster}} ->
        max(length(Cluster.members(cluster.name)), 1) * pool_capacity(cluster.pool)

      {:ok, {Pool, pool}} ->
        pool_capacity(pool.name)

      _worker ->
        worker_capacity(target)
    end
  end

  defp pool_capacity(name) do
    {:ok, pool} = Pool.lookup(name)

    if pool.strategy == :exclusive,
      do: pool.size,
      else: pool.size * worker_capacity(hd(Pool.workers(pool)))
  end

  # A Worker's Python runs --max-concurrency requests at once; until it is ready,
  # the worker's default.
  defp worker_capacity(worker) do
    case Worker.info(worker) do
      %{ready: %{"limits" => %{"max_concurrency" => n}}} when is_integer(n) and n > 0 -> n
      _ -> Protocol.worker_default("max_concurrency")
    end
  catch
    :exit, _ -> Protocol.worker_default("max_concurrency")
  end
end
