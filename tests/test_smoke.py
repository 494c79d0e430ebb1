def test_ping(spawn):
    w = spawn()
    assert w.call("ping")["pong"] is True


def test_raw_echo(raw):
    w = raw()
    reply = w.request({"id": 1, "command": "echo", "args": {"b": b"\x00\xff"}}, fmt="msgpack")
    assert reply["result"] == {"b": b"\x00\xff"}
