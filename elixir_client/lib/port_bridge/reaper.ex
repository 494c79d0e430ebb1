defmodule PortBridge.Reaper do
  @moduledoc """
  Makes sure no worker OS process outlives its owner.

  Closing a Port only closes the worker's stdin and stdout: a busy Python process
  keeps running until it next reads or writes. The worker exits by itself on stdin
  EOF after its shutdown grace period (`--shutdown-grace`, 1 s by default); the
  reaper backs that with signals, for the cases where it does not happen (a hung
  interpreter, an executable that ignores EOF, an owner killed with `:kill` whose
  `terminate/2` never ran):

    * `watch/3` when a port is opened: if the owner process dies while the OS
      process is still watched, the OS process is reaped;
    * `reap/2` when the owner closes the port on purpose;
    * `forget/1` once the port reported the exit status (the process is gone).

  Reaping gives the process its grace period (plus a margin) to exit, then sends
  SIGTERM, then SIGKILL half a second later. It runs in the `:port_bridge`
  application, which outlives every worker and pool of the applications that use it.
  """

  use GenServer
  require Logger

  @poll_ms 20
  @metadata_keys [:portbridge_worker, :portbridge_pool, :portbridge_os_pid]
  @term_wait_ms 500

  @doc false
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []),
    do: GenServer.start_link(__MODULE__, :ok, name: Keyword.get(opts, :name, __MODULE__))

  @doc """
  Watches `os_pid`: reaped if `owner` dies first. `grace_ms` is how long it may take
  to exit. What the reaper logs about it carries the caller's `portbridge_*` Logger
  metadata (a Worker's: its name and pool) and the OS pid.
  """
  @spec watch(pos_integer, pid, non_neg_integer) :: :ok
  def watch(os_pid, owner, grace_ms) do
    metadata = for {key, _} = pair <- Logger.metadata(), key in @metadata_keys, do: pair
    GenServer.call(__MODULE__, {:watch, os_pid, owner, grace_ms, metadata})
  end

  @doc "Sets how long `os_pid` may take to exit once its port is closed (known after `ready`)."
  @spec watch_grace(pos_integer, non_neg_integer) :: :ok
  def watch_grace(os_pid, grace_ms), do: GenServer.cast(__MODULE__, {:grace, os_pid, grace_ms})

  @doc """
  The port of `os_pid` was closed on purpose: make sure the process exits, within
  its grace period or `grace_ms` (0 for a process known to be stuck).
  """
  @spec reap(pos_integer, non_neg_integer | nil) :: :ok
  def reap(os_pid, grace_ms \\ nil), do: GenServer.cast(__MODULE__, {:reap, os_pid, grace_ms})

  @doc "The process exited (its port reported the exit status): stop watching it."
  @spec forget(pos_integer) :: :ok
  def forget(os_pid), do: GenServer.cast(__MODULE__, {:forget, os_pid})

  @doc "The OS processes being watched, with their owners."
  @spec watched() :: %{pos_integer => pid}
  def watched, do: GenServer.call(__MODULE__, :watched)

  @doc "True while the OS process exists and is not a zombie."
  @spec os_pid_alive?(pos_integer) :: boolean
  def os_pid_alive?(os_pid) when is_integer(os_pid) and os_pid > 0 do
    if File.dir?("/proc/self") do
      case File.read("/proc/#{os_pid}/stat") do
        {:ok, stat} -> not zombie?(stat)
        {:error, _} -> false
      end
    else
      match?(
        {_, 0},
        System.cmd("kill", ["-0", Integer.to_string(os_pid)], stderr_to_stdout: true)
      )
    end
  end

  # /proc/<pid>/stat: "pid (comm) S ..."; comm may hold spaces and parentheses.
  defp zombie?(stat) do
    case :binary.matches(stat, ") ") do
      [] -> false
      matches -> binary_part(stat, elem(List.last(matches), 0) + 2, 1) in ["Z", "X"]
    end
  end

  @doc """
  Waits up to `grace_ms` for `os_pid` to exit, then SIGTERM, then SIGKILL.
  Returns `:exited`, `:terminated` or `:killed`. Blocks the caller.
  """
  @spec ensure_exit(pos_integer, non_neg_integer) :: :exited | :terminated | :killed
  def ensure_exit(os_pid, grace_ms) do
    cond do
      wait_exit(os_pid, grace_ms) ->
        :exited

      terminated?(os_pid) ->
        Logger.warning("portbridge: worker OS process #{os_pid} outlived its port; sent SIGTERM")
        :terminated

      true ->
        signal(os_pid, "KILL")
        Logger.warning("portbridge: worker OS process #{os_pid} ignored SIGTERM; sent SIGKILL")
        :killed
    end
  end

  defp wait_exit(os_pid, wait_ms) do
    deadline = System.monotonic_time(:millisecond) + wait_ms
    wait_until(os_pid, deadline)
  end

  defp wait_until(os_pid, deadline) do
    cond do
      not os_pid_alive?(os_pid) ->
        true

      System.monotonic_time(:millisecond) >= deadline ->
        false

      true ->
        Process.sleep(@poll_ms)
        wait_until(os_pid, deadline)
    end
  end

  defp terminated?(os_pid) do
    signal(os_pid, "TERM")
    wait_exit(os_pid, @term_wait_ms)
  end

  defp signal(os_pid, name) do
    System.cmd("kill", ["-#{name}", Integer.to_string(os_pid)], stderr_to_stdout: true)
    :ok
  end

  ## Server

  @impl true
  def init(:ok) do
    # owner => os_pid, for whoever asks which OS process serves an owner (telemetry).
    :ets.new(__MODULE__, [:named_table, :protected, :set, read_concurrency: true])
    # os_pid => the Logger metadata of what is logged about it
    {:ok, %{pids: %{}, monitors: %{}, metadata: %{}}}
  end

  @doc "The OS pid watched on behalf of `owner` (a `PortBridge.Worker`), or nil."
  @spec os_pid_of(pid) :: pos_integer | nil
  def os_pid_of(owner) do
    case :ets.lookup(__MODULE__, owner) do
      [{_, os_pid}] -> os_pid
      [] -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @impl true
  def handle_call({:watch, os_pid, owner, grace_ms, metadata}, _from, state) do
    state = drop(state, os_pid)
    mref = Process.monitor(owner)
    :ets.insert(__MODULE__, {owner, os_pid})
    metadata = Keyword.merge([portbridge_worker: owner], metadata) ++ [portbridge_os_pid: os_pid]

    state = %{
      state
      | pids: Map.put(state.pids, os_pid, {owner, mref, grace_ms}),
        monitors: Map.put(state.monitors, mref, os_pid),
        metadata: Map.put(state.metadata, os_pid, metadata)
    }

    {:reply, :ok, state}
  end

  def handle_call(:watched, _from, state) do
    {:reply, Map.new(state.pids, fn {os_pid, {owner, _, _}} -> {os_pid, owner} end), state}
  end

  @impl true
  def handle_cast({:reap, os_pid, grace_ms}, state) do
    {:noreply, start_reaping(state, os_pid, grace_ms)}
  end

  def handle_cast({:forget, os_pid}, state), do: {:noreply, drop(state, os_pid)}

  def handle_cast({:grace, os_pid, grace_ms}, state) do
    case state.pids do
      %{^os_pid => {owner, mref, _}} ->
        {:noreply, %{state | pids: Map.put(state.pids, os_pid, {owner, mref, grace_ms})}}

      %{} ->
        {:noreply, state}
    end
  end

  @impl true
  def handle_info({:DOWN, mref, :process, _owner, _reason}, state) do
    case Map.pop(state.monitors, mref) do
      {nil, _} -> {:noreply, state}
      {os_pid, _monitors} -> {:noreply, start_reaping(state, os_pid, nil)}
    end
  end

  defp start_reaping(state, os_pid, grace_override) do
    case state.pids do
      %{^os_pid => {_owner, _mref, grace_ms}} ->
        metadata = Map.get(state.metadata, os_pid, portbridge_os_pid: os_pid)

        # Unlinked: a reap in progress finishes even if the reaper restarts.
        spawn(fn ->
          Logger.metadata(metadata)
          ensure_exit(os_pid, grace_override || grace_ms)
        end)

        drop(state, os_pid)

      %{} ->
        state
    end
  end

  defp drop(state, os_pid) do
    case Map.pop(state.pids, os_pid) do
      {nil, _} ->
        state

      {{owner, mref, _grace}, pids} ->
        Process.demonitor(mref, [:flush])
        :ets.delete_object(__MODULE__, {owner, os_pid})

        %{
          state
          | pids: pids,
            monitors: Map.delete(state.monitors, mref),
            metadata: Map.delete(state.metadata, os_pid)
        }
    end
  end
end
