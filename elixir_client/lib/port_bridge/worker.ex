defmodule PortBridge.Worker do
  @worker_schema [
    name: [type: :any, doc: "a name to register the process under (as `GenServer.start_link/3`)"],
    respawn: [
      type: :boolean,
      default: false,
      doc: "start a fresh Python when one dies instead of stopping (what `PortBridge.Pool` uses)"
    ],
    max_start_failures: [
      type: :pos_integer,
      default: 5,
      doc: "with `respawn: true`, failed starts in a row before this process stops"
    ],
    start_backoff_min: [
      type: :pos_integer,
      default: 100,
      doc: "ms to wait after a failed start, doubling after each, see above"
    ],
    start_backoff_max: [type: :pos_integer, default: 5_000, doc: "the longest such wait, in ms"],
    lazy: [
      type: :boolean,
      default: false,
      doc: "spawn the Python at the first request, not at start"
    ],
    on_ready: [
      type: :mfa,
      doc: """
      `{module, function, args}` called on every fresh Python once it is ready,
      before any queued request is sent; it returns the requests that rebuild state
      on it, as `{command, args, opts}` (`opts`: `:session_id`). `PortBridge.Pool`
      replays recorded sessions this way
      """
    ],
    replay_timeout: [
      type: :pos_integer,
      default: 30_000,
      doc: "ms the `:on_ready` requests may take"
    ],
    # Set by PortBridge.Pool: the pool the Worker belongs to (telemetry and Logger
    # metadata), and its slot in the pool's load counters.
    pool: [doc: false],
    load: [doc: false]
  ]
  @schema @worker_schema ++ PortBridge.Options.spawn_schema()
  @defaults PortBridge.Schema.defaults(@worker_schema)

  @moduledoc """
  A process that owns one `portbridge worker` and serves many callers at once: the
  one request engine of the client. Nothing else writes frames to a Port.

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
      `ready` within `:ready_timeout` is an `initialization` error.
    * Each call has one `:timeout` (default 60 s): waiting for `ready`, writing the
      frame, waiting for the reply all come out of it. At the deadline the caller
      gets a `timeout` error and the Python worker is sent `cancel`, which frees the
      request's session lane at once. A caller that dies cancels its requests too.
      Writes never block this process or a caller: when the Python process stops
      reading and its pipe fills up, frames wait in a queue (see
      `PortBridge.Outbox`) and the deadlines still fire.
    * Every frame from the Python process is untrusted: a frame of any shape gets
      its caller a categorised error (or is logged when it names no caller), and
      this process keeps serving.
    * When the Python process dies, every pending caller gets a `communication`
      error at once. Then this process stops, so its supervisor starts a fresh one;
      or, with `respawn: true` (what `PortBridge.Pool` uses), it starts a fresh
      Python itself, backing off after failed starts (`start_backoff_min *
      2^(n-1)` ms, capped at `start_backoff_max`) and stopping after
      `max_start_failures` failed starts in a row.
    * When this process stops (or is killed), the Python process goes with it: its
      stdin closes (it exits after its shutdown grace), and `PortBridge.Reaper`
      signals it if it does not.

  Options (checked: an unknown one or one of the wrong type is an `ArgumentError`):

  #{PortBridge.Schema.docs(@schema)}
  Every log line of the client carries Logger metadata: `portbridge_worker` (the
  name, else the pid), `portbridge_pool` and `portbridge_os_pid`. Events are in
  `PortBridge.Telemetry`.
  """

  use GenServer
  require Logger

  alias PortBridge.{
    Callbacks,
    Channel,
    Courier,
    Error,
    Options,
    Outbox,
    Protocol,
    Reaper,
    Request,
    Schema,
    Telemetry
  }

  @request_schema Options.request_schema()
  @async_schema Options.async_schema()

  @doc false
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @doc "Starts a worker linked to the caller; see the module doc for the options."
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts), do: start_with(:start_link, opts)

  @doc "Starts a worker that is not linked to the caller (as `GenServer.start/3`)."
  @spec start(keyword) :: GenServer.on_start()
  def start(opts), do: start_with(:start, opts)

  defp start_with(fun, opts) do
    Schema.validate!(opts, @schema, "PortBridge.Worker.#{fun}/1")
    {gen_opts, opts} = Keyword.split(opts, [:name])
    apply(GenServer, fun, [__MODULE__, config!(opts, gen_opts[:name]), gen_opts])
  end

  defp config!(opts, name) do
    load =
      case Keyword.get(opts, :load) do
        nil -> nil
        {ref, index} = load when is_reference(ref) and is_integer(index) -> load
        other -> raise ArgumentError, "invalid :load: #{inspect(other)}"
      end

    opts = Keyword.merge(@defaults, Enum.reject(opts, &is_nil(elem(&1, 1))))

    %{
      spawn: Options.spawn_opts(Keyword.take(opts, Options.spawn_keys())),
      respawn: opts[:respawn],
      lazy: opts[:lazy],
      max_start_failures: opts[:max_start_failures],
      backoff_min: opts[:start_backoff_min],
      backoff_max: opts[:start_backoff_max],
      on_ready: opts[:on_ready],
      replay_timeout: opts[:replay_timeout],
      load: load,
      name: name,
      pool: Keyword.get(opts, :pool)
    }
  end

  @doc """
  Sends a request and waits for its final reply. See `PortBridge.request/4` for the
  options (`:session_id`, `:meta`, `:timeout`, `:on_event`, `:callbacks`).
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(worker, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @request_schema, "PortBridge.Worker.request/4")

    case cast_request(worker, command, args, opts) do
      %Request{} = request -> Request.await(request, opts[:on_event])
      {:error, _} = error -> error
    end
  end

  @doc "Sends a request without waiting; see `PortBridge.Request`."
  @spec async_request(GenServer.server(), String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(worker, command, args \\ %{}, opts \\ []) do
    Schema.validate!(opts, @async_schema, "PortBridge.Worker.async_request/4")
    cast_request(worker, command, args, opts)
  end

  defp cast_request(worker, command, args, opts) do
    case GenServer.whereis(worker) do
      pid when is_pid(pid) ->
        timeout = Keyword.get(opts, :timeout) || Options.default_timeout()
        # A deadline set by whoever called us (a pool's checkout) already counts
        # what happened before; else the budget starts now.
        deadline = Keyword.get_lazy(opts, :deadline, fn -> Request.deadline(timeout) end)
        callbacks = Callbacks.check!(Keyword.get(opts, :callbacks, %{}))
        ref = :erlang.monitor(:process, pid, alias: :demonitor)
        envelope = Keyword.take(opts, [:session_id, :meta])

        span =
          Telemetry.start(fn ->
            %{
              command: to_string(command),
              session_id: opts[:session_id],
              worker: pid,
              os_pid: Reaper.os_pid_of(pid),
              pool: opts[:pool]
            }
          end)

        # Courier.deliver: to a Worker on another node, never blocking this caller
        # (see PortBridge.Courier); to a local one, a plain send.
        Courier.deliver(
          pid,
          {:"$gen_cast",
           {:request, ref, self(), command, args, envelope, timeout, deadline, callbacks}}
        )

        cancel = fn -> Courier.deliver(pid, {:"$gen_cast", {:cancel, ref}}) end
        Request.new(pid, ref, cancel, timeout, deadline, nil, span)

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
  Waits until the worker has sent its `ready` event (and replayed its `:on_ready`
  requests); returns the event's data (`protocol`, `pid`, `version`, `formats`,
  `commands`, `limits`).
  """
  @spec await_ready(GenServer.server(), timeout) :: {:ok, map} | {:error, Error.t()}
  def await_ready(worker, timeout \\ 15_000), do: GenServer.call(worker, :await_ready, timeout)

  @doc """
  The OS pid, status (`:idle` before a lazy start, `:starting`, `:replaying`,
  `:ready`, `:draining` before a replacement, or `:down` between a death and the
  next start), requests in flight,
  consecutive start failures, and the `ready` data.
  """
  @spec info(GenServer.server()) :: map
  def info(worker), do: GenServer.call(worker, :info)

  ## Server

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)
    Logger.metadata(portbridge_worker: config.name || self(), portbridge_pool: config.pool)

    state = %{
      config: config,
      status: :idle,
      port: nil,
      os_pid: nil,
      channel: nil,
      ready_timer: nil,
      ready_waiters: [],
      failures: 0,
      # What goes out to the port (PortBridge.Outbox), while there is one.
      outbox: nil,
      next_id: 1,
      # ref => %{id, caller_mon, timer, timeout, deadline, send, callbacks, session_id}
      requests: %{},
      ids: %{},
      callers: %{},
      # Requests waiting for a ready Python, oldest first.
      queue: :queue.new(),
      # id => {command, session_id} of the :on_ready requests still unanswered.
      replay: %{},
      replay_timer: nil,
      # Callbacks running: task ref => %{id: callback_id, request: ref, pid, timer}.
      running: %{},
      # When the Python process was spawned, and its :on_ready replay started
      # (monotonic, native units: telemetry).
      spawned_at: nil,
      replay_started: nil
    }

    if config.lazy, do: {:ok, state}, else: start_python(state)
  end

  # {:ok, state} | {:stop, reason}, for init/1 and handle_info/2 alike.
  defp start_python(state) do
    case Channel.spawn(state.config.spawn, self()) do
      {:ok, port, os_pid} ->
        Logger.metadata(portbridge_os_pid: os_pid)

        timer =
          Process.send_after(self(), {:ready_timeout, port}, state.config.spawn.ready_timeout)

        {:ok,
         %{
           state
           | status: :starting,
             port: port,
             os_pid: os_pid,
             channel: nil,
             outbox: Outbox.new(port),
             ready_timer: timer,
             spawned_at: System.monotonic_time()
         }}

      {:error, error} ->
        {:stop, error}
    end
  end

  @impl true
  def handle_cast(
        {:request, ref, caller, command, args, envelope, timeout, deadline, callbacks},
        state
      ) do
    timer =
      case deadline do
        :infinity -> nil
        deadline -> :erlang.start_timer(deadline, self(), {:deadline, ref}, abs: true)
      end

    caller_mon = Process.monitor(caller)

    entry = %{
      id: nil,
      caller_mon: caller_mon,
      timer: timer,
      timeout: timeout,
      deadline: deadline,
      send: {command, args, envelope},
      callbacks: callbacks,
      session_id: envelope[:session_id]
    }

    state = %{
      state
      | requests: Map.put(state.requests, ref, entry),
        callers: Map.put(state.callers, caller_mon, ref)
    }

    state = count_load(state)

    case state.status do
      :ready ->
        {:noreply, send_request(state, ref)}

      :idle ->
        case start_python(%{state | queue: :queue.in(ref, state.queue)}) do
          {:ok, state} -> {:noreply, state}
          {:stop, error} -> {:stop, {:shutdown, error}, fail_all(state, error)}
        end

      _starting_replaying_draining_or_down ->
        {:noreply, %{state | queue: :queue.in(ref, state.queue)}}
    end
  end

  def handle_cast({:cancel, ref}, state), do: {:noreply, abandon(state, ref, nil)}

  @impl true
  def handle_call(:await_ready, _from, %{status: :ready} = state),
    do: {:reply, {:ok, state.channel.ready}, state}

  def handle_call(:await_ready, from, state),
    do: {:noreply, %{state | ready_waiters: [from | state.ready_waiters]}}

  def handle_call(:info, _from, state) do
    info = %{
      os_pid: state.os_pid,
      status: state.status,
      in_flight: map_size(state.requests),
      start_failures: state.failures,
      ready: state.channel && state.channel.ready
    }

    {:reply, info, state}
  end

  @impl true
  def handle_info({port, {:data, payload}}, %{port: port, status: :starting} = state) do
    case Channel.handshake(port, state.os_pid, state.config.spawn.format, payload) do
      {:ok, channel} ->
        Process.cancel_timer(state.ready_timer)
        telemetry(state, :start, %{duration: System.monotonic_time() - state.spawned_at}, %{})
        ready(%{state | channel: channel, ready_timer: nil, failures: 0})

      {:error, error} ->
        Channel.close(channel(state), grace_ms: 0)
        python_gone(%{state | port: nil}, {:start_failed, error}, error)
    end
  end

  def handle_info({port, {:data, payload}}, %{port: port} = state) do
    case Channel.decode(state.channel, payload) do
      {:reply, id, result, _meta} when id != nil -> {:noreply, reply(state, id, result)}
      {:event, id, name, data} when id != nil -> {:noreply, event(state, id, name, data)}
      {:malformed, id, frame} -> {:noreply, malformed(state, id, frame)}
      {:error, error} -> stray(state, {:unknown, Exception.message(error)})
      other -> stray(state, other)
    end
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    PortBridge.Reaper.forget(state.os_pid)

    if state.status == :starting do
      error = Channel.start_failed(state.config.spawn, status)
      python_gone(%{state | port: nil}, {:start_failed, {:worker_start_failed, status}}, error)
    else
      Logger.error("portbridge worker #{state.os_pid} exited with status #{status}")
      python_gone(%{state | port: nil}, {:worker_exited, status}, Channel.exited(status))
    end
  end

  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    # Closed under us: make sure the OS process goes too.
    Channel.close(channel(state))
    python_gone(%{state | port: nil}, {:port_closed, reason}, Channel.port_closed(reason))
  end

  def handle_info({:written, writer}, %{outbox: %Outbox{writer: writer}} = state),
    do: {:noreply, %{state | outbox: Outbox.written(state.outbox)}}

  def handle_info({:timeout, _timer, {:deadline, ref}}, state) do
    case state.requests do
      %{^ref => entry} -> {:noreply, abandon(state, ref, Request.timeout_error(entry.timeout))}
      %{} -> {:noreply, state}
    end
  end

  def handle_info({task_ref, outcome}, state) when is_map_key(state.running, task_ref) do
    Process.demonitor(task_ref, [:flush])
    {:noreply, callback_done(state, task_ref, outcome)}
  end

  def handle_info({:DOWN, task_ref, :process, _, reason}, state)
      when is_map_key(state.running, task_ref) do
    message = "the callback exited: #{inspect(reason, limit: 10, printable_limit: 200)}"
    {:noreply, callback_done(state, task_ref, {:error, "execution", message})}
  end

  def handle_info({:callback_timeout, task_ref}, state)
      when is_map_key(state.running, task_ref) do
    {:noreply, callback_done(state, task_ref, Callbacks.timed_out(state.running, task_ref))}
  end

  def handle_info({:DOWN, mon, :process, _caller, _reason}, state) do
    case Map.fetch(state.callers, mon) do
      {:ok, ref} -> {:noreply, abandon(state, ref, nil)}
      :error -> {:noreply, state}
    end
  end

  def handle_info({:ready_timeout, port}, %{port: port, status: :starting} = state) do
    # Not ready in time: stuck, no reason to give it a grace period.
    Channel.close(channel(state), grace_ms: 0)
    error = Channel.ready_timeout(state.config.spawn.ready_timeout)
    python_gone(%{state | port: nil}, {:start_failed, error}, error)
  end

  def handle_info({:replay_timeout, port}, %{port: port, status: :replaying} = state) do
    Logger.warning(
      "portbridge worker #{state.os_pid}: #{map_size(state.replay)} :on_ready request(s) " <>
        "unanswered after #{state.config.replay_timeout} ms; serving without them"
    )

    {:noreply, serve(state)}
  end

  def handle_info({:drained, port}, %{port: port, status: :draining} = state), do: recycle(state)

  def handle_info(:respawn, %{status: :down} = state) do
    case start_python(state) do
      {:ok, state} -> {:noreply, state}
      {:stop, error} -> {:stop, {:shutdown, error}, fail_all(state, error)}
    end
  end

  # Exits of linked processes (a replaced writer) and messages of closed ports.
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(reason, state) do
    stopped =
      Error.new(
        :communication,
        "worker_stopped",
        "the PortBridge.Worker stopped: #{inspect(reason)}",
        %{"reason" => inspect(reason)}
      )

    fail_all(state, stopped)

    if state.port do
      Channel.close(channel(state))
      telemetry(state, :exit, %{}, %{reason: :stopped})
    end

    :ok
  end

  # A telemetry event of this Worker's Python process (PortBridge.Telemetry).
  defp telemetry(state, name, measurements, metadata) do
    group = if name == :rebuild, do: :session, else: :worker

    Telemetry.execute(
      [:port_bridge, group, name],
      measurements,
      Map.merge(%{worker: self(), os_pid: state.os_pid, pool: state.config.pool}, metadata)
    )
  end

  defp channel(state),
    do:
      state.channel ||
        %Channel{port: state.port, os_pid: state.os_pid, format: state.config.spawn.format}

  defp stray(state, frame) do
    Channel.stray(channel(state), frame)
    {:noreply, state}
  end

  ## Starting, replaying, serving

  defp ready(%{config: %{on_ready: nil}} = state), do: {:noreply, serve(state)}

  defp ready(%{config: %{on_ready: {m, f, a}}} = state) do
    steps =
      try do
        apply(m, f, a)
      catch
        kind, reason ->
          Logger.error(
            "portbridge worker #{state.os_pid}: :on_ready #{inspect(m)}.#{f} failed: " <>
              Exception.format(kind, reason, __STACKTRACE__)
          )

          []
      end

    {state, replay} =
      Enum.reduce(steps, {state, %{}}, fn {command, args, opts}, {state, replay} ->
        id = state.next_id
        envelope = Keyword.take(opts, [:session_id])

        case Channel.encode(state.channel, id, command, args, envelope) do
          {:ok, frame} ->
            state = write(%{state | next_id: id + 1}, nil, frame)
            {state, Map.put(replay, id, {command, opts[:session_id]})}

          {:error, error} ->
            Logger.warning(
              "portbridge worker #{state.os_pid}: cannot replay #{command}: #{Exception.message(error)}"
            )

            {state, replay}
        end
      end)

    if replay == %{} do
      {:noreply, serve(state)}
    else
      timer =
        Process.send_after(self(), {:replay_timeout, state.port}, state.config.replay_timeout)

      # {started, steps, failed so far}, for the rebuild's telemetry event.
      started = {System.monotonic_time(), map_size(replay), 0}

      {:noreply,
       %{
         state
         | status: :replaying,
           replay: replay,
           replay_timer: timer,
           replay_started: started
       }}
    end
  end

  # Ready to serve: answer await_ready, send what queued up meanwhile.
  defp serve(state) do
    if state.replay_timer, do: Process.cancel_timer(state.replay_timer)

    with {started, steps, failed} <- state.replay_started do
      failed = failed + map_size(state.replay)
      duration = System.monotonic_time() - started
      telemetry(state, :rebuild, %{duration: duration, steps: steps, failed: failed}, %{})
    end

    for from <- state.ready_waiters, do: GenServer.reply(from, {:ok, state.channel.ready})
    queued = :queue.to_list(state.queue)

    state = %{
      state
      | status: :ready,
        ready_waiters: [],
        replay: %{},
        replay_timer: nil,
        replay_started: nil,
        queue: :queue.new()
    }

    Enum.reduce(queued, state, &send_request(&2, &1))
  end

  defp replayed(state, id, result) do
    {{command, session_id}, replay} = Map.pop(state.replay, id)

    state =
      case result do
        {:ok, _} ->
          %{state | replay: replay}

        {:error, error} ->
          Logger.warning(
            "portbridge worker #{state.os_pid}: rebuilding #{scope(session_id)} failed at #{command}: " <>
              Exception.message(error)
          )

          {started, steps, failed} = state.replay_started
          %{state | replay: replay, replay_started: {started, steps, failed + 1}}
      end

    if replay == %{}, do: serve(state), else: state
  end

  defp scope(nil), do: "the global scope"
  defp scope(session_id), do: "session #{inspect(session_id)}"

  # The Python process is gone (exited, its port closed, or it never became ready):
  # every caller learns at once; then stop with `reason` ({:start_failed, reason}
  # for a start that failed), or start a fresh one.
  defp python_gone(state, reason, error) do
    {failures, reason} =
      case reason do
        {:start_failed, reason} -> {state.failures + 1, reason}
        reason -> {0, reason}
      end

    telemetry(state, :exit, %{}, %{reason: if(failures > 0, do: :start_failed, else: reason)})

    state = fail_all(reset_python(state), error)
    config = state.config

    cond do
      not config.respawn ->
        {:stop, {:shutdown, reason}, state}

      failures >= config.max_start_failures ->
        error = %{error | details: Map.put(error.details, "consecutive_failures", failures)}

        Logger.error(
          "portbridge worker: #{failures} failed starts in a row, giving up: #{Exception.message(error)}"
        )

        {:stop, {:shutdown, {:worker_start_failed, error}}, state}

      true ->
        if failures > 0 do
          Logger.warning(
            "portbridge worker start failed (#{failures} in a row): #{Exception.message(error)}"
          )
        end

        delay = if failures == 0, do: 0, else: backoff(failures, config)
        Process.send_after(self(), :respawn, delay)
        {:noreply, %{state | status: :down, failures: failures}}
    end
  end

  @doc false
  # The wait in ms before the start that follows `failures` failed ones in a row.
  @spec backoff(pos_integer, map) :: pos_integer
  def backoff(failures, %{backoff_min: min, backoff_max: max}) do
    min(min * Integer.pow(2, min(failures - 1, 30)), max)
  end

  defp reset_python(state) do
    if state.ready_timer, do: Process.cancel_timer(state.ready_timer)
    if state.replay_timer, do: Process.cancel_timer(state.replay_timer)
    Outbox.close(state.outbox)

    %{
      state
      | port: nil,
        channel: nil,
        outbox: nil,
        ready_timer: nil,
        replay: %{},
        replay_timer: nil
    }
  end

  ## Recycling

  # An `internal` error (a bug in the Python worker, recovery `restart_worker`)
  # leaves the process suspect: with `respawn`, it gets no new requests (they wait,
  # within their deadlines), finishes those in flight (up to @recycle_grace_ms),
  # and a fresh Python takes over. Only `internal`: an `initialization` reply from a
  # running worker (a backend that cannot load, such as DSPy missing) would fail the
  # same way in a fresh process, so restarting it would only loop.
  @recycle_grace_ms 10_000

  defp recycle_after(
         %{status: :ready, config: %{respawn: true}} = state,
         {:error, %Error{category: :internal}}
       ) do
    Logger.warning(
      "portbridge worker #{state.os_pid} answered with an internal error; replacing it once its " <>
        "#{map_size(state.ids)} request(s) in flight are done"
    )

    Process.send_after(self(), {:drained, state.port}, @recycle_grace_ms)
    drained?(%{state | status: :draining})
  end

  defp recycle_after(state, _result), do: state

  defp drained?(%{status: :draining, ids: ids, port: port} = state) when ids == %{} do
    send(self(), {:drained, port})
    state
  end

  defp drained?(state), do: state

  defp recycle(state) do
    Channel.close(channel(state))
    telemetry(state, :exit, %{}, %{reason: :recycled})

    left =
      Error.new(
        :communication,
        "worker_recycled",
        "the worker was replaced after an internal error before this request finished"
      )

    state = Enum.reduce(Map.values(state.ids), state, &finish(&2, &1, {:error, left}))

    case start_python(reset_python(state)) do
      {:ok, state} -> {:noreply, state}
      {:stop, error} -> {:stop, {:shutdown, error}, fail_all(state, error)}
    end
  end

  ## Requests

  defp send_request(state, ref) do
    %{send: {command, args, envelope}} = entry = Map.fetch!(state.requests, ref)
    id = state.next_id
    state = %{state | next_id: id + 1}
    # The worker's own deadline trails ours: ours comes first and sends cancel.
    envelope =
      [timeout_ms: Protocol.worker_timeout_ms(Request.remaining(entry.deadline))] ++ envelope

    case Channel.encode(state.channel, id, command, args, envelope) do
      {:ok, frame} ->
        entry = %{entry | id: id, send: nil}

        state = %{
          state
          | requests: Map.put(state.requests, ref, entry),
            ids: Map.put(state.ids, id, ref)
        }

        write(state, ref, frame)

      {:error, error} ->
        finish(state, ref, {:error, error})
    end
  end

  # Writes never block (PortBridge.Outbox); `tag`: the request's ref, or nil.
  defp write(state, tag, frame), do: %{state | outbox: Outbox.write(state.outbox, tag, frame)}

  defp reply(state, id, result) do
    case state.ids do
      %{^id => ref} ->
        state |> finish(ref, result) |> recycle_after(result)

      %{} ->
        if Map.has_key?(state.replay, id) do
          replayed(state, id, result)
        else
          # Nobody waits for it any more (timed out, cancelled), or a cancel's own reply.
          state
        end
    end
  end

  # A frame of the wrong shape that names a request: its caller gets a `protocol`
  # error, the worker a cancel (what it sends later for that id is ignored).
  defp malformed(state, id, frame) do
    Logger.warning(
      "portbridge worker #{state.os_pid} sent a frame of the wrong shape for request #{inspect(id)}: " <>
        inspect(frame, limit: 10, printable_limit: 200)
    )

    case state.ids do
      %{^id => ref} -> abandon(state, ref, Protocol.malformed(frame))
      %{} -> state
    end
  end

  defp event(state, id, name, data) do
    case state.ids do
      %{^id => ref} ->
        Courier.deliver(ref, {ref, {:event, name, data}})
        if name == "callback", do: callback(state, ref, data), else: state

      %{} ->
        state
    end
  end

  ## Callbacks: the worker calls the client (PortBridge.Callbacks)

  defp callback(state, ref, data) do
    entry = Map.fetch!(state.requests, ref)

    case Callbacks.start(state.running, ref, entry, data, state.config.spawn.format) do
      {:started, running} -> %{state | running: running}
      {:answer, callback_id, outcome} -> callback_result(state, callback_id, outcome)
      :ignore -> state
    end
  end

  defp callback_done(state, task_ref, outcome) do
    case Callbacks.finished(state.running, task_ref) do
      {nil, _} -> state
      {callback_id, running} -> callback_result(%{state | running: running}, callback_id, outcome)
    end
  end

  defp callback_result(%{channel: nil} = state, _callback_id, _outcome), do: state

  defp callback_result(state, callback_id, outcome) do
    id = state.next_id
    state = %{state | next_id: id + 1}
    args = Callbacks.result_args(callback_id, outcome)

    case Channel.encode(state.channel, id, "callback_result", args, []) do
      {:ok, frame} ->
        write(state, nil, frame)

      {:error, error} ->
        # Too large for the worker, most likely: say so instead.
        fallback =
          {:error, "serialization",
           "the callback's result cannot be sent: #{Exception.message(error)}"}

        {:ok, frame} =
          Channel.encode(
            state.channel,
            id,
            "callback_result",
            Callbacks.result_args(callback_id, fallback),
            []
          )

        write(state, nil, frame)
    end
  end

  # The request's caller is done with it (deadline, cancel, caller died): tell the
  # worker to cancel it if it has it, and answer the caller with `error` (nil:
  # nobody to answer).
  defp abandon(state, ref, error) do
    result = error && {:error, error}

    case Map.fetch(state.requests, ref) do
      {:ok, %{id: nil}} ->
        finish(%{state | queue: :queue.delete(ref, state.queue)}, ref, result)

      {:ok, %{id: id}} ->
        if Outbox.waiting?(state.outbox, ref) do
          # Still waiting behind a blocked write: it never reaches the worker.
          finish(%{state | outbox: Outbox.drop(state.outbox, ref)}, ref, result)
        else
          finish(send_cancel(state, id), ref, result)
        end

      :error ->
        state
    end
  end

  defp send_cancel(%{channel: nil} = state, _id), do: state

  defp send_cancel(state, request_id) do
    cancel_id = state.next_id
    state = %{state | next_id: cancel_id + 1}

    case Channel.encode(state.channel, cancel_id, "cancel", %{"request_id" => request_id}, []) do
      {:ok, frame} -> write(state, nil, frame)
      {:error, _} -> state
    end
  end

  defp finish(state, ref, result) do
    state = %{state | running: Callbacks.stop(state.running, ref)}

    {entry, requests} = Map.pop(state.requests, ref)
    if entry.timer, do: :erlang.cancel_timer(entry.timer)
    Process.demonitor(entry.caller_mon, [:flush])
    if result, do: Courier.deliver(ref, {ref, {:reply, result}})

    %{
      state
      | requests: requests,
        ids: Map.delete(state.ids, entry.id),
        callers: Map.delete(state.callers, entry.caller_mon)
    }
    |> count_load()
    |> drained?()
  end

  defp fail_all(state, error) do
    for from <- state.ready_waiters, do: GenServer.reply(from, {:error, error})
    state = %{state | ready_waiters: [], queue: :queue.new()}
    Enum.reduce(Map.keys(state.requests), state, &finish(&2, &1, {:error, error}))
  end

  # Requests in flight or queued here, for a pool's least-loaded choice.
  defp count_load(%{config: %{load: nil}} = state), do: state

  defp count_load(%{config: %{load: {ref, index}}} = state) do
    :atomics.put(ref, index, map_size(state.requests))
    state
  end
end
