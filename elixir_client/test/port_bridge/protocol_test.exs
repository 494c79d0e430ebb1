defmodule PortBridge.ProtocolTest do
  use ExUnit.Case, async: true
  alias PortBridge.{Error, Protocol}

  test "a request carries only the fields that are set" do
    assert Protocol.request(1, "ping", %{}) ==
             {:ok, %{"id" => 1, "command" => "ping", "args" => %{}}}

    assert {:ok, %{"session_id" => "s", "meta" => %{"trace_id" => "t"}}} =
             Protocol.request("r-1", :echo, %{}, session_id: "s", meta: %{"trace_id" => "t"})
  end

  test "the worker's limits are checked before sending" do
    long = String.duplicate("é", 129)

    assert {:error, %Error{category: :protocol, code: "invalid_id"}} =
             Protocol.request(long, "ping", %{})

    assert {:ok, _} = Protocol.request(String.duplicate("é", 128), "ping", %{})

    assert {:error, %Error{code: "invalid_id"}} =
             Protocol.request(Bitwise.bsl(1, 63), "ping", %{})

    assert {:error, %Error{code: "invalid_command"}} = Protocol.request(1, "", %{})
    assert {:error, %Error{code: "invalid_args"}} = Protocol.request(1, "echo", [1])

    assert {:error, %Error{code: "invalid_session_id"}} =
             Protocol.request(1, "echo", %{}, session_id: String.duplicate("s", 257))

    assert {:error, %Error{code: "invalid_timeout"}} =
             Protocol.request(1, "echo", %{}, timeout_ms: 0)

    assert {:error, %Error{code: "invalid_meta"}} =
             Protocol.request(1, "echo", %{}, meta: Map.new(1..65, &{"k#{&1}", &1}))
  end

  test "frames from the worker are told apart" do
    assert {:reply, 1, {:ok, %{"pong" => true}}, %{"elapsed_us" => 3}} =
             Protocol.classify(%{
               "id" => 1,
               "success" => true,
               "result" => %{"pong" => true},
               "meta" => %{"elapsed_us" => 3}
             })

    assert {:reply, nil, {:error, %Error{category: :protocol, code: "empty_frame"}}, %{}} =
             Protocol.classify(%{
               "id" => nil,
               "success" => false,
               "error" => %{"category" => "protocol", "code" => "empty_frame", "message" => "m"}
             })

    assert {:event, 9, "chunk", %{"text" => "Par"}} =
             Protocol.classify(%{"id" => 9, "event" => "chunk", "data" => %{"text" => "Par"}})

    assert {:unknown, %{"what" => 1}} = Protocol.classify(%{"what" => 1})
  end

  test "ready must speak protocol 1" do
    assert {:ok, _} = Protocol.check_ready(%{"protocol" => 1})

    assert {:error, %Error{category: :initialization, code: "protocol_mismatch"}} =
             Protocol.check_ready(%{"protocol" => 2})
  end
end
