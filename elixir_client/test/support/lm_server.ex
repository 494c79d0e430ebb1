defmodule PortBridge.LMServer do
  @moduledoc """
  The repository's loopback OpenAI-compatible server (`python -m
  benchmarks.lm_server`, serving `tests/support/openai_server.py`) as a Port of
  the test process: a real HTTP provider for DSPy's LM client, with models that
  answer slowly (`slow-<ms>`) or fail (`fail-429`...). It stops when its stdin
  closes, so it never outlives the test that started it.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  @root Path.expand("../../..", __DIR__)

  @doc "Starts a server for the current test; returns its base URL (`http://127.0.0.1:PORT/v1`)."
  @spec start!([String.t()]) :: String.t()
  def start!(args \\ []) do
    port =
      Port.open({:spawn_executable, PortBridge.TestCase.python()}, [
        :binary,
        {:line, 1_024},
        :exit_status,
        args: ["-m", "benchmarks.lm_server" | args],
        cd: @root
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    on_exit(fn ->
      # Its stdin closes with the port: it stops by itself; the kill is for a stuck one.
      if Port.info(port), do: Port.close(port)
      PortBridge.TestCase.assert_os_pid_exited(os_pid)
    end)

    receive do
      {^port, {:data, {:eol, "listening on " <> url}}} -> url
      {^port, {:exit_status, status}} -> raise "the LM server exited with status #{status}"
    after
      15_000 -> raise "the LM server did not start within 15 s"
    end
  end
end
