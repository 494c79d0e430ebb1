defmodule PortBridge.ChaosTest do
  # Bounded chaos: real Python workers SIGKILLed at random moments while many callers
  # load them through the real client. Every request must end within its timeout
  # (plus a small margin) with its own correct result or a `communication` /
  # `timeout` error; afterwards the target serves again (a Pool at full size, its
  # sessions rebuilt with the same outputs) and no OS process is left.
  #
  # Each test prints its seed. PORTBRIDGE_CHAOS_SEED=N replays a run's schedule: the
  # gaps between kills, which shard each kill hits, and every caller's sequence of
  # requests (where in that sequence a kill lands still depends on the machine's
  # timing). Without it the seed comes from ExUnit's (`mix test --seed`).
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool, Reaper, Worker}

  # How far past its deadline a reply may come (a loaded machine, 2 cores).
  @margin_ms 500
  @allowed [:communication, :timeout]
  @pool_timeout 10_000
  # A fresh pool worker rebuilds the scope first, which imports DSPy (1-2 s when loaded).
  @dspy_timeout 8_000

  test "a supervised Worker whose Python is SIGKILLed at random moments under load" do
    seed = chaos_seed()
    name = :"chaos_worker_#{System.unique_integer([:positive])}"
    start_supervised!({Worker, [name: name] ++ worker_opts()})
    {:ok, %{"pid" => first}} = Worker.await_ready(name)

    report =
      run_chaos(seed,
        callers: 16,
        kills: 8,
        # Short gaps kill a worker that is still starting, callers waiting for it.
        gap_ms: 0..500,
        # The Python of whichever Worker process the name points to now.
        target: fn _kill -> live_os_pids(Process.whereis(name)) end,
        op: &worker_op(name, &1, &2)
      )

    summarise("Worker", seed, report)
    assert_outcomes(report, seed)

    # The supervisor restarted it: a fresh Python serves every kind of request again.
    worker = wait_until(fn -> ready_worker(name) end, 10_000, "a restarted Worker to be ready")
    {:ok, %{"pid" => last}} = Worker.await_ready(worker)
    refute last in [first | report.killed]

    for c <- 1..3, seq <- 1..6 do
      op = with_seed({seed, c, seq}, fn -> worker_op(name, c, seq) end)
      verdict = op.run.()

      if op.kind == :late_sleep,
        do: assert({:error, %Error{category: :timeout}} = verdict),
        else: assert(verdict == :ok, inspect({op.kind, verdict}))
    end

    stop_supervised!(name)
    for os_pid <- [first, last | report.killed], do: assert_os_pid_exited(os_pid)
  end

  if reason = skip_reason(:dspy), do: @tag(skip: reason)

  test "a Pool whose Pythons are SIGKILLed at random moments under load recovers, sessions and all" do
    seed = chaos_seed()
    size = 3
    pool = :"chaos_pool_#{System.unique_integer([:positive])}"

    start_supervised!(
      {Pool, [name: pool, size: size, pool_timeout: @pool_timeout] ++ dspy_worker_opts()},
      id: pool
    )

    expected = build_sessions(pool, size)
    demos = Map.new(sessions(expected), &{&1, demos(pool, &1)})
    assert demos |> Map.values() |> Enum.uniq() |> Enum.sort() == [0, 2]
    initial = pool_os_pids(pool)
    assert length(initial) == size

    # Three callers per shard work in its sessions, so that no shard idles while callers
    # wait on one that rebuilds (kills then meet requests in flight); three more in the
    # global scope, whose requests go round the shards.
    work =
      Enum.group_by(expected, fn {{session, _, _}, _} ->
        if session, do: Pool.shard_for(pool, session), else: 0
      end)

    # Kills go round the shards in a seeded order, so that every shard loses its worker.
    shards = with_seed({seed, 0, 0}, fn -> Enum.shuffle(1..size) end)

    report =
      run_chaos(seed,
        callers: 3 * (size + 1),
        kills: 2 * size,
        gap_ms: 300..1_200,
        target: fn kill ->
          shard = Enum.at(shards, rem(kill - 1, size))
          live_os_pids(Enum.at(Pool.info(pool), shard - 1).pid)
        end,
        op: fn c, seq -> pool_op(pool, Map.fetch!(work, rem(c, size + 1)), c, seq) end
      )

    summarise("Pool", seed, report)
    assert_outcomes(report, seed)

    # Full size again: every shard has one live worker, answering, none of them the
    # original or a killed one.
    wait_until(
      fn -> length(pool_os_pids(pool)) == size end,
      15_000,
      "every shard of the pool to have a live worker"
    )

    # A ping in a session is answered by its shard's worker: one session per shard.
    serving =
      for session <- Enum.uniq_by(sessions(expected), &Pool.shard_for(pool, &1)),
          do: ping_pid(pool, session_id: session, timeout: 15_000)

    assert Enum.sort(serving) == Enum.sort(pool_os_pids(pool))
    assert length(serving) == size
    assert Enum.all?(serving, &(&1 not in (initial ++ report.killed)))

    # Sessions built before the kills run on the replacements with the same outputs
    # (the offline LM is deterministic; demos change the prompt, so they count too).
    for {{session, program, inputs}, outputs} <- expected do
      assert {:ok, %{"outputs" => ^outputs}} =
               DSPy.execute_program(pool, program, inputs, session_id: session, timeout: 15_000)
    end

    assert Map.new(sessions(expected), &{&1, demos(pool, &1)}) == demos

    stop_supervised!(pool)
    for os_pid <- initial ++ serving ++ report.killed, do: assert_os_pid_exited(os_pid)
  end

  ## The chaos

  # Starts `callers` processes, each making requests (`op.(caller, seq)` builds the
  # next one) until a killer has SIGKILLed `kills` worker OS processes, `gap_ms`
  # apart (drawn from the seed). `target.(kill)` lists the OS pids kill n may hit.
  defp run_chaos(seed, opts) do
    stop = :atomics.new(1, [])
    current = :ets.new(:chaos_current, [:public, :set])
    started = now()

    callers =
      for c <- 1..opts[:callers],
          do: Task.async(fn -> caller_loop(seed, c, 1, opts[:op], stop, current, []) end)

    killer =
      Task.async(fn ->
        :rand.seed(:exsss, {seed, 0, 1})

        killed =
          for kill <- 1..opts[:kills] do
            Process.sleep(Enum.random(opts[:gap_ms]))
            kill_one(fn -> opts[:target].(kill) end)
          end

        # A last stretch of load on the worker that replaced the last one killed.
        Process.sleep(Enum.random(opts[:gap_ms]))
        :atomics.put(stop, 1, 1)
        killed
      end)

    killed = Task.await(killer, 60_000)
    chaos_ms = now() - started

    # Each caller finishes its last request within that request's bound.
    results = Task.yield_many(callers, max_bound(opts) + 1_000)

    hung =
      for {{task, nil}, c} <- Enum.with_index(results, 1) do
        Task.shutdown(task, :brutal_kill)
        [{^c, request}] = :ets.lookup(current, c)
        {c, %{request | since: now() - request.since}}
      end

    assert hung == [],
           "#{length(hung)} caller(s) hung (seed #{seed}); {caller, its request (since: ms ago)}: " <>
             inspect(hung)

    outcomes = Enum.flat_map(results, fn {_task, {:ok, outcomes}} -> outcomes end)
    %{killed: killed, outcomes: outcomes, chaos_ms: chaos_ms}
  end

  # The longest bound of a request `op` can build (they are fixed per kind).
  defp max_bound(opts) do
    for(
      c <- 1..opts[:callers],
      seq <- 1..20,
      do: with_seed({0, c, seq}, fn -> opts[:op].(c, seq).bound_ms end)
    )
    |> Enum.max()
  end

  defp caller_loop(seed, c, seq, op_fun, stop, current, acc) do
    if :atomics.get(stop, 1) == 1 do
      Enum.reverse(acc)
    else
      op = with_seed({seed, c, seq}, fn -> op_fun.(c, seq) end)
      :ets.insert(current, {c, %{seq: seq, kind: op.kind, bound_ms: op.bound_ms, since: now()}})
      {us, verdict} = :timer.tc(op.run)
      outcome = %{caller: c, seq: seq, verdict: verdict, ms: div(us, 1000)}
      # After a failure, a real client would pause; without it callers spin on a
      # restarting target.
      if verdict != :ok, do: Process.sleep(20)

      outcome = Map.merge(Map.take(op, [:kind, :timeout, :bound_ms]), outcome)
      caller_loop(seed, c, seq + 1, op_fun, stop, current, [outcome | acc])
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  # Runs `fun` with the process's random state seeded from `key`, restoring it after:
  # each (caller, request) is drawn from the seed alone, whatever ran before it.
  defp with_seed(key, fun) do
    saved = :rand.export_seed()
    :rand.seed(:exsss, key)

    try do
      fun.()
    after
      if saved == :undefined, do: Process.delete(:rand_seed), else: :rand.seed(saved)
    end
  end

  # SIGKILLs one of the OS pids `targets` lists, once one is there (a restarting
  # target has none for a moment). Only live descendants of this BEAM are signalled.
  defp kill_one(targets) do
    wait_until(
      fn ->
        ours = MapSet.new(beam_descendants(), &elem(&1, 0))

        case Enum.filter(targets.(), &MapSet.member?(ours, &1)) do
          [] ->
            false

          candidates ->
            os_pid = Enum.random(candidates)

            match?({_, 0}, System.cmd("kill", ["-9", "#{os_pid}"], stderr_to_stdout: true)) &&
              os_pid
        end
      end,
      10_000,
      "a worker OS process to kill"
    )
  end

  # The live OS processes the reaper watches for `owner` (a Worker, a pool's Worker).
  defp live_os_pids(owner) do
    for {os_pid, ^owner} <- Reaper.watched(), Reaper.os_pid_alive?(os_pid), do: os_pid
  end

  defp ready_worker(name) do
    with pid when is_pid(pid) <- Process.whereis(name),
         %{status: :ready, os_pid: os_pid} <- Worker.info(pid),
         true <- Reaper.os_pid_alive?(os_pid) do
      pid
    else
      _ -> nil
    end
  catch
    :exit, _ -> nil
  end

  defp pool_os_pids(pool) do
    for %{pid: worker} <- Pool.info(pool),
        worker != nil,
        os_pid <- live_os_pids(worker),
        do: os_pid
  end

  ## Checking the outcomes

  defp assert_outcomes(report, seed) do
    bad =
      for %{verdict: verdict, ms: ms, bound_ms: bound} = outcome <- report.outcomes,
          ms > bound or not allowed?(verdict),
          do: outcome

    assert bad == [],
           "#{length(bad)} of #{length(report.outcomes)} requests broke the rules (seed #{seed}):\n" <>
             Enum.map_join(Enum.take(bad, 5), "\n", &explain/1)

    by_category = Enum.frequencies_by(report.outcomes, &category(&1.verdict))
    # The kills met requests in flight, and requests succeeded between them.
    assert by_category[:communication] > 0, "no request met a kill (seed #{seed})"
    assert by_category[:ok] > 0
  end

  defp explain(%{verdict: verdict} = outcome) do
    what =
      case verdict do
        {:error, %Error{} = error} -> Exception.message(error)
        other -> inspect(other, limit: 20, printable_limit: 300)
      end

    "  caller #{outcome.caller} request #{outcome.seq} (#{outcome.kind}): " <>
      "#{outcome.ms} ms of #{outcome.bound_ms} allowed: #{what}"
  end

  defp allowed?(:ok), do: true
  defp allowed?({:error, %Error{category: category}}), do: category in @allowed
  defp allowed?(_wrong), do: false

  defp category(:ok), do: :ok
  defp category({:error, %Error{category: category}}), do: category
  defp category({:wrong, _}), do: :wrong

  defp summarise(what, seed, report) do
    kinds =
      report.outcomes
      |> Enum.group_by(& &1.kind, &category(&1.verdict))
      |> Enum.sort()
      |> Enum.map_join("; ", fn {kind, cats} ->
        "#{kind} " <>
          (Enum.frequencies(cats)
           |> Enum.sort()
           |> Enum.map_join(" ", fn {c, n} -> "#{c}=#{n}" end))
      end)

    codes =
      for(
        %{verdict: {:error, %Error{category: c, code: code}}} <- report.outcomes,
        do: "#{c}/#{code}"
      )
      |> Enum.frequencies()
      |> Enum.sort()
      |> Enum.map_join(" ", fn {code, n} -> "#{code}=#{n}" end)

    # How long past its :timeout the latest reply came (in a pool: checkout included).
    late = report.outcomes |> Enum.map(&(&1.ms - &1.timeout)) |> Enum.max(fn -> 0 end)

    IO.puts(
      "\nchaos (#{what}): seed #{seed} (PORTBRIDGE_CHAOS_SEED=#{seed} replays it), " <>
        "#{length(report.killed)} kills in #{report.chaos_ms} ms, #{length(report.outcomes)} requests: " <>
        "#{kinds} (#{codes}); latest reply #{late} ms after its :timeout"
    )
  end

  defp chaos_seed do
    case System.get_env("PORTBRIDGE_CHAOS_SEED") do
      nil -> :rand.uniform(1_000_000)
      seed -> String.to_integer(seed)
    end
  end

  # A request and how to judge its result: :ok (its own, correct result), the
  # {:error, error} it got, or {:wrong, details}.
  defp verdict({:ok, expected}, expected), do: :ok
  defp verdict({:ok, got}, expected), do: {:wrong, %{expected: expected, got: got}}
  defp verdict({:error, %Error{}} = error, _expected), do: error

  # A request may take its :timeout (the whole budget, a pool's checkout included),
  # plus the margin.
  defp op(kind, timeout, _pool_timeout, run),
    do: %{kind: kind, timeout: timeout, bound_ms: timeout + @margin_ms, run: run}

  ## Worker requests: core commands and the test backend's events

  defp worker_op(name, c, seq) do
    session = if Enum.random([true, false]), do: "c#{c}"

    case Enum.random(1..20) do
      n when n <= 8 ->
        args = echo_args(c, seq)
        request_op(:echo, name, "echo", args, args, 2_000, [session_id: session], 0)

      n when n <= 13 ->
        sleep_op(name, 2_000, [session_id: session], 0)

      n when n <= 16 ->
        late_sleep_op(name, [session_id: session], 0)

      _ ->
        n = Enum.random(1..5)
        event = "e#{c}.#{seq}"
        args = %{n: n, delay_ms: Enum.random(0..30), event: event}
        timeout = 2_000

        op(:emit, timeout, 0, fn ->
          name
          |> PortBridge.stream("emit", args, timeout: timeout, session_id: session)
          |> Enum.to_list()
          |> events_verdict(for(i <- 0..(n - 1), do: {:event, event, %{"i" => i, "of" => n}}), %{
            "emitted" => n
          })
        end)
    end
  end

  defp echo_args(c, seq) do
    %{
      "caller" => c,
      "seq" => seq,
      "nonce" => Base.encode16(:rand.bytes(8)),
      "pad" => String.duplicate("x", Enum.random(0..2_000))
    }
  end

  defp request_op(kind, target, command, args, expected, timeout, opts, pool_timeout) do
    op(kind, timeout, pool_timeout, fn ->
      verdict(PortBridge.request(target, command, args, [timeout: timeout] ++ opts), expected)
    end)
  end

  # A sleep that ends well within its timeout.
  defp sleep_op(target, slack_ms, opts, pool_timeout) do
    ms = Enum.random(0..300)

    request_op(
      :sleep,
      target,
      "sleep",
      %{ms: ms},
      %{"slept_ms" => ms},
      ms + slack_ms,
      opts,
      pool_timeout
    )
  end

  # One that outlives its timeout by more than the margin (a reply not cut at the
  # deadline breaks the bound): timeouts, cancels and kills meet.
  defp late_sleep_op(target, opts, pool_timeout) do
    timeout = Enum.random(50..250)
    ms = timeout + @margin_ms + Enum.random(100..400)

    request_op(
      :late_sleep,
      target,
      "sleep",
      %{ms: ms},
      %{"slept_ms" => ms},
      timeout,
      opts,
      pool_timeout
    )
  end

  # Events come first, in order, each the caller's own: a request cut short by a kill
  # has seen a prefix of them.
  defp events_verdict(items, expected_events, expected_result) do
    {events, [final]} = Enum.split_while(items, &match?({:event, _, _}, &1))

    cond do
      Enum.take(expected_events, length(events)) != events ->
        {:wrong, %{expected_events: expected_events, got: events}}

      match?({:ok, _}, final) and events != expected_events ->
        {:wrong, %{expected_events: expected_events, got: events}}

      true ->
        verdict(final, expected_result)
    end
  end

  ## Pool requests: core commands and DSPy programs in sessions and the global scope

  defp pool_op(pool, expected, c, seq) do
    {{session, program, inputs} = key, outputs} = Enum.random(expected)
    opts = [session_id: session, timeout: @dspy_timeout]

    case Enum.random(1..20) do
      n when n <= 6 ->
        op(:execute, @dspy_timeout, @pool_timeout, fn ->
          pool |> DSPy.execute_program(program, inputs, opts) |> outputs_verdict(outputs)
        end)

      n when n <= 8 and program == "qa" ->
        op(:stream, @dspy_timeout, @pool_timeout, fn ->
          pool
          |> DSPy.stream(program, inputs, opts)
          |> Enum.to_list()
          |> stream_verdict(key, outputs)
        end)

      n when n <= 13 ->
        args = echo_args(c, seq)
        request_op(:echo, pool, "echo", args, args, @dspy_timeout, opts, @pool_timeout)

      n when n <= 17 ->
        sleep_op(pool, @dspy_timeout, [session_id: session], @pool_timeout)

      _ ->
        late_sleep_op(pool, [session_id: session], @pool_timeout)
    end
  end

  defp outputs_verdict({:ok, %{"outputs" => got}}, outputs), do: verdict({:ok, got}, outputs)
  defp outputs_verdict(result, outputs), do: verdict(result, outputs)

  # Chunks of the answer as the LM writes it, then the same result as execute_program.
  defp stream_verdict(items, key, outputs) do
    {chunks, [final]} = Enum.split_while(items, &match?({:chunk, _}, &1))

    streamed = for {:chunk, %{"field" => "answer", "text" => text}} <- chunks, into: "", do: text

    case outputs_verdict(final, outputs) do
      :ok ->
        if String.contains?(streamed, outputs["answer"]),
          do: :ok,
          else: {:wrong, %{request: key, expected: outputs["answer"], streamed: streamed}}

      other ->
        other
    end
  end

  @trainset for {q, a} <- [{"1 + 1?", "2"}, {"2 + 2?", "4"}],
                do: %{inputs: %{question: q}, outputs: %{answer: a}}

  # Two sessions per shard (one of them with learned demos, so that the replay of
  # learned state shows in its outputs) and the global scope; returns the outputs
  # of each program on its inputs: %{{session, program_id, inputs} => outputs}.
  defp build_sessions(pool, size) do
    sessions =
      for(i <- 1..60, do: "chaos-#{i}")
      |> Enum.group_by(&Pool.shard_for(pool, &1))
      |> Enum.flat_map(fn {_shard, ids} -> Enum.take(ids, 2) end)
      |> Enum.with_index(fn session, i -> {session, rem(i, 2) == 0} end)

    assert length(sessions) == 2 * size

    {:ok, _} = DSPy.configure_lm(pool, model: "offline", timeout: 30_000)
    {:ok, _} = DSPy.create_program(pool, signature: "text -> label", program_id: "g")

    [nil | sessions]
    |> Task.async_stream(&build_session(pool, &1), timeout: 60_000, max_concurrency: 2 * size)
    |> Enum.flat_map(fn {:ok, expected} -> expected end)
    |> Map.new()
  end

  defp build_session(pool, nil) do
    for text <- ["global one", "global two"], do: run_once(pool, nil, "g", %{text: text})
  end

  defp build_session(pool, {session, optimise?}) do
    opts = [session_id: session, timeout: 30_000]
    {:ok, _} = DSPy.configure_lm(pool, [model: "offline"] ++ opts)

    {:ok, _} =
      DSPy.create_program(
        pool,
        [signature: "question -> answer", module: "ChainOfThought", program_id: "qa"] ++ opts
      )

    {:ok, _} =
      DSPy.create_program(pool, [signature: "text -> summary", program_id: "sum"] ++ opts)

    if optimise? do
      {:ok, %{"demos" => 2}} =
        DSPy.optimize_program(
          pool,
          "qa",
          [optimizer: "LabeledFewShot", trainset: @trainset] ++ opts
        )
    end

    [
      run_once(pool, session, "qa", %{question: "What is #{session}?"}),
      run_once(pool, session, "qa", %{question: "Why #{session}?"}),
      run_once(pool, session, "sum", %{text: "All about #{session}."})
    ]
  end

  defp run_once(pool, session, program, inputs) do
    {:ok, %{"outputs" => outputs}} =
      DSPy.execute_program(pool, program, inputs, session_id: session, timeout: 30_000)

    {{session, program, inputs}, outputs}
  end

  defp demos(pool, session) do
    {:ok, %{"demos" => demos}} = DSPy.get_program(pool, "qa", session_id: session)
    demos
  end

  defp sessions(expected),
    do: for({{session, _, _}, _} <- expected, session != nil, uniq: true, do: session)
end
