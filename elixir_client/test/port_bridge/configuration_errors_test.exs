defmodule PortBridge.ConfigurationErrorsTest do
  # Configuration errors reach the Elixir caller as what they are, with what it
  # needs to fix them, and cost no restart loop.
  use PortBridge.TestCase, async: true

  alias PortBridge.{DSPy, Pool, Worker}

  @moduletag :tmp_dir

  # A `dspy` package first on the worker's path that cannot be imported, as on a
  # Python where DSPy is missing (the worker's DSPy backend is registered, its
  # import gate fails).
  defp without_dspy(dir) do
    File.mkdir_p!(Path.join(dir, "dspy"))

    File.write!(
      Path.join([dir, "dspy", "__init__.py"]),
      "raise ModuleNotFoundError(\"No module named 'dspy'\", name='dspy')\n"
    )

    %{"PYTHONPATH" => dir}
  end

  test "a Python without DSPy: every DSPy call gets the initialization error from the same Python, which is never restarted",
       %{tmp_dir: dir} do
    name = :"no_dspy_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, dspy_worker_opts(name: name, size: 1, env: without_dspy(dir))})
    {:ok, %{"pid" => os_pid}} = PortBridge.request(name, "ping")

    for attempt <- 1..4 do
      assert {:error, %Error{category: :initialization, code: "dspy_missing"} = error} =
               DSPy.create_program(name,
                 signature: "question -> answer",
                 program_id: "qa#{attempt}"
               )

      # Said in terms of the environment, not of Python's API, with what installs it
      # where this client runs (here: a Mix project).
      assert error.message =~ "portbridge[dspy]"
      assert error.message =~ "with this Elixir client: run `mix port_bridge.setup`"
      refute error.message =~ "pip install"

      assert {:error, %Error{category: :initialization, code: "dspy_missing"}} =
               DSPy.execute_program(name, "qa#{attempt}", %{question: "?"})

      assert_raise Error, ~r/initialization\/dspy_missing/, fn ->
        DSPy.configure_lm!(name, model: "offline")
      end
    end

    # The same OS process answers: no Python was replaced, no start failed.
    assert {:ok, %{"pid" => ^os_pid}} = PortBridge.request(name, "ping")
    assert [%{os_pid: ^os_pid, start_failures: 0, status: :ready}] = Pool.info(name)
  end

  test "a worker that exits before ready reports its exit status and the end of its stderr",
       %{tmp_dir: dir} do
    Process.flag(:trap_exit, true)
    # An interpreter without portbridge, whatever PATH holds: the venv's base Python,
    # isolated (-I: no PYTHONPATH, no user site) and without site-packages (-S), so
    # `python -m bridge` fails at once.
    {base, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
    python = quiet_interpreter(dir, "#{String.trim(base)} -I -S")
    # lazy: the Python starts with the first request, which is then sure to be there to
    # get the error (a Worker whose Python exits at once may be gone before a later call).
    {:ok, worker} = Worker.start_link(python: python, cd: dir, lazy: true)

    assert {:error, %Error{category: :initialization, code: "worker_start_failed"} = error} =
             PortBridge.request(worker, "ping")

    assert %{"exit_status" => 1, "stderr" => stderr} = error.details
    assert stderr =~ "No module named bridge"
    assert error.message =~ "exited with status 1 before it was ready"
    assert error.message =~ "No module named bridge"
    assert_receive {:EXIT, ^worker, {:shutdown, {:worker_start_failed, 1}}}
  end

  test "a bad worker option: status 2 and the worker's own usage line", %{tmp_dir: dir} do
    Process.flag(:trap_exit, true)
    python = quiet_interpreter(dir, python())

    {:ok, worker} =
      Worker.start_link(python: python, worker_args: ["--max-concurrency", "zero"], lazy: true)

    assert {:error, %Error{code: "worker_start_failed", details: %{"exit_status" => 2} = details}} =
             PortBridge.request(worker, "ping")

    assert details["stderr"] =~ "--max-concurrency"
  end

  test "an executable of the caller's own is not run a second time: its stderr stays on the BEAM's" do
    Process.flag(:trap_exit, true)
    {:ok, worker} = Worker.start_link(executable: stand_in("exit_at_once"), lazy: true)

    assert {:error, %Error{code: "worker_start_failed"} = error} =
             PortBridge.request(worker, "ping")

    refute Map.has_key?(error.details, "stderr")
    assert error.message =~ "see its stderr"
  end

  # An interpreter (`command`) whose stderr, when a Port spawns it (stdin a pipe), goes
  # nowhere instead of between the suite's dots; the Worker's second run, which reads
  # it for the error (stdin from /dev/null), still gets it.
  defp quiet_interpreter(dir, command) do
    path = Path.join(dir, "quiet-python")

    File.write!(
      path,
      "#!/bin/sh\n[ -p /dev/stdin ] && exec 2>/dev/null\nexec #{command} \"$@\"\n"
    )

    File.chmod!(path, 0o755)
    path
  end
end
