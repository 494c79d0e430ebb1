defmodule PortBridge.DSPyLMTest do
  # Protocol 1.2's LM arguments (the scripted model, per-call LM options, cost_usd,
  # rate_limit with the portbridge.admit callback and lm_call events), sent from
  # Elixir through PortBridge.request/4 and PortBridge.stream/4 to a real worker.
  use PortBridge.TestCase, async: true

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)

  setup_all do
    # The failures asked for below would log warnings on the worker's stderr (the suite's).
    opts = dspy_worker_opts(worker_args: ["--log-level", "critical"])
    %{worker: start_supervised!({PortBridge.Worker, opts})}
  end

  setup do
    %{session: "lm-#{System.unique_integer([:positive])}"}
  end

  defp create(worker, session, signature, extra \\ %{}) do
    {:ok, _} =
      PortBridge.request(
        worker,
        "create_program",
        Map.merge(%{signature: signature, program_id: "p"}, extra),
        session_id: session
      )
  end

  defp execute(worker, session, inputs, extra \\ %{}, opts \\ []) do
    PortBridge.request(
      worker,
      "execute_program",
      Map.merge(%{program_id: "p", inputs: inputs}, extra),
      [session_id: session] ++ opts
    )
  end

  for adapter <- ["chat", "json", "xml"] do
    test "a scripted LM answers typed outputs in order through the #{adapter} adapter", %{
      worker: worker,
      session: s
    } do
      answers = [
        %{"category" => "bug", "urgent" => true, "tags" => ["crash"]},
        %{"category" => "other", "urgent" => false, "tags" => []}
      ]

      assert {:ok, %{"model" => "scripted", "answers" => 2}} =
               PortBridge.request(worker, "configure_lm", %{model: "scripted", answers: answers},
                 session_id: s
               )

      create(
        worker,
        s,
        %{
          inputs: %{ticket: "str"},
          outputs: %{
            category: %{type: %{literal: ["bug", "other"]}},
            urgent: "bool",
            tags: "list[str]"
          }
        },
        %{adapter: unquote(adapter)}
      )

      for answer <- answers do
        assert {:ok, %{"outputs" => ^answer}} = execute(worker, s, %{ticket: "The app crashes"})
      end

      assert {:error, %PortBridge.Error{category: :execution, code: "scripted_answers_exhausted"}} =
               execute(worker, s, %{ticket: "one more"})
    end
  end

  test "per-call LM options are checked, and usage carries cost_usd", %{
    worker: worker,
    session: s
  } do
    {:ok, _} = PortBridge.request(worker, "configure_lm", %{model: "offline"}, session_id: s)
    create(worker, s, "question -> answer")

    assert {:ok, %{"usage" => %{"offline" => %{"cost_usd" => nil, "lm_calls" => 1}}}} =
             execute(worker, s, %{question: "q"}, %{lm: %{temperature: 0.7, max_tokens: 64}})

    assert {:error,
            %PortBridge.Error{category: :validation, details: %{"path" => "args.lm.seed"}}} =
             execute(worker, s, %{question: "q"}, %{lm: %{seed: 1}})

    assert {:ok, %{"cost_usd" => nil, "models" => %{"offline" => %{"cost_usd" => nil}}}} =
             PortBridge.request(worker, "lm_usage", %{}, session_id: s)
  end

  test "a rate-limited LM asks portbridge.admit before its call and reports it as lm_call", %{
    worker: worker,
    session: s
  } do
    # With a token limit every call is reported (its tokens correct the estimate);
    # under a request limit alone only failed attempts are (protocol 1.3).
    limits = %{"requests_per_minute" => 600, "tokens_per_minute" => 1_000_000}

    {:ok, %{"rate_limit" => ^limits}} =
      PortBridge.request(worker, "configure_lm", %{model: "offline", rate_limit: limits},
        session_id: s
      )

    create(worker, s, "question -> answer")
    parent = self()

    admit = fn args ->
      send(parent, {:admit, args})
      %{"admitted" => true}
    end

    events =
      PortBridge.stream(
        worker,
        "execute_program",
        %{program_id: "p", inputs: %{question: "May I?"}},
        session_id: s,
        callbacks: %{"portbridge.admit" => admit}
      )
      |> Enum.to_list()

    assert_received {:admit,
                     %{"model" => "offline", "limits" => ^limits, "estimated_tokens" => n}}
                    when n > 0

    assert [{:event, "lm_call", call}, {:ok, %{"outputs" => %{"answer" => _}}}] =
             Enum.filter(events, &match?({:event, "lm_call", _}, &1)) ++ [List.last(events)]

    assert %{"model" => "offline", "error" => nil, "program_id" => "p", "cached" => false} = call

    refused = fn _args -> %{"admitted" => false} end

    assert {:error, %PortBridge.Error{category: :overloaded, code: "admission_refused"}} =
             execute(worker, s, %{question: "Again?"}, %{},
               callbacks: %{"portbridge.admit" => refused}
             )

    assert {:error,
            %PortBridge.Error{category: :validation, details: %{"path" => "args.rate_limit"}}} =
             PortBridge.request(
               worker,
               "configure_lm",
               %{model: "offline", rate_limit: %{burst: 2}},
               session_id: s
             )
  end
end
