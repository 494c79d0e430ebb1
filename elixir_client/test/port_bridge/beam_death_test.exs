defmodule PortBridge.BeamDeathTest do
  # Issue 10, defect 9: a Python whose backend's shutdown() hangs must not outlive
  # the BEAM that spawned it, whether that BEAM halts or is killed: the client cannot
  # rely on a clean exit (nothing of it runs), so the worker must go on its own.
  use PortBridge.TestCase, async: true

  @support Path.expand("../support/python", __DIR__)

  # A second BEAM (this build's code on its path) that starts a Worker with the
  # hanging backend, prints the Python's OS pid, then does `ending`.
  defp child_beam(ending) do
    elixir = System.find_executable("elixir") || flunk("no elixir executable")
    paths = Enum.flat_map(:code.get_path(), &["-pa", to_string(&1)])

    code = """
    {:ok, _} = Application.ensure_all_started(:port_bridge)
    {:ok, w} = PortBridge.Worker.start_link(python: #{inspect(python())},
      worker_args: ["--backends", "", "--backend-module", "pb_hang_backend:backend", "--shutdown-grace", "0.5", "--quiet-stderr"],
      env: %{"PYTHONPATH" => #{inspect(@support)}})
    {:ok, %{"pid" => os_pid}} = PortBridge.Worker.await_ready(w, 30_000)
    IO.puts("os_pid=\#{os_pid}")
    #{ending}
    """

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        {:line, 1024},
        args: paths ++ ["-e", code]
      ])

    {:os_pid, beam_pid} = Port.info(port, :os_pid)

    receive do
      {^port, {:data, {:eol, "os_pid=" <> os_pid}}} -> {port, beam_pid, String.to_integer(os_pid)}
    after
      60_000 -> flunk("the child BEAM did not start its worker")
    end
  end

  test "the BEAM is killed (SIGKILL): the Python goes by itself" do
    {_port, beam_pid, os_pid} = child_beam("Process.sleep(:infinity)")
    kill9(beam_pid)
    # Its grace (0.5 s) and the hard deadline around backend shutdown, with margin.
    assert_os_pid_exited(os_pid, 10_000)
  end

  test "the BEAM halts: the Python goes by itself" do
    {_port, _beam_pid, os_pid} = child_beam("System.halt(0)")
    assert_os_pid_exited(os_pid, 10_000)
  end
end
