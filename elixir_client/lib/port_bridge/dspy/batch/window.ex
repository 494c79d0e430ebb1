defmodule PortBridge.DSPy.Batch.Window do
  @moduledoc false
  # A lazy, ordered, bounded concurrent map: `fun` over the elements of an
  # enumerable, at most `concurrency` running at once, their results out in the
  # elements' order. Unlike Task.async_stream/3 with `ordered: true`, which keeps
  # starting tasks behind a slow first one and buffers their results without bound
  # (measured: 807 elements read in 0.5 s behind one slow element, at a concurrency
  # of 2), at most `window` elements are read and not yet emitted: what a batch of
  # any size holds is bounded, whatever one slow item does.
  #
  # Tasks are linked to the consuming process (a consumer that exits takes them
  # down); halting the stream kills those running and halts the enumerable.

  @type t :: %{
          source: {:start, Enumerable.t()} | {:suspended, function} | :done,
          fun: (term -> term),
          concurrency: pos_integer,
          window: pos_integer,
          next: non_neg_integer,
          emit: non_neg_integer,
          running: %{reference => {non_neg_integer, Task.t()}},
          done: %{non_neg_integer => term}
        }

  @doc false
  # The stream of `fun.(element)` in order.
  @spec stream(Enumerable.t(), (term -> term), pos_integer, pos_integer) :: Enumerable.t()
  def stream(enumerable, fun, concurrency, window) when window >= concurrency do
    Stream.resource(
      fn -> start(enumerable, fun, concurrency, window) end,
      &next/1,
      &stop/1
    )
  end

  defp start(enumerable, fun, concurrency, window) do
    %{
      source: {:start, enumerable},
      fun: fun,
      concurrency: concurrency,
      window: window,
      next: 0,
      emit: 0,
      running: %{},
      done: %{}
    }
  end

  defp next(state) do
    state = fill(state)

    case Map.pop(state.done, state.emit) do
      {nil, _} when state.running == %{} ->
        {:halt, state}

      {nil, _} ->
        next(wait(state))

      {result, done} ->
        {[result], %{state | done: done, emit: state.emit + 1}}
    end
  end

  # Starts elements while fewer than `concurrency` run and fewer than `window` are
  # read and not emitted.
  defp fill(%{source: :done} = state), do: state

  defp fill(state) do
    if map_size(state.running) < state.concurrency and state.next - state.emit < state.window do
      case pull(state.source) do
        {:ok, element, source} ->
          fun = state.fun
          task = Task.async(fn -> fun.(element) end)
          running = Map.put(state.running, task.ref, {state.next, task})
          fill(%{state | source: source, running: running, next: state.next + 1})

        :done ->
          %{state | source: :done}
      end
    else
      state
    end
  end

  # The next element of the enumerable, read as a suspended reduction: only as far
  # as pulled, and halted (stop/1) when the stream stops early.
  defp pull({:start, enumerable}),
    do:
      resumed(
        Enumerable.reduce(enumerable, {:cont, nil}, fn element, _ -> {:suspend, element} end)
      )

  defp pull({:suspended, continuation}), do: resumed(continuation.({:cont, nil}))

  defp resumed({:suspended, element, continuation}),
    do: {:ok, element, {:suspended, continuation}}

  defp resumed({done, _acc}) when done in [:done, :halted], do: :done

  # The next task to finish (its result, or how it exited).
  defp wait(state) do
    receive do
      {ref, result} when is_map_key(state.running, ref) ->
        Process.demonitor(ref, [:flush])
        finished(state, ref, {:ok, result})

      {:DOWN, ref, :process, _, reason} when is_map_key(state.running, ref) ->
        finished(state, ref, {:exit, reason})
    end
  end

  defp finished(state, ref, outcome) do
    {{index, _task}, running} = Map.pop(state.running, ref)
    %{state | running: running, done: Map.put(state.done, index, outcome)}
  end

  defp stop(state) do
    for {_ref, {_index, task}} <- state.running, do: Task.shutdown(task, :brutal_kill)
    with {:suspended, continuation} <- state.source, do: continuation.({:halt, nil})
    :ok
  end
end
