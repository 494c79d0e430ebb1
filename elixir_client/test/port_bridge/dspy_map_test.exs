defmodule PortBridge.DSPyMapTest do
  # DSPy.map/4 end to end: the real worker and its DSPy backend, the offline LM, and
  # the loopback OpenAI-compatible server for an LM that takes its time.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, LMServer, Worker}

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all do
    # Named as the map/4 doc's example names its target.
    worker =
      start_supervised!(
        {Worker, dspy_worker_opts(name: MyApp.Tickets, worker_args: ["--max-concurrency", "4"])}
      )

    {:ok, _} = DSPy.configure_lm(worker, model: "offline")
    {:ok, _} = DSPy.create_program(worker, signature: "question -> answer", program_id: "qa")
    %{worker: worker}
  end

  test "the doc's example runs as written" do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(DSPy)
    [doc] = for {{:function, :map, 4}, _, _, %{"en" => doc}, _} <- docs, do: doc
    [example] = Regex.run(~r/```elixir\n(.*?)```/s, doc, capture: :all_but_first)

    output =
      ExUnit.CaptureIO.capture_io(fn -> Code.eval_string("alias PortBridge.DSPy\n" <> example) end)

    assert length(String.split(output, "\n", trim: true)) == 3
  end

  test "results come in input order, each what execute_program gives", %{worker: worker} do
    inputs = for i <- 1..12, do: %{question: "question #{i}?"}
    results = worker |> DSPy.map("qa", inputs) |> Enum.to_list()
    assert length(results) == 12

    for {input, result} <- Enum.zip(inputs, results) do
      {:ok, %{"outputs" => outputs}} = DSPy.execute_program(worker, "qa", input)
      assert {:ok, %{"outputs" => ^outputs}} = result
    end
  end

  test "a failed item is an error element and the batch goes on", %{worker: worker} do
    inputs = [%{question: "a?"}, "not a map", %{wrong_field: "x"}, %{question: "d?"}]

    assert [{:ok, _}, {:error, invalid}, {:error, %Error{category: :validation}}, {:ok, _}] =
             worker |> DSPy.map("qa", inputs) |> Enum.to_list()

    assert %Error{category: :validation, code: "invalid_item", details: %{"index" => 1}} = invalid
    assert invalid.message =~ ~s(item 1 of the batch is not a map of inputs: "not a map")
  end

  test "options are checked before anything runs", %{worker: worker} do
    assert_raise ArgumentError,
                 ~r/unknown option :max_concurency.*did you mean :max_concurrency/,
                 fn ->
                   DSPy.map(worker, "qa", [], max_concurency: 2)
                 end

    assert_raise ArgumentError, ~r/max_concurrency/, fn ->
      DSPy.map(worker, "qa", [], max_concurrency: 0)
    end
  end

  test "inputs are read as the stream is consumed", %{worker: worker} do
    test = self()
    inputs = Stream.map(1..1_000, fn i -> send(test, {:read, i}) && %{question: "#{i}?"} end)

    assert [{:ok, _}, {:ok, _}] =
             worker |> DSPy.map("qa", inputs, max_concurrency: 2) |> Enum.take(2)

    read = for {:read, i} <- Process.info(self(), :messages) |> elem(1), do: i
    # Two given out, and at most two rounds of two read ahead of them.
    assert length(read) <= 2 + 2 * 2
  end

  # The global LM, for one test: one that answers after `ms` (tests of a module run
  # one after another). Calls still running in the Python when the test ends
  # (cancelled ones too: an HTTP call cannot be interrupted) hold the worker's
  # threads until the server stops; without retries they then fail at once.
  defp slow_global_lm(worker, ms) do
    # on_exit callbacks run last first: the server stops (the calls still running
    # fail), then the worker, with its threads free again, gets the offline LM back.
    on_exit(fn -> {:ok, _} = DSPy.configure_lm(worker, model: "offline") end)
    url = LMServer.start!()

    {:ok, _} =
      DSPy.configure_lm(worker,
        model: "openai/slow-#{ms}",
        api_base: url,
        api_key: "k",
        num_retries: 0
      )
  end

  test "concurrency: what the target runs at once, 1 in a session, or :max_concurrency", %{
    worker: worker
  } do
    assert PortBridge.DSPy.Batch.capacity(worker, nil) == 4
    assert PortBridge.DSPy.Batch.capacity(worker, "s") == 1

    # Six calls to an LM that answers in 300 ms, two at a time: three rounds at least.
    slow_global_lm(worker, 300)
    inputs = for i <- 1..6, do: %{question: "#{i}?"}
    started = System.monotonic_time(:millisecond)
    results = worker |> DSPy.map("qa", inputs, max_concurrency: 2) |> Enum.to_list()
    assert length(results) == 6 and Enum.all?(results, &match?({:ok, _}, &1))
    assert System.monotonic_time(:millisecond) - started >= 3 * 300
  end

  test "halting the stream cancels the items in flight", %{worker: worker} do
    # An LM that answers after a minute: cancelled items end long before.
    slow_global_lm(worker, 60_000)
    inputs = for i <- 1..3, do: %{question: "#{i}?"}

    # The consumer goes away (it exits, or is killed) with three items waiting on the
    # LM: their requests are cancelled at once.
    consumer = spawn(fn -> worker |> DSPy.map("qa", inputs) |> Enum.to_list() end)

    wait_until(
      fn -> Worker.info(worker).in_flight == 3 end,
      5_000,
      "three items in flight"
    )

    Process.exit(consumer, :kill)

    wait_until(
      fn -> Worker.info(worker).in_flight == 0 end,
      5_000,
      "the items to be cancelled"
    )

    # Halting it: the first item fails at once, the others are cancelled.
    assert [{:error, %Error{code: "invalid_item"}}] =
             worker |> DSPy.map("qa", ["not a map" | inputs]) |> Enum.take(1)

    wait_until(
      fn -> Worker.info(worker).in_flight == 0 end,
      5_000,
      "the items to be cancelled"
    )
  end
end
