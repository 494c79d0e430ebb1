defmodule PortBridge.BatchWindowTest do
  # The ordered, bounded concurrent map under DSPy.map/4, with plain functions.
  use ExUnit.Case, async: true

  alias PortBridge.DSPy.Batch.Window

  # Elements that tell the test when they are read.
  defp counted(range) do
    test = self()
    Stream.map(range, fn i -> send(test, {:read, i}) && i end)
  end

  defp read, do: for({:read, i} <- elem(Process.info(self(), :messages), 1), do: i)

  test "results in order, whatever order the tasks finish in" do
    # Each waits for the one after it (the last one first): they finish last to first.
    test = self()

    wait_for_next = fn i ->
      send(test, {:started, i, self()})
      if i < 6, do: receive(do: (:next_done -> :ok))
      send(test, {:finished, i})
      i * i
    end

    consumer = Task.async(fn -> 1..6 |> Window.stream(wait_for_next, 6, 6) |> Enum.to_list() end)

    started =
      for i <- 1..6,
          into: %{},
          do:
            (
              assert_receive {:started, ^i, pid}
              {i, pid}
            )

    for i <- 6..2//-1 do
      assert_receive {:finished, ^i}
      send(started[i - 1], :next_done)
    end

    assert Task.await(consumer) == for(i <- 1..6, do: {:ok, i * i})
  end

  test "behind a slow first element, no more than the window is read" do
    test = self()

    slow_first = fn
      1 ->
        send(test, {:waiting, self()})
        receive do: (:go -> 1)

      i ->
        send(test, {:done, i})
        i
    end

    consumer =
      Task.async(fn -> counted(1..1_000) |> Window.stream(slow_first, 2, 4) |> Enum.take(3) end)

    assert_receive {:waiting, first}
    # The three others of the window are done (an unbounded map would go on reading
    # and running more behind the first; this one stops at the window).
    for i <- 2..4, do: assert_receive({:done, ^i})
    refute_received {:done, 5}
    assert length(read()) <= 4
    send(first, :go)
    assert Task.await(consumer) == [ok: 1, ok: 2, ok: 3]
  end

  test "halting kills what runs and halts the enumerable" do
    test = self()
    source = Stream.resource(fn -> 1 end, &{[&1], &1 + 1}, fn _ -> send(test, :source_halted) end)

    [ok: 1] =
      source
      |> Window.stream(
        fn
          1 -> 1
          i -> send(test, {:running, self(), i}) && Process.sleep(:infinity)
        end,
        3,
        3
      )
      |> Enum.take(1)

    assert_received :source_halted

    for {:running, pid, _} <- elem(Process.info(self(), :messages), 1),
        do: refute(Process.alive?(pid))
  end
end
