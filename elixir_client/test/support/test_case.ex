defmodule PortBridge.TestCase do
  @moduledoc """
  What the suites share: how to spawn the real worker, the stand-in programs, and
  assertions that wait (with a deadline, never a fixed sleep) for OS processes to end.
  """

  use ExUnit.CaseTemplate

  using do
    quote do
      import PortBridge.TestCase
      alias PortBridge.Error
    end
  end

  @support Path.expand(".", __DIR__)

  # The workers' log records reach the suite as `log` frames (forward_logs), where
  # ExUnit's capture_log keeps them and shows them only for a test that fails: not
  # also on the BEAM's stderr, between the dots.
  @quiet ["--quiet-stderr"]

  @doc "The Python that has portbridge installed: $PORTBRIDGE_PYTHON, else the repository's .venv."
  def python do
    System.get_env("PORTBRIDGE_PYTHON") || Path.expand("../../../.venv/bin/python", __DIR__)
  end

  @doc "A stand-in program from test/support/bin."
  def stand_in(name), do: Path.join([@support, "bin", name])

  @doc """
  Options for a real worker with only the core commands and the test backend
  (`emit`): no DSPy import, so it starts in ~50 ms.
  """
  def worker_opts(extra \\ []) do
    {worker_args, extra} = Keyword.pop(extra, :worker_args, [])

    [
      python: python(),
      worker_args:
        ["--backends", "", "--backend-module", "pb_test_backend:backend"] ++
          @quiet ++ worker_args,
      env: %{"PYTHONPATH" => Path.join(@support, "python")}
    ] ++ extra
  end

  @doc """
  For `setup_all`: one real worker with DSPy for a test module (DSPy takes about a
  second to import), as `%{worker: pid}`; its tests keep apart by session.
  """
  def start_dspy_worker(_context),
    do: %{worker: start_supervised!({PortBridge.Worker, dspy_worker_opts()})}

  @doc "For `setup`: a session of its own, on the offline LM, as `%{session: id}`."
  def offline_session(%{worker: worker}) do
    session = "t-#{System.unique_integer([:positive])}"
    {:ok, _} = PortBridge.DSPy.configure_lm(worker, model: "offline", session_id: session)
    %{session: session}
  end

  @doc "Options for a real worker with its installed backends (DSPy)."
  def dspy_worker_opts(extra \\ []) do
    {worker_args, extra} = Keyword.pop(extra, :worker_args, [])
    [python: python(), worker_args: @quiet ++ worker_args] ++ extra
  end

  @doc """
  A bound of `ms` for this machine as loaded now: `ms` times the 1-minute load
  average per online scheduler (at least 1x, at most 20x). Timing assertions bound
  what a busy machine stretches (a caller returns "soon after" its deadline) with
  it; what they guard against (a caller blocked until a stopped process resumes, a
  request that waits for a 30 s sleep) lies beyond any such bound.
  """
  def tolerance(ms) do
    load =
      case File.read("/proc/loadavg") do
        {:ok, text} -> text |> String.split() |> hd() |> Float.parse() |> elem(0)
        {:error, _} -> 0.0
      end

    round(ms * min(max(load / System.schedulers_online(), 1.0), 20.0))
  end

  @doc "Milliseconds `fun` took, and its result."
  def elapsed_ms(fun) do
    t0 = System.monotonic_time(:millisecond)
    result = fun.()
    {System.monotonic_time(:millisecond) - t0, result}
  end

  @doc """
  Waits until `fun` returns a truthy value; fails after `timeout` ms (on an idle
  machine: see `tolerance/1`).
  """
  def wait_until(fun, timeout \\ 5_000, what \\ "condition") do
    deadline = System.monotonic_time(:millisecond) + tolerance(timeout)
    do_wait_until(fun, deadline, what)
  end

  defp do_wait_until(fun, deadline, what) do
    if value = fun.() do
      value
    else
      if System.monotonic_time(:millisecond) > deadline do
        ExUnit.Assertions.flunk("timed out waiting for #{what}")
      else
        Process.sleep(10)
        do_wait_until(fun, deadline, what)
      end
    end
  end

  @doc "Asserts that the OS process exits within `timeout` ms."
  def assert_os_pid_exited(os_pid, timeout \\ 5_000) do
    wait_until(
      fn -> not PortBridge.Reaper.os_pid_alive?(os_pid) end,
      timeout,
      "OS process #{os_pid} to exit"
    )

    :ok
  end

  @doc "The OS pid of the worker that served a ping."
  def ping_pid(target, opts \\ []) do
    {:ok, %{"pid" => pid}} = PortBridge.request(target, "ping", %{}, opts)
    pid
  end

  @doc "kill -9"
  def kill9(os_pid), do: {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])

  @doc """
  OS processes descended from this BEAM, except its own helpers: what is left of
  workers. `ps` output, so it works on any Unix.
  """
  def beam_descendants do
    {out, 0} = System.cmd("ps", ["-eo", "pid=,ppid=,args="])

    rows =
      for line <- String.split(out, "\n", trim: true),
          [pid, ppid, args] <- [String.split(String.trim(line), ~r/\s+/, parts: 3)],
          do: {String.to_integer(pid), String.to_integer(ppid), args}

    children = Enum.group_by(rows, fn {_, ppid, _} -> ppid end)
    beam = String.to_integer(System.pid())

    descend(children, beam)
    |> Enum.reject(fn {_, _, args} -> args =~ ~r/erl_child_setup|inet_gethost|\bps -eo\b/ end)
  end

  @doc "Waits up to `timeout` ms for `beam_descendants/0` to be empty; returns what is left."
  def await_no_descendants(timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(&beam_descendants/0)
    |> Enum.find(fn left ->
      done? = left == [] or System.monotonic_time(:millisecond) > deadline
      unless done?, do: Process.sleep(50)
      done?
    end)
  end

  @doc "Why a group of suites (:nimble_pool, :dspy) is skipped, or nil (set by test_helper.exs)."
  def skip_reason(group), do: Application.fetch_env!(:port_bridge, :test_skips)[group]

  @doc """
  Evaluates `code` one top-level expression at a time, as iex (or a Livebook cell
  after another) would: a module one expression defines is there for the next, its
  struct included. `binding` and `env` carry on from an earlier call.
  """
  def eval_in_turn(code, {binding, env} \\ {[], Code.env_for_eval([])}) do
    exprs =
      case Code.string_to_quoted!(code) do
        {:__block__, _, exprs} -> exprs
        expr -> [expr]
      end

    Enum.reduce(exprs, {binding, env}, fn expr, {binding, env} ->
      {_value, binding, env} = Code.eval_quoted_with_env(expr, binding, env)
      {binding, env}
    end)
  end

  defp descend(children, pid) do
    for {child, _, _} = row <- Map.get(children, pid, []),
        found <- [row | descend(children, child)],
        do: found
  end
end
