defmodule PortBridge.LMServer do
  @moduledoc """
  The repository's loopback OpenAI-compatible server
  (`tests/support/openai_server.py`, run as a script) as a process of the current
  test: a real HTTP provider for DSPy's LM client, with models that answer slowly
  (`slow-<ms>`) or fail (`fail-429`...), `--api-key KEY` (a request without it
  gets a 401) and the options its docstring lists. Stopped when the test ends.
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
        args: ["tests/support/openai_server.py", "--port", "0" | args],
        cd: @root
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)

    on_exit(fn ->
      # It serves until it is told to stop: closing its stdin is not enough.
      System.cmd("kill", ["-TERM", Integer.to_string(os_pid)], stderr_to_stdout: true)
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
