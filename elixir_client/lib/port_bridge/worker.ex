defmodule PortBridge.Worker do
  @moduledoc """
  A process that owns one `portbridge worker` and serves many callers at once.

  Requests from any number of processes are written to the one Port as they come;
  the Python worker runs them concurrently (up to its `--max-concurrency`), runs
  the requests of one session in arrival order, and the replies are matched back to
  their callers by id. Events of a request (`chunk`, `progress`) reach its caller
  before the final reply.

      children = [
        {PortBridge.Worker, name: MyApp.Python, python: "/srv/venv/bin/python"}
      ]
      Supervisor.start_link(children, strategy: :one_for_one)

      {:ok, %{"x" => 1}} = PortBridge.request(MyApp.Python, "echo", %{x: 1})

  Lifecycle:

    * `start_link/1` spawns the Python process and returns at once; requests made
      before its `ready` event wait for it (`await_ready/2` waits explicitly). No
      `ready` within `:ready_timeout` stops the worker with an `initialization` error.
    * Each call has a `:timeout` (default 60 s). At the deadline the caller gets a
      `timeout` error and the worker is sent `cancel`, which frees the request's
      session lane at once. A caller that dies cancels its requests too.
    * When the Python process dies, every pending caller gets a `communication`
      error at once and this process stops, so its supervisor starts a fresh one.
    * When this process stops (or is killed), the Python process goes with it: its
      stdin closes (it exits after its shutdown grace), and `PortBridge.Reaper`
      signals it if it does not.

  Options: the spawn options of `PortBridge.Options` (`:python`, `:worker_args`,
  `:executable`, `:args`, `:format`, `:env`, `:cd`, `:ready_timeout`) and `:name`.
  """

  use GenServer
  require Logger

  alias PortBridge.{Channel, Error, Options, Protocol, Request}

  @doc false
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @doc "Starts a worker; see the module doc for the options."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts) do
    {gen_opts, opts} = Keyword.split(opts, [:name])
    spawn_opts = Options.spawn_opts(Keyword.take(opts, Options.spawn_keys()))

    case Keyword.keys(opts) -- Options.spawn_keys() do
      [] -> GenServer.start_link(__MODULE__, spawn_opts, gen_opts)
      unknown -> raise ArgumentError, "unknown PortBridge.Worker options: #{inspect(unknown)}"
    end
  end

  @doc """
  Sends a request and waits for its final reply. See `PortBridge.request/4` for the
  options (`:session_id`, `:meta`, `:timeout`, `:on_event`).
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(worker, command, args \\ %{}, opts \\ []) do
    case async_request(worker, command, args, opts) do
      %Request{} = request -> Request.await(request, opts[:on_event])
      {:error, _} = error -> error
    end
  end

  @doc "Sends a request without waiting; see `PortBridge.Request`."
  @spec async_request(GenServer.server(), String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(worker, command, args \\ %{}, opts \\ []) do
    case GenServer.whereis(worker) do
      pid when is_pid(pid) ->
        timeout = Keyword.get(opts, :timeout, PortBridge.default_timeout())
        ref = :erlang.monitor(:process, pid, alias: :demonitor)

        envelope =
          [timeout_ms: Protocol.worker_timeout_ms(timeout)] ++
            Keyword.take(opts, [:session_id, :meta])

        GenServer.cast(pid, {:request, ref, self(), command, args, envelope, timeout})
        Request.new(pid, ref, fn -> GenServer.cast(pid, {:cancel, ref}) end, timeout)

      _ ->
        {:error,
         Error.new(
           :communication,
           "not_running",
           "no PortBridge.Worker is running as #{inspect(worker)}"
         )}
    end
  end

  @doc """
  Waits until the worker has sent its `ready` event; returns the event's data
  (`protocol`, `pid`, `version`, `formats`, `commands`, `limits`).
  """
  @spec await_ready(GenServer.server(), timeout) :: {:ok, map} | {:error, Error.t()}
  def await_ready(worker, timeout \\ 15_000), do: GenServer.call(worker, :await_ready, timeout)

  @doc "The OS pid, status (`:starting` or `:ready`), requests in flight and `ready` data."
  @spec info(GenServer.server()) :: map
  def info(worker), do: GenServer.call(worker, :info)

  ## Server

  @impl true
  def init(spawn_opts) do
    Process.flag(:trap_exit, true)

    case Channel.spawn(spawn_opts, self()) do
      {:ok, port, os_pid} ->
        timer = Process.send_after(self(), :ready_timeout, spawn_opts.ready_timeout)

        {:ok,
         %{
           spawn: spawn_opts,
           port: port,
           os_pid: os_pid,
           channel: nil,
           ready_timer: timer,
           ready_waiters: [],
           next_id: 1,
           # ref => %{id (nil while queued), caller_mon, timer, send (while queued)}
           requests: %{},
           ids: %{},
           callers: %{},
           queue: :queue.new()
         }}

      {:error, error} ->
        {:stop, error}
    end
  end

  @impl true
  def handle_cast({:request, ref, caller, command, args, envelope, timeout}, state) do
    timer = if timeout != :infinity, do: Process.send_after(self(), {:deadline, ref}, timeout)
    caller_mon = Process.monitor(caller)

    entry = %{
      id: nil,
      caller_mon: caller_mon,
      timer: timer,
      timeout: timeout,
      send: {command, args, envelope}
    }

    state = %{
      state
      | requests: Map.put(state.requests, ref, entry),
        callers: Map.put(state.callers, caller_mon, ref)
    }

    if state.channel do
      {:noreply, send_request(state, ref)}
    else
      {:noreply, %{state | queue: :queue.in(ref, state.queue)}}
    end
  end

  def handle_cast({:cancel, ref}, state), do: {:noreply, abandon(state, ref, nil)}

  @impl true
  def handle_call(:await_ready, from, %{channel: nil} = state),
    do: {:noreply, %{state | ready_waiters: [from | state.ready_waiters]}}

  def handle_call(:await_ready, _from, state), do: {:reply, {:ok, state.channel.ready}, state}

  def handle_call(:info, _from, state) do
    info = %{
      os_pid: state.os_pid,
      status: if(state.channel, do: :ready, else: :starting),
      in_flight: map_size(state.requests),
      ready: state.channel && state.channel.ready
    }

    {:reply, info, state}
  end

  @impl true
  def handle_info({port, {:data, payload}}, %{port: port, channel: nil} = state) do
    case Channel.handshake(port, state.os_pid, state.spawn.format, payload) do
      {:ok, channel} ->
        Process.cancel_timer(state.ready_timer)
        for from <- state.ready_waiters, do: GenServer.reply(from, {:ok, channel.ready})
        state = %{state | channel: channel, ready_waiters: []}

        {:noreply,
         Enum.reduce(
           :queue.to_list(state.queue),
           %{state | queue: :queue.new()},
           &send_request(&2, &1)
         )}

      {:error, error} ->
        {:stop, {:shutdown, error}, fail_all(state, error)}
    end
  end

  def handle_info({port, {:data, payload}}, %{port: port} = state) do
    case Channel.decode(state.channel, payload) do
      {:reply, id, result, _meta} -> {:noreply, reply(state, id, result)}
      {:event, id, name, data} when id != nil -> {:noreply, event(state, id, name, data)}
      {:error, error} -> {:stop, {:shutdown, error}, fail_all(state, error)}
      other -> stray(state, other)
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    PortBridge.Reaper.forget(state.os_pid)

    {reason, error} =
      if state.channel do
        Logger.error("portbridge worker #{state.os_pid} exited with status #{status}")
        {{:worker_exited, status}, Channel.exited(status)}
      else
        {{:worker_start_failed, status}, Channel.start_failed(state.spawn.executable, status)}
      end

    {:stop, {:shutdown, reason}, fail_all(%{state | port: nil}, error)}
  end

  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    {:stop, {:shutdown, {:port_closed, reason}}, fail_all(state, Channel.port_closed(reason))}
  end

  def handle_info({:deadline, ref}, state) do
    case state.requests do
      %{^ref => entry} ->
        {:noreply, abandon(state, ref, Channel.receive_timeout(entry.timeout))}

      %{} ->
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, mon, :process, _caller, _reason}, state) do
    case Map.fetch(state.callers, mon) do
      {:ok, ref} -> {:noreply, abandon(state, ref, nil)}
      :error -> {:noreply, state}
    end
  end

  def handle_info(:ready_timeout, state) do
    error = Channel.ready_timeout(state.spawn.ready_timeout)

    # Not ready in time: stuck, no reason to give it a grace period.
    Channel.close(channel(state), grace_ms: 0)
    {:stop, {:shutdown, error}, fail_all(%{state | port: nil}, error)}
  end

  def handle_info({:EXIT, _other, _reason}, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    stopped =
      Error.new(
        :communication,
        "worker_stopped",
        "the PortBridge.Worker stopped: #{inspect(reason)}",
        %{
          "reason" => inspect(reason)
        }
      )

    fail_all(state, stopped)

    if state.port, do: Channel.close(channel(state))
    :ok
  end

  defp channel(state),
    do:
      state.channel ||
        %Channel{port: state.port, os_pid: state.os_pid, format: state.spawn.format}

  defp stray(state, frame) do
    Channel.stray(state.channel, frame)
    {:noreply, state}
  end

  ## Requests

  defp send_request(state, ref) do
    %{send: {command, args, envelope}} = entry = Map.fetch!(state.requests, ref)
    id = state.next_id
    state = %{state | next_id: id + 1}

    result =
      with {:ok, frame} <- Channel.encode(state.channel, id, command, args, envelope) do
        Channel.send_frame(state.channel, frame)
      end

    case result do
      :ok ->
        entry = %{entry | id: id, send: nil}
        %{state | requests: Map.put(state.requests, ref, entry), ids: Map.put(state.ids, id, ref)}

      {:error, error} ->
        finish(state, ref, {:error, error})
    end
  end

  defp reply(state, id, result) do
    case Map.fetch(state.ids, id) do
      {:ok, ref} ->
        finish(state, ref, result)

      :error ->
        # Nobody waits for it any more (timed out, cancelled), or a cancel's own reply.
        Channel.stray(state.channel, {:reply, id, result, %{}})
        state
    end
  end

  defp event(state, id, name, data) do
    case Map.fetch(state.ids, id) do
      {:ok, ref} -> send(ref, {ref, {:event, name, data}})
      :error -> :ok
    end

    state
  end

  # The request's caller is done with it (deadline, cancel, caller died): tell the
  # worker to cancel it, ignore its final reply, and answer the caller with `error`
  # (nil: nobody to answer).
  defp abandon(state, ref, error) do
    case Map.fetch(state.requests, ref) do
      {:ok, %{id: nil}} ->
        state = %{state | queue: :queue.delete(ref, state.queue)}
        finish(state, ref, error && {:error, error})

      {:ok, %{id: id}} ->
        cancel_id = state.next_id

        if state.channel, do: Channel.send_cancel(state.channel, cancel_id, id)
        finish(%{state | next_id: cancel_id + 1}, ref, error && {:error, error})

      :error ->
        state
    end
  end

  defp finish(state, ref, result) do
    {entry, requests} = Map.pop(state.requests, ref)
    if entry.timer, do: Process.cancel_timer(entry.timer)
    Process.demonitor(entry.caller_mon, [:flush])
    if result, do: send(ref, {ref, {:reply, result}})

    %{
      state
      | requests: requests,
        ids: Map.delete(state.ids, entry.id),
        callers: Map.delete(state.callers, entry.caller_mon)
    }
  end

  defp fail_all(state, error) do
    for from <- state.ready_waiters, do: GenServer.reply(from, {:error, error})

    state = %{state | ready_waiters: []}
    Enum.reduce(Map.keys(state.requests), state, &finish(&2, &1, {:error, error}))
  end
end
