defmodule PortBridge.SecretsTest do
  # api_key: by reference, end to end: the real worker and its DSPy backend, a
  # loopback provider that refuses any other key, a pool that rebuilds the session
  # on a fresh Python; then every readable ETS table and process state of the node
  # (and of a cluster's second node) is searched for the key.
  use PortBridge.TestCase, async: true

  import PortBridge.ClusterCase, only: [two_node_cluster: 3]
  alias PortBridge.{Cluster, DSPy, LMServer, Pool, SecretScan}

  if reason = skip_reason(:dspy), do: @moduletag(skip: reason)
  @moduletag timeout: 120_000
  @compile {:no_warn_undefined, :telemetry}

  defp new_key,
    do: "sk-pbtest-#{System.unique_integer([:positive])}-#{:rand.uniform(1_000_000_000_000)}"

  defp env_var(value) do
    var = "PORTBRIDGE_TEST_KEY_#{System.unique_integer([:positive])}"
    System.put_env(var, value)
    on_exit(fn -> System.delete_env(var) end)
    var
  end

  defp start_pool do
    name = :"secrets_#{System.unique_integer([:positive])}"
    # Quiet: the refused key of one test is logged by the worker (on its stderr) as an error.
    opts = dspy_worker_opts(name: name, size: 1, worker_args: ["--log-level", "critical"])
    start_supervised!({Pool, opts}, id: name)
    name
  end

  defp lm(url, api_key, session),
    do: [model: "openai/loopback", api_base: url, api_key: api_key, session_id: session]

  defp run(pool, session) do
    DSPy.execute_program(pool, "qa", %{question: "Where is the key?"},
      session_id: session,
      timeout: 30_000
    )
  end

  test "a key from the environment reaches the provider and nothing on the node keeps it" do
    key = new_key()
    url = LMServer.start!(["--api-key", key])
    var = env_var(key)
    pool = start_pool()

    {:ok, _} = DSPy.configure_lm(pool, lm(url, {:system, var}, "s1"))

    {:ok, _} =
      DSPy.create_program(pool,
        signature: "question -> answer",
        program_id: "qa",
        session_id: "s1"
      )

    assert {:ok, %{"outputs" => %{"answer" => _}}} = run(pool, "s1")
    assert SecretScan.holders(key) == []

    # The same for a function and an MFA.
    {:ok, _} = DSPy.configure_lm(pool, lm(url, fn -> System.get_env(var) end, "s1"))
    assert {:ok, _} = run(pool, "s1")
    {:ok, _} = DSPy.configure_lm(pool, lm(url, {System, :get_env, [var]}, "s1"))
    assert {:ok, _} = run(pool, "s1")
    assert SecretScan.holders(key) == []

    # A key given as a plain string is kept (in the pool's records, to rebuild the
    # session): the scan finds that one, so it would have found the others.
    {:ok, _} = DSPy.configure_lm(pool, lm(url, key, "s2"))
    assert [_ | _] = SecretScan.holders(key)
    # ...yet :sys.get_status and inspect never show it.
    for %{pid: pid} <- Pool.info(pool), is_pid(pid) do
      refute inspect(:sys.get_status(pid), limit: :infinity, printable_limit: :infinity) =~ key
    end
  end

  test "a rebuilt session reads the reference again: a rotated key is the one sent" do
    key = new_key()
    url = LMServer.start!(["--api-key", key])
    var = env_var(key)
    pool = start_pool()
    {:ok, _} = DSPy.configure_lm(pool, lm(url, {:system, var}, "s"))

    {:ok, _} =
      DSPy.create_program(pool, signature: "question -> answer", program_id: "qa", session_id: "s")

    assert {:ok, _} = run(pool, "s")

    # The variable now holds a key the provider refuses: a fresh Python gets the
    # session back with the key read then, and the provider refuses it.
    System.put_env(var, "sk-revoked")
    kill9(ping_pid(pool, session_id: "s"))
    assert {:error, %Error{category: :lm_auth}} = run(pool, "s") |> retry_once(pool, "s")
  end

  # A request that met the dying Python itself (communication) is sent once more.
  defp retry_once({:error, %Error{category: :communication}}, pool, session),
    do: run(pool, session)

  defp retry_once(result, _pool, _session), do: result

  test "an unset variable or a raising function is a validation error that names the option" do
    pool = start_pool()
    var = "PORTBRIDGE_TEST_UNSET_#{System.unique_integer([:positive])}"

    assert {:error, %Error{category: :validation, code: "secret_unavailable", message: message}} =
             DSPy.configure_lm(pool, lm("http://127.0.0.1:9/v1", {:system, var}, "u"))

    assert message == ":api_key: the environment variable #{var} is not set"

    key = new_key()

    assert {:error, %Error{category: :validation, message: message}} =
             DSPy.configure_lm(
               pool,
               lm("http://127.0.0.1:9/v1", fn -> raise "bad #{key}" end, "u")
             )

    assert message == ":api_key: the function given raised RuntimeError"

    assert_raise ArgumentError, ~r/:api_key must be a string, \{:system, "VAR"\}/, fn ->
      DSPy.configure_lm(pool, lm("http://127.0.0.1:9/v1", ~c"sk-charlist", "u"))
    end
  end

  if reason = skip_reason(:cluster), do: @tag(skip: reason)

  test "in a cluster, neither node keeps the key: the copy of the records holds the reference" do
    key = new_key()
    url = LMServer.start!(["--api-key", key])
    var = env_var(key)
    name = :"secrets_cluster_#{System.unique_integer([:positive])}"
    peer = two_node_cluster("secrets", name, dspy_worker_opts(size: 1))
    # The Worker that builds the frame is on the session's owner: its environment.
    :ok = :erpc.call(peer, System, :put_env, [var, key])

    session = Enum.find(1..100, &(Cluster.owner(name, "u#{&1}") == peer)) |> then(&"u#{&1}")
    {:ok, _} = DSPy.configure_lm(name, lm(url, {:system, var}, session))

    {:ok, _} =
      DSPy.create_program(name,
        signature: "question -> answer",
        program_id: "qa",
        session_id: session
      )

    # The LM call is made on the peer; its telemetry comes on this node, to the caller.
    lm_calls = listen_lm_calls()
    assert {:ok, _} = run(name, session)

    if lm_calls,
      do: assert_received({:lm_call, %{model: "openai/loopback", session_id: ^session}})

    assert SecretScan.holders(key) == []
    assert :erpc.call(peer, SecretScan, :holders, [key, []]) == []
  end

  # [:port_bridge, :lm, :call] in this process, when telemetry is compiled in (nil if not).
  defp listen_lm_calls do
    if PortBridge.Telemetry.available?() do
      {:ok, _} = Application.ensure_all_started(:telemetry)
      id = "secrets-lm-#{inspect(self())}"
      event = [:port_bridge, :lm, :call]
      :ok = apply(:telemetry, :attach, [id, event, &__MODULE__.lm_call/4, self()])
      on_exit(fn -> apply(:telemetry, :detach, [id]) end)
      id
    end
  end

  @doc false
  def lm_call(_event, _measurements, metadata, test),
    do: if(self() == test, do: send(test, {:lm_call, metadata}))
end
