defmodule PortBridge.Worker do
  @worker_schema [
    name: [type: :any, doc: "a name to register the process under (as `GenServer.start_link/3`)"],
    respawn: [
      type: :boolean,
      default: false,
      doc: "start a fresh Python when one dies instead of stopping (what `PortBridge.Pool` uses)"
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
    # metadata), and a function told how many requests the Worker holds each time
    # that changes (the pool's least-loaded choice).
    pool: [doc: false],
    on_load: [type: {:fun, 1}, doc: false],
    # Set by PortBridge.Pool: the PortBridge.Limiter that admits this Worker's LM
    # calls (its pool's); a Worker of its own shares the node's.
    limiter: [doc: false]
  ]
  @schema @worker_schema ++
            PortBridge.Options.restart_schema() ++ PortBridge.Options.spawn_schema()

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
      request's session lane at once. A request nobody waits for any more (its caller
      died, or never awaited it past its deadline) is cancelled too, within 100 ms.
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
  @behaviour PortBridge.Target
  require Logger

  alias PortBridge.{
    Call,
    Callbacks,
    Channel,
    Courier,
    Error,
    Limiter,
    Options,
    Outbox,
    Protocol,
    Reaper,
    Request,
    Schema,
    Secret,
    Telemetry
  }

  alias PortBridge.Worker.{Requests, State}

  # The messages a caller sends to the Worker (through PortBridge.Courier).
  @request :"$port_bridge_request"
  @cancel :"$port_bridge_cancel"

  # Every request and reply makes garbage in this process while its live data (the
  # state) stays small: with the default heap (233 words, growing to ~1,000) it
  # collected about every second ping, a fifth of its cost per call. A heap of 16,384
  # words (128 KB) per Worker collects about every 40 (benchmarks/README.md).
  @min_heap_words 16_384

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
    opts = Schema.validate!(opts, @schema, "PortBridge.Worker.#{fun}/1", defaults: true)
    {gen_opts, opts} = Keyword.split(opts, [:name])
    gen_opts = [spawn_opt: [min_heap_size: @min_heap_words]] ++ gen_opts
    apply(GenServer, fun, [__MODULE__, config(opts, gen_opts[:name]), gen_opts])
  end

  defp config(opts, name) do
    %{
      spawn: Options.spawn_opts(Keyword.take(opts, Options.spawn_keys())),
      respawn: opts[:respawn],
      lazy: opts[:lazy],
      max_start_failures: opts[:max_start_failures],
      backoff_min: opts[:start_backoff_min],
      backoff_max: opts[:start_backoff_max],
      on_ready: opts[:on_ready],
      replay_timeout: opts[:replay_timeout],
      on_load: opts[:on_load],
      name: name,
      pool: opts[:pool],
      limiter: opts[:limiter] || PortBridge.Limiter
    }
  end

  @doc """
  Sends a request and waits for its final reply. See `PortBridge.request/4` for the
  options (`:session_id`, `:meta`, `:timeout`, `:on_event`, `:callbacks`, `:retry`,
  `:circuit`).
  """
  @spec request(GenServer.server(), String.t() | atom, map, keyword) ::
          {:ok, term} | {:error, Error.t()}
  def request(worker, command, args \\ %{}, opts \\ []) do
    worker
    |> Call.new!(
      command,
      args,
      opts,
      :request,
      "PortBridge.Worker.request/4",
      {__MODULE__, worker}
    )
    |> Call.run()
  end

  @doc "Sends a request without waiting; see `PortBridge.Request`."
  @spec async_request(GenServer.server(), String.t() | atom, map, keyword) ::
          Request.t() | {:error, Error.t()}
  def async_request(worker, command, args \\ %{}, opts \\ []) do
    worker
    |> Call.new!(
      command,
      args,
      opts,
      :async,
      "PortBridge.Worker.async_request/4",
      {__MODULE__, worker}
    )
    |> Call.async()
  end

  @impl PortBridge.Target
  def default_timeout(_worker), do: Options.default_timeout()

  # A bare Worker records nothing: its sessions die with its Python.
  @impl PortBridge.Target
  def journal(_worker), do: nil

  @impl PortBridge.Target
  def call(worker, %Call{} = call) do
    case async(worker, call) do
      %Request{} = request -> Request.await(request, call.on_event)
      {:error, _} = error -> error
    end
  end

  @impl PortBridge.Target
  def async(worker, %Call{} = call) do
    with pid when is_pid(pid) <-
           GenServer.whereis(worker) || {:error, not_running(worker)},
         :ok <- Protocol.check(call.command, call.args, call.session_id, call.meta) do
      ref = :erlang.monitor(:process, pid, alias: :demonitor)

      span =
        Telemetry.start(fn ->
          %{
            command: to_string(call.command),
            session_id: call.session_id,
            worker: pid,
            os_pid: Reaper.os_pid_of(pid),
            pool: call.pool,
            program_id: program_id(call.args)
          }
        end)

      deliver(
        pid,
        {@request, ref, self(), call.command, call.args, call.session_id, call.meta, call.timeout,
         call.deadline, call.callbacks, notify(call.command)}
      )

      cancel = fn -> deliver(pid, {@cancel, ref}) end
      Request.new(pid, ref, cancel, call.timeout, call.deadline, nil, span)
    end
  end

  # The error of a request to a name nothing runs under.
  defp not_running(target) do
    Error.new(
      :communication,
      "not_running",
      "nothing runs as #{inspect(target)}: no PortBridge.Pool or PortBridge.Cluster was " <>
        "started with that :name, and no PortBridge.Worker is registered under it (start one " <>
        "in your supervision tree, e.g. {PortBridge.Pool, name: #{inspect(target)}}, or it is " <>
        "restarting)"
    )
  end

  # To a process on this node, a plain send; to one on another node, through
  # PortBridge.Courier, which never blocks the sender.
  defp deliver(dest, message) when node(dest) == node(), do: send(dest, message)
  defp deliver(dest, message), do: Courier.deliver(dest, message)

  # The worker reports each LM call (always under a rate limit) when the caller wants
  # it: someone on the caller's node listens to [:port_bridge, :lm, :call]. Asking
  # costs a look at the handlers (~4 us): not for the core commands, which call no LM.
  @no_lm_calls ~w(ping echo sleep describe stats health cancel list_sessions end_session shutdown)
  @no_lm_calls @no_lm_calls ++ Enum.map(@no_lm_calls, &String.to_atom/1)

  defp notify(command) when command in @no_lm_calls, do: nil
  defp notify(_command), do: if(Telemetry.wanted?([:port_bridge, :lm, :call]), do: ["lm_call"])

  defp program_id(%{"program_id" => id}) when is_binary(id), do: id
  defp program_id(%{program_id: id}) when is_binary(id), do: id
  defp program_id(_args), do: nil

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
  next start), requests in flight, consecutive start failures, and the `ready` data.
  """
  @spec info(GenServer.server()) :: map
  def info(worker), do: GenServer.call(worker, :info)

  ## Server

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)
    Logger.metadata(portbridge_worker: config.name || self(), portbridge_pool: config.pool)
    state = %State{config: config}
    if config.lazy, do: {:ok, state}, else: start_python(state)
  end

  # {:ok, state} | {:stop, error}, for init/1 and handle_info/2 alike.
  defp start_python(%State{} = state) do
    case Channel.spawn(state.config.spawn, self()) do
      {:ok, channel} ->
        Logger.metadata(portbridge_os_pid: channel.os_pid)
        ready_timeout = state.config.spawn.ready_timeout
        timer = Process.send_after(self(), {:ready_timeout, channel.port}, ready_timeout)

        {:ok,
         %{
           state
           | status: :starting,
             channel: channel,
             outbox: Outbox.new(channel.port),
             timer: timer,
             spawned_at: System.monotonic_time()
         }}

      {:error, error} ->
        {:stop, error}
    end
  end

  # start_python/1 from a callback: serving, or stopping with every caller answered.
  defp restart_python(state) do
    case start_python(state) do
      {:ok, state} -> {:noreply, state}
      {:stop, error} -> {:stop, {:shutdown, error}, fail_all(state, error)}
    end
  end

  @impl true
  def handle_call(:await_ready, _from, %State{status: :ready} = state),
    do: {:reply, {:ok, state.channel.ready}, state}

  def handle_call(:await_ready, from, state),
    do: {:noreply, %{state | waiters: [from | state.waiters]}}

  def handle_call(:info, _from, state) do
    info = %{
      os_pid: State.os_pid(state),
      status: state.status,
      in_flight: Requests.size(state.requests),
      start_failures: state.failures,
      ready: state.channel && state.channel.ready
    }

    {:reply, info, state}
  end

  @impl true
  def handle_info(
        {@request, ref, caller, command, args, session_id, meta, timeout, deadline, callbacks,
         notify},
        state
      ) do
    entry = %{
      command: command,
      args: args,
      session_id: session_id,
      meta: meta,
      notify: notify,
      timeout: timeout,
      deadline: deadline,
      callbacks: callbacks,
      caller: caller,
      # A caller on this node is seen to die by the sweep; one on another node, only
      # by a monitor.
      monitor: if(node(caller) != node(), do: Process.monitor(caller)),
      id: nil
    }

    case state.status do
      :ready ->
        {:noreply, dispatch(state, ref, entry)}

      :idle ->
        restart_python(%{hold(state, ref, entry) | queue: :queue.in(ref, state.queue)})

      _starting_replaying_draining_or_down ->
        {:noreply, %{hold(state, ref, entry) | queue: :queue.in(ref, state.queue)}}
    end
  end

  def handle_info({@cancel, ref}, state), do: {:noreply, abandon(state, ref, nil)}

  def handle_info(
        {port, {:data, payload}},
        %State{status: :starting, channel: %{port: port}} = state
      ) do
    case Channel.handshake(state.channel, payload) do
      {:ok, channel} ->
        Process.cancel_timer(state.timer)
        telemetry(state, :start, %{duration: System.monotonic_time() - state.spawned_at}, %{})
        ready(%{state | channel: channel, timer: nil, failures: 0})

      {:error, error} ->
        Channel.close(state.channel, grace_ms: 0)
        python_gone(state, {:start_failed, error}, error)
    end
  end

  def handle_info({port, {:data, payload}}, %State{channel: %{port: port}} = state) do
    case Channel.decode(state.channel, payload) do
      {:reply, id, result, _meta} when id != nil -> {:noreply, reply(state, id, result)}
      {:event, id, name, data} when id != nil -> {:noreply, event(state, id, name, data)}
      {:malformed, id, frame} -> {:noreply, malformed(state, id, frame)}
      {:error, error} -> stray(state, {:unknown, Exception.message(error)})
      other -> stray(state, other)
    end
  end

  def handle_info({port, {:exit_status, status}}, %State{channel: %{port: port}} = state) do
    Reaper.forget(state.channel.os_pid)

    if state.status == :starting do
      error = Channel.start_failed(state.config.spawn, status)
      python_gone(state, {:start_failed, {:worker_start_failed, status}}, error)
    else
      Logger.error("portbridge worker #{state.channel.os_pid} exited with status #{status}")
      python_gone(state, {:worker_exited, status}, Channel.exited(status))
    end
  end

  def handle_info({:EXIT, port, reason}, %State{channel: %{port: port}} = state) do
    # Closed under us: make sure the OS process goes too.
    Channel.close(state.channel)
    python_gone(state, {:port_closed, reason}, Channel.port_closed(reason))
  end

  def handle_info({:written, writer}, %State{outbox: %Outbox{writer: writer}} = state),
    do: {:noreply, %{state | outbox: Outbox.written(state.outbox)}}

  def handle_info(:sweep, state) do
    now = System.monotonic_time(:millisecond)

    state =
      state.requests
      |> Requests.stale(now)
      |> Enum.reduce(%{state | sweep: nil}, fn
        {ref, entry, :timeout}, state -> abandon(state, ref, Request.timeout_error(entry.timeout))
        {ref, _entry, :orphaned}, state -> abandon(state, ref, nil)
      end)

    {:noreply, sweep_later(state)}
  end

  def handle_info({task_ref, outcome}, state) when is_map_key(state.callbacks, task_ref) do
    Process.demonitor(task_ref, [:flush])
    {:noreply, callback_done(state, task_ref, outcome)}
  end

  def handle_info({:DOWN, task_ref, :process, _, reason}, state)
      when is_map_key(state.callbacks, task_ref) do
    message = "the callback exited: #{inspect(reason, limit: 10, printable_limit: 200)}"
    {:noreply, callback_done(state, task_ref, {:error, "execution", message})}
  end

  def handle_info({:callback_timeout, task_ref}, state)
      when is_map_key(state.callbacks, task_ref) do
    {:noreply, callback_done(state, task_ref, Callbacks.timed_out(state.callbacks, task_ref))}
  end

  def handle_info({:DOWN, monitor, :process, _caller, _reason}, state) do
    case Requests.ref_of_monitor(state.requests, monitor) do
      {:ok, ref} -> {:noreply, abandon(state, ref, nil)}
      :error -> {:noreply, state}
    end
  end

  def handle_info(
        {:ready_timeout, port},
        %State{status: :starting, channel: %{port: port}} = state
      ) do
    # Not ready in time: stuck, no reason to give it a grace period.
    Channel.close(state.channel, grace_ms: 0)
    error = Channel.ready_timeout(state.config.spawn.ready_timeout)
    python_gone(state, {:start_failed, error}, error)
  end

  def handle_info(
        {:replay_timeout, port},
        %State{status: :replaying, channel: %{port: port}} = state
      ) do
    Logger.warning(
      "portbridge worker #{state.channel.os_pid}: #{map_size(state.replay)} :on_ready request(s) " <>
        "unanswered after #{state.config.replay_timeout} ms; serving without them"
    )

    {:noreply, serve(state)}
  end

  def handle_info({:drained, port}, %State{status: :draining, channel: %{port: port}} = state),
    do: recycle(state)

  def handle_info(:respawn, %State{status: :down} = state), do: restart_python(state)

  # Exits of linked processes (a replaced writer) and messages of closed ports.
  def handle_info(_other, state), do: {:noreply, state}

  # :sys.get_status/1 and crash reports show the state as it is: the secrets in the
  # requests it holds (a plain-string api_key) are shown as their inspect text.
  @doc false
  def format_status(status) do
    Map.new(status, fn
      {key, value} when key in [:state, :message, :log] -> {key, Secret.redact(value)}
      pair -> pair
    end)
  end

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

    if state.channel do
      Channel.close(state.channel)
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
      Map.merge(%{worker: self(), os_pid: State.os_pid(state), pool: state.config.pool}, metadata)
    )
  end

  defp stray(state, frame) do
    Channel.stray(state.channel, frame)
    {:noreply, state}
  end

  ## Frames out: every frame this process writes is built here.

  # Sends `command` with `args`, in `session_id` (or nil), with `timeout_ms`, `meta`
  # and `notify` (or nil), under the next id; `tag` marks the frame while it waits in
  # the outbox (a request's ref, or nil). {:ok, id, state} or {:error, error, state}.
  #
  # Secrets (`PortBridge.Secret`, an `api_key:`) are resolved here and nowhere else:
  # their values live only in the frame, which goes to the Port (through the outbox
  # while the pipe is full) and is dropped; what the request table, the records and
  # the replays keep is the reference.
  defp send_frame(
         state,
         tag,
         command,
         args,
         session_id \\ nil,
         timeout_ms \\ nil,
         meta \\ nil,
         notify \\ nil
       ) do
    id = state.next_id
    state = %{state | next_id: id + 1}

    case Secret.reveal_args(args) do
      {:ok, revealed} ->
        case Channel.encode(
               state.channel,
               id,
               command,
               revealed,
               session_id,
               timeout_ms,
               meta,
               notify
             ) do
          {:ok, frame} ->
            {:ok, id, %{state | outbox: Outbox.write(state.outbox, tag, frame)}}

          {:error, error} when revealed == args ->
            {:error, error, state}

          {:error, error} ->
            # An encoding failure's details may quote the arguments: never with a key.
            {:error, %{error | details: Map.delete(error.details, "reason")}, state}
        end

      {:error, error} ->
        {:error, error, state}
    end
  end

  ## Starting, replaying, serving

  defp ready(%State{config: %{on_ready: nil}} = state), do: {:noreply, serve(state)}

  defp ready(%State{config: %{on_ready: {m, f, a}}} = state) do
    steps =
      try do
        apply(m, f, a)
      catch
        kind, reason ->
          Logger.error(
            "portbridge worker #{state.channel.os_pid}: :on_ready #{inspect(m)}.#{f} failed: " <>
              Exception.format(kind, reason, __STACKTRACE__)
          )

          []
      end

    {state, replay} =
      Enum.reduce(steps, {state, %{}}, fn {command, args, opts}, {state, replay} ->
        case send_frame(state, nil, command, args, opts[:session_id]) do
          {:ok, id, state} ->
            {state, Map.put(replay, id, {command, opts[:session_id]})}

          {:error, error, state} ->
            Logger.warning(
              "portbridge worker #{state.channel.os_pid}: cannot replay #{command}: " <>
                Exception.message(error)
            )

            {state, replay}
        end
      end)

    if replay == %{} do
      {:noreply, serve(state)}
    else
      timer =
        Process.send_after(
          self(),
          {:replay_timeout, state.channel.port},
          state.config.replay_timeout
        )

      {:noreply,
       %{
         state
         | status: :replaying,
           replay: replay,
           timer: timer,
           rebuild: {System.monotonic_time(), map_size(replay), 0}
       }}
    end
  end

  # Ready to serve: answer await_ready, send what queued up meanwhile.
  defp serve(state) do
    if state.timer, do: Process.cancel_timer(state.timer)

    with {started, steps, failed} <- state.rebuild do
      failed = failed + map_size(state.replay)
      duration = System.monotonic_time() - started
      telemetry(state, :rebuild, %{duration: duration, steps: steps, failed: failed}, %{})
    end

    for from <- state.waiters, do: GenServer.reply(from, {:ok, state.channel.ready})
    queued = :queue.to_list(state.queue)

    state = %{
      state
      | status: :ready,
        waiters: [],
        replay: %{},
        timer: nil,
        rebuild: nil,
        queue: :queue.new()
    }

    Enum.reduce(queued, state, &send_queued(&2, &1))
  end

  defp replayed(state, id, result) do
    {{command, session_id}, replay} = Map.pop(state.replay, id)

    state =
      case result do
        {:ok, _} ->
          %{state | replay: replay}

        {:error, error} ->
          Logger.warning(
            "portbridge worker #{state.channel.os_pid}: rebuilding #{scope(session_id)} failed " <>
              "at #{command}: " <> Exception.message(error)
          )

          {started, steps, failed} = state.rebuild
          %{state | replay: replay, rebuild: {started, steps, failed + 1}}
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

    state = fail_all(State.without_python(state), error)
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

  ## Recycling

  # An `internal` error (a bug in the Python worker, recovery `restart_worker`)
  # leaves the process suspect: with `respawn`, it gets no new requests (they wait,
  # within their deadlines), finishes those in flight (up to @recycle_grace_ms),
  # and a fresh Python takes over. Only `internal`: an `initialization` reply from a
  # running worker (a backend that cannot load, such as DSPy missing) would fail the
  # same way in a fresh process, so restarting it would only loop.
  @recycle_grace_ms 10_000

  defp recycle_after(
         %State{status: :ready, config: %{respawn: true}} = state,
         {:error, %Error{category: :internal}}
       ) do
    Logger.warning(
      "portbridge worker #{state.channel.os_pid} answered with an internal error; replacing it " <>
        "once its #{Requests.in_flight(state.requests)} request(s) in flight are done"
    )

    Process.send_after(self(), {:drained, state.channel.port}, @recycle_grace_ms)
    drained?(%{state | status: :draining})
  end

  defp recycle_after(state, _result), do: state

  defp drained?(%State{status: :draining} = state) do
    if Requests.in_flight(state.requests) == 0, do: send(self(), {:drained, state.channel.port})
    state
  end

  defp drained?(state), do: state

  defp recycle(state) do
    Channel.close(state.channel)
    telemetry(state, :exit, %{}, %{reason: :recycled})

    left =
      Error.new(
        :communication,
        "worker_recycled",
        "the worker was replaced after an internal error before this request finished"
      )

    state =
      Enum.reduce(Requests.sent_refs(state.requests), state, &finish(&2, &1, {:error, left}))

    restart_python(State.without_python(state))
  end

  ## Requests

  # A request that arrives while the Python serves: sent at once, then held.
  defp dispatch(state, ref, entry) do
    case send_entry(state, ref, entry) do
      {:ok, id, state} ->
        hold(state, ref, %{entry | id: id})

      {:error, error, state} ->
        if entry.monitor, do: Process.demonitor(entry.monitor, [:flush])
        deliver(ref, {ref, {:reply, {:error, error}}})
        state
    end
  end

  # A request that waited for a ready Python (held since it came).
  defp send_queued(state, ref) do
    {:ok, entry} = Requests.fetch(state.requests, ref)

    case send_entry(state, ref, entry) do
      {:ok, id, state} -> %{state | requests: Requests.sent(state.requests, ref, id)}
      {:error, error, state} -> finish(state, ref, {:error, error})
    end
  end

  defp send_entry(state, ref, entry) do
    # The worker's own deadline trails ours: ours comes first and sends cancel.
    timeout_ms = Protocol.worker_timeout_ms(Request.remaining(entry.deadline))
    # Only a worker that speaks 1.2 knows the envelope's notify.
    notify = if entry.notify && lm_calls?(state), do: entry.notify

    send_frame(
      state,
      ref,
      entry.command,
      entry.args,
      entry.session_id,
      timeout_ms,
      entry.meta,
      notify
    )
  end

  defp hold(state, ref, entry) do
    sweep_later(load_changed(%{state | requests: Requests.add(state.requests, ref, entry)}))
  end

  defp lm_calls?(state), do: feature?(state, "lm_calls")

  defp feature?(%State{channel: %{ready: %{"features" => features}}}, name)
       when is_list(features),
       do: name in features

  defp feature?(_state, _name), do: false

  defp reply(state, id, result) do
    case Requests.ref_of_id(state.requests, id) do
      {:ok, ref} ->
        state |> finish(ref, result) |> recycle_after(result)

      :error ->
        # A replayed request, or one nobody waits for any more (timed out, cancelled),
        # or a cancel's own reply.
        if is_map_key(state.replay, id), do: replayed(state, id, result), else: state
    end
  end

  # A frame of the wrong shape that names a request: its caller gets a `protocol`
  # error, the worker a cancel (what it sends later for that id is ignored).
  defp malformed(state, id, frame) do
    Logger.warning(
      "portbridge worker #{state.channel.os_pid} sent a frame of the wrong shape for request " <>
        "#{inspect(id)}: " <> inspect(frame, limit: 10, printable_limit: 200)
    )

    case Requests.ref_of_id(state.requests, id) do
      {:ok, ref} -> abandon(state, ref, Protocol.malformed(frame))
      :error -> state
    end
  end

  defp event(state, id, name, data) do
    case Requests.ref_of_id(state.requests, id) do
      {:ok, ref} ->
        case {name, data} do
          # Admission to an LM call is the client's own business, not the caller's.
          {"callback", %{"name" => "portbridge.admit"}} ->
            callback(state, ref, data)

          {"callback", _} ->
            deliver(ref, {ref, {:event, name, data}})
            callback(state, ref, data)

          # What an LM call used: for the limiter here, and for the caller's telemetry
          # (PortBridge.Request turns it into [:port_bridge, :lm, :call]).
          {"lm_call", %{}} ->
            Limiter.report(state.config.limiter, data)
            deliver(ref, {ref, {:event, name, data}})
            state

          _ ->
            deliver(ref, {ref, {:event, name, data}})
            state
        end

      :error ->
        state
    end
  end

  ## Callbacks: the worker calls the client (PortBridge.Callbacks)

  defp callback(state, ref, data) do
    {:ok, entry} = Requests.fetch(state.requests, ref)

    case Callbacks.start(state.callbacks, ref, entry, data, state.channel.format, builtins(state)) do
      {:started, callbacks} -> %{state | callbacks: callbacks}
      {:answer, callback_id, outcome} -> callback_result(state, callback_id, outcome)
      :ignore -> state
    end
  end

  # The callbacks every request has: admission to an LM call under a rate limit
  # (with leases for a worker that takes them, protocol 1.3).
  defp builtins(%State{config: %{limiter: limiter}} = state) do
    lease = [lease: feature?(state, "lm_leases")]
    %{"portbridge.admit" => &Limiter.admit(limiter, &1, &2, lease)}
  end

  defp callback_done(state, task_ref, outcome) do
    case Callbacks.finished(state.callbacks, task_ref) do
      {nil, _} -> state
      {id, callbacks} -> callback_result(%{state | callbacks: callbacks}, id, outcome)
    end
  end

  defp callback_result(%State{channel: nil} = state, _callback_id, _outcome), do: state

  defp callback_result(state, callback_id, outcome) do
    args = Callbacks.result_args(callback_id, outcome)

    case send_frame(state, nil, "callback_result", args) do
      {:ok, _id, state} ->
        state

      {:error, error, state} ->
        # Too large for the worker, most likely: say so instead.
        message = "the callback's result cannot be sent: #{Exception.message(error)}"
        fallback = Callbacks.result_args(callback_id, {:error, "serialization", message})
        {:ok, _id, state} = send_frame(state, nil, "callback_result", fallback)
        state
    end
  end

  # The request's caller is done with it (deadline, cancel, caller died): tell the
  # worker to cancel it if it has it, and answer the caller with `error` (nil:
  # nobody to answer).
  defp abandon(state, ref, error) do
    result = error && {:error, error}

    case Requests.fetch(state.requests, ref) do
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

  defp send_cancel(%State{channel: nil} = state, _id), do: state

  defp send_cancel(state, request_id) do
    case send_frame(state, nil, "cancel", %{"request_id" => request_id}) do
      {:ok, _id, state} -> state
      {:error, _error, state} -> state
    end
  end

  defp finish(state, ref, result) do
    {entry, requests} = Requests.pop(state.requests, ref)
    if entry.monitor, do: Process.demonitor(entry.monitor, [:flush])
    if result, do: deliver(ref, {ref, {:reply, result}})

    callbacks = Callbacks.stop(state.callbacks, ref)
    load_changed(%{state | requests: requests, callbacks: callbacks}) |> drained?()
  end

  defp fail_all(state, error) do
    for from <- state.waiters, do: GenServer.reply(from, {:error, error})
    state = %{state | waiters: [], queue: :queue.new()}
    Enum.reduce(Requests.refs(state.requests), state, &finish(&2, &1, {:error, error}))
  end

  # The deadlines of the requests held, and the lives of their callers on this node,
  # are watched by one sweep every @sweep_ms while there are any, not by a timer and a
  # monitor each: those were about a third of the Worker's cost per call. A caller
  # waiting for its reply keeps its own deadline to the millisecond (PortBridge.Request)
  # and sends cancel then; the sweep abandons, up to @sweep_ms late, what nobody waits
  # for any more (an async request not awaited, a caller that died) and cancels it in
  # the Python. A caller on another node is monitored.
  @sweep_ms 100

  defp sweep_later(%State{sweep: nil} = state) do
    if Requests.size(state.requests) > 0,
      do: %{state | sweep: Process.send_after(self(), :sweep, @sweep_ms)},
      else: state
  end

  defp sweep_later(state), do: state

  # The pool's load hook, told how many requests this Worker holds.
  defp load_changed(%State{config: %{on_load: nil}} = state), do: state

  defp load_changed(%State{config: %{on_load: on_load}} = state) do
    on_load.(Requests.size(state.requests))
    state
  end
end
