defmodule PortBridge.LMTelemetryTest do
  # Telemetry of LLM work (issue 21), with a real telemetry (TELEMETRY_PATH) and the
  # real worker: execute spans with program, model and usage; LM calls re-emitted on
  # the caller's node and never surfacing as stream items; callback spans.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Worker}
  alias PortBridge.Telemetry, as: PBTelemetry

  @compile {:no_warn_undefined, :telemetry}

  unless PBTelemetry.available?(),
    do:
      @moduletag(
        skip:
          "telemetry is not compiled in: run with TELEMETRY_PATH=/path/to/a/telemetry/checkout"
      )

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all do
    if PBTelemetry.available?(), do: {:ok, _} = Application.ensure_all_started(:telemetry)
    worker = start_supervised!({Worker, dspy_worker_opts()})
    {:ok, _} = DSPy.configure_lm(worker, model: "offline")
    {:ok, _} = DSPy.create_program(worker, signature: "question -> answer", program_id: "qa")
    %{worker: worker}
  end

  # Events emitted in this test's process (the caller's, on the caller's node).
  defp listen(events) do
    id = "lm-telemetry-#{inspect(self())}"
    :ok = apply(:telemetry, :attach_many, [id, events, &__MODULE__.handle/4, self()])
    on_exit(fn -> apply(:telemetry, :detach, [id]) end)
  end

  @doc false
  def handle(event, measurements, metadata, test) do
    if self() == test, do: send(test, {:telemetry, event, measurements, metadata})
  end

  test "an execute span carries the program, and on stop the model and the usage", %{
    worker: worker
  } do
    listen([[:port_bridge, :request, :start], [:port_bridge, :request, :stop]])

    {:ok, %{"usage" => usage, "model" => model}} =
      DSPy.execute_program(worker, "qa", %{question: "Hi?"})

    assert_received {:telemetry, [:port_bridge, :request, :start], _,
                     %{command: "execute_program", program_id: "qa"}}

    assert_received {:telemetry, [:port_bridge, :request, :stop], %{duration: _},
                     %{command: "execute_program", program_id: "qa", model: ^model, usage: ^usage}}

    assert is_map(usage) and map_size(usage) > 0

    # Commands that report no usage: nil.
    {:ok, _} = PortBridge.request(worker, "ping")

    assert_received {:telemetry, [:port_bridge, :request, :stop], _,
                     %{command: "ping", model: nil, usage: nil}}
  end

  test "every LM call is an event in the caller's process, never a stream item", %{
    worker: worker
  } do
    listen([[:port_bridge, :lm, :call]])
    session = "lm-#{System.unique_integer([:positive])}"
    url = PortBridge.LMServer.start!()

    {:ok, _} =
      DSPy.configure_lm(worker,
        model: "openai/loopback",
        api_base: url,
        api_key: "k",
        session_id: session
      )

    {:ok, _} =
      DSPy.create_program(worker,
        signature: "question -> answer",
        program_id: "qa",
        session_id: session
      )

    {:ok, %{"usage" => %{"openai/loopback" => usage}}} =
      DSPy.execute_program(worker, "qa", %{question: "Hi?"}, session_id: session)

    assert_received {:telemetry, [:port_bridge, :lm, :call],
                     %{prompt_tokens: prompt, completion_tokens: completion, duration: duration},
                     %{
                       model: "openai/loopback",
                       cached: false,
                       session_id: ^session,
                       program_id: "qa"
                     } = metadata}

    assert prompt == usage["prompt_tokens"] and completion == usage["completion_tokens"]
    assert duration > 0 and metadata.error_category == nil

    # Streamed: chunks and the result, and the LM call as telemetry only.
    items =
      worker |> DSPy.stream("qa", %{question: "Again?"}, session_id: session) |> Enum.to_list()

    refute Enum.any?(items, &match?({:event, "lm_call", _}, &1))
    assert {:ok, _} = List.last(items)
    assert_received {:telemetry, [:port_bridge, :lm, :call], _, %{session_id: ^session}}
  end
end
