defmodule PortBridge.SecretTest do
  use PortBridge.TestCase, async: true

  import ExUnit.CaptureLog
  alias PortBridge.{Secret, SecretScan}

  @key "sk-test-5ecret-key-0123456789"

  def vault_key(suffix \\ ""), do: "sk-test-5ecret-key-0123456789" <> suffix
  def vault_raise, do: raise(ArgumentError, "bad key sk-test-5ecret-key-0123456789")

  defp var do
    var = "PORTBRIDGE_TEST_KEY_#{System.unique_integer([:positive])}"
    on_exit(fn -> System.delete_env(var) end)
    var
  end

  describe "new!/2" do
    test "references and strings; anything else names the option, never the value" do
      assert %Secret{source: {:system, "V"}, option: :api_key} =
               Secret.new!({:system, "V"}, :api_key)

      assert %Secret{} = Secret.new!(&vault_key/0, :api_key)
      assert %Secret{} = Secret.new!({__MODULE__, :vault_key, ["-a"]}, :api_key)
      assert %Secret{source: {:value, @key}} = Secret.new!(@key, :api_key)
      secret = Secret.new!(@key, :api_key)
      assert Secret.new!(secret, :other) == secret

      for bad <- [String.to_charlist(@key), {:system, ""}, 42, fn _ -> @key end, "", %{key: @key}] do
        error = assert_raise ArgumentError, fn -> Secret.new!(bad, :api_key) end
        assert error.message =~ ":api_key must be a string, {:system, \"VAR\"}"
        refute error.message =~ @key
      end
    end
  end

  describe "resolve/1" do
    test "an environment variable, read each time" do
      var = var()
      secret = Secret.new!({:system, var}, :api_key)
      System.put_env(var, @key)
      assert Secret.resolve(secret) == {:ok, @key}
      System.put_env(var, "rotated")
      assert Secret.resolve(secret) == {:ok, "rotated"}
    end

    test "an unset or empty variable is a validation error naming the option and the variable" do
      var = var()
      secret = Secret.new!({:system, var}, :api_key)

      assert {:error, %Error{category: :validation, code: "secret_unavailable"} = error} =
               Secret.resolve(secret)

      assert error.message == ":api_key: the environment variable #{var} is not set"
      System.put_env(var, "")
      assert {:error, %Error{message: message}} = Secret.resolve(secret)
      assert message =~ "is empty"
    end

    test "functions and MFAs; one that raises, exits, throws or returns no string never leaks" do
      assert Secret.resolve(Secret.new!(&vault_key/0, :api_key)) == {:ok, @key}
      assert Secret.resolve(Secret.new!(fn -> @key end, :api_key)) == {:ok, @key}

      assert Secret.resolve(Secret.new!({__MODULE__, :vault_key, ["!"]}, :api_key)) ==
               {:ok, @key <> "!"}

      for {source, why} <- [
            {&__MODULE__.vault_raise/0,
             "&PortBridge.SecretTest.vault_raise/0 raised ArgumentError"},
            {{__MODULE__, :vault_raise, []},
             "PortBridge.SecretTest.vault_raise/0 raised ArgumentError"},
            {fn -> exit(@key) end, "the function given exited"},
            {fn -> throw(@key) end, "the function given threw"},
            {fn -> String.to_charlist(@key) end,
             "the function given returned a list, not a string"},
            {fn -> "" end, "the function given returned an empty string"}
          ] do
        assert {:error, %Error{category: :validation} = error} =
                 Secret.resolve(Secret.new!(source, :api_key))

        assert error.message == ":api_key: " <> why
        refute inspect(error) =~ @key
      end
    end
  end

  test "inspect shows where a secret comes from, never its value" do
    assert inspect(Secret.new!({:system, "OPENAI_API_KEY"}, :api_key)) ==
             ~s(#PortBridge.Secret<api_key: {:system, "OPENAI_API_KEY"}>)

    assert inspect(Secret.new!(@key, :api_key)) == "#PortBridge.Secret<api_key: **redacted**>"

    assert inspect(Secret.new!({__MODULE__, :vault_key, [@key]}, :api_key)) ==
             "#PortBridge.Secret<api_key: PortBridge.SecretTest.vault_key/1>"

    assert inspect(%{"api_key" => Secret.new!(fn -> @key end, :api_key)}) =~
             "#PortBridge.Secret<api_key: the function given>"
  end

  test "reveal/1 resolves every secret in a frame's arguments; redact/1 hides them" do
    var = var()
    System.put_env(var, @key)
    args = %{"model" => "m", "api_key" => Secret.new!({:system, var}, :api_key), "n" => [1]}
    assert Secret.any?(args)
    refute Secret.any?(%{"model" => "m", "list" => [%{"x" => 1}]})
    assert Secret.reveal(args) == {:ok, %{args | "api_key" => @key}}

    assert Secret.redact({:state, [args]}) ==
             {:state, [%{args | "api_key" => inspect(args["api_key"])}]}

    assert %Error{details: %{}} = Secret.redact(%Error{details: %{"k" => Secret.new!(@key, :k)}})

    System.delete_env(var)
    assert {:error, %Error{code: "secret_unavailable"}} = Secret.reveal(args)
  end

  test "a process that crashes holding a plain-string secret logs no key" do
    secret = Secret.new!(@key, :api_key)

    log =
      capture_log(fn ->
        {:ok, pid} = Agent.start(fn -> %{lm: %{"api_key" => secret}} end)
        ref = Process.monitor(pid)
        Agent.cast(pid, fn _ -> raise "boom" end)
        assert_receive {:DOWN, ^ref, _, _, _}, 5_000
        Logger.flush()
      end)

    assert log =~ "boom"
    assert log =~ "#PortBridge.Secret<api_key: **redacted**>"
    refute log =~ @key
  end

  test "the scanner finds a key held in process state, a dictionary or an ETS table" do
    needle = "needle-#{System.unique_integer([:positive])}"
    {:ok, agent} = Agent.start_link(fn -> %{deep: [{:x, "pre" <> needle <> "post"}]} end)
    assert {:process, agent, :state} in SecretScan.holders(needle)
    Agent.update(agent, fn _ -> nil end)
    refute {:process, agent, :state} in SecretScan.holders(needle)

    table = :ets.new(:scan_test, [:public])
    :ets.insert(table, {1, fn -> needle end})
    assert {:ets, :scan_test} in SecretScan.holders(needle)
  end
end
