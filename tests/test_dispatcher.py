"""The dispatcher and the runtime without a transport: payloads in, reply payloads out.

Each layer can be tested without the next: here no process, no descriptor and
no worker loop, only ``Runtime`` (given a ``write`` that collects payloads) and
the ``Dispatcher`` routing frames into it. Every final reply, whichever path
produced it, comes out of ``Replies.final``.
"""

from __future__ import annotations

import threading

import pytest

from bridge import codecs, core_commands
from bridge.context import HOLD_MOST
from bridge.dispatcher import Dispatcher
from bridge.errors import BridgeError
from bridge.limits import Limits
from bridge.registry import ANY_ARGS, Registry
from bridge.runtime import Runtime

WAIT_S = 10.0


class Output:
    """The runtime's ``write``: decoded frames, and a way to wait for the next ones."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self._changed = threading.Condition()

    def write(self, payload: bytes) -> None:
        """One payload, without the frame's length header (framing is the transport's)."""
        with self._changed:
            self.frames.append(codecs.detect(payload).decode(payload))
            self._changed.notify_all()

    def wait_for(self, count: int) -> list[dict]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.frames) >= count, WAIT_S), self.frames
            return list(self.frames)


@pytest.fixture
def routed():
    """(dispatcher, output): the core commands plus a few that misbehave on purpose."""
    registry = Registry()
    output = Output()
    runtime = Runtime(registry, output.write, Limits())
    core_commands.register(registry, runtime)

    @registry.command("bytes_inline", control=True)
    def bytes_inline(ctx, args):
        return {"blob": b"\x00\x01"}  # JSON cannot carry bytes

    @registry.command("bytes_scheduled", schema=ANY_ARGS)
    def bytes_scheduled(ctx, args):
        return {"blob": b"\x00\x01"}

    @registry.command("unencodable_error", schema=ANY_ARGS)
    def unencodable_error(ctx, args):
        raise BridgeError("validation", "bad_input", "the details cannot be sent", {"what": object()})

    registry.complete.set()
    yield Dispatcher(runtime), output
    runtime.stop_accepting()
    runtime.drain(0.0)


def send(dispatcher: Dispatcher, doc: dict, fmt: str = "json") -> None:
    dispatcher.handle_payload(codecs.get(fmt).encode(doc))


def test_a_control_command_is_answered_before_handle_payload_returns(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": 1, "command": "ping", "meta": {"trace_id": "t-1"}})
    [reply] = output.frames
    assert reply["id"] == 1 and reply["success"] and reply["result"]["pong"]
    assert reply["meta"]["trace_id"] == "t-1" and reply["meta"]["elapsed_us"] >= 0


def test_a_scheduled_request_is_answered_from_a_handler_thread_in_its_format(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": "e", "command": "echo", "args": {"x": [1, 2]}}, "msgpack")
    [reply] = output.wait_for(1)
    assert (reply["id"], reply["result"]) == ("e", {"x": [1, 2]})


@pytest.mark.parametrize("command", ["bytes_inline", "bytes_scheduled"])
def test_a_result_the_format_cannot_carry_is_a_serialization_error_on_both_paths(routed, command):
    dispatcher, output = routed
    send(dispatcher, {"id": 7, "command": command, "meta": {"trace_id": "t-7"}})
    [reply] = output.wait_for(1)
    assert (reply["error"]["category"], reply["error"]["code"]) == ("serialization", "unencodable_result")
    assert reply["meta"]["trace_id"] == "t-7"
    # The reading thread's encoder that failed is not reused: the next reply encodes.
    send(dispatcher, {"id": 8, "command": "ping"})
    assert output.wait_for(2)[1]["success"]


def test_a_result_msgpack_can_carry_is_sent_as_is(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": 1, "command": "bytes_inline"}, "msgpack")
    assert output.frames[0]["result"] == {"blob": b"\x00\x01"}


def test_an_error_whose_details_cannot_be_encoded_still_gets_its_reply(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": 3, "command": "unencodable_error"})
    [reply] = output.wait_for(1)
    assert reply["id"] == 3 and reply["error"]["category"] == "serialization"


def test_refused_requests_and_frames_are_answered_and_counted(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": 1, "command": "no_such_command"})
    dispatcher.handle_payload(b"\xc3")  # a MessagePack true: not a map
    dispatcher.handle_payload(b'{"id": 2, "command": ')  # cut short: the id is recovered
    dispatcher.handle_empty()
    replies = output.frames
    assert [(r["id"], r["error"]["code"]) for r in replies] == [
        (1, "unknown_command"), (None, "unknown_format"), (2, "undecodable"), (None, "empty_frame")]
    send(dispatcher, {"id": 4, "command": "stats"})
    stats = output.frames[-1]["result"]
    assert stats["errors"] == {"not_found": 1, "protocol": 3}
    assert stats["frames"]["in"] == 5 and stats["frames"]["out"] == 4


def test_worker_level_events_use_the_format_of_the_last_frame(routed):
    dispatcher, output = routed
    send(dispatcher, {"id": 1, "command": "ping"}, "msgpack")
    dispatcher.replies.event("log", {"message": "hello"})
    assert output.frames[-1] == {"id": None, "event": "log", "data": {"message": "hello"}}
    assert dispatcher.last_codec is codecs.MSGPACK


def test_shutdown_refuses_new_work_but_still_answers_control_commands(routed):
    dispatcher, output = routed
    dispatcher.runtime.stop_accepting()
    send(dispatcher, {"id": 1, "command": "echo"})
    send(dispatcher, {"id": 2, "command": "health"})
    first, second = output.frames
    assert first["error"]["category"] == "shutdown"
    assert second["result"]["status"] == "shutting_down"



# -- events that wait for the request's next frame (Context.emit_soon) ---------------------------------


def test_held_events_go_out_with_the_next_frame_in_one_write():
    registry = Registry()
    output = Output()
    writes: list[list[str]] = []  # what each write_frames call carried: each frame's event or "reply"

    def write_frames(payloads: list[bytes]) -> None:
        frames = [codecs.JSON.decode(p) for p in payloads]
        writes.append([f.get("event", "reply") for f in frames])
        for payload in payloads:
            output.write(payload)

    runtime = Runtime(registry, output.write, Limits(), write_frames=write_frames)

    @registry.command("soon", schema=ANY_ARGS)
    def soon(ctx, args):
        ctx.emit_soon("a", {"n": 1})
        ctx.emit_soon("b", {"n": 2})
        if args.get("then_emit"):
            ctx.emit("progress", {"done": 1})  # an event sent at once: the held ones go first
        for i in range(args.get("more", 0)):
            ctx.emit_soon("c", {"n": i})
        return {"ok": True}

    dispatcher = Dispatcher(runtime)
    send(dispatcher, {"id": 1, "command": "soon"})
    frames = output.wait_for(3)
    assert [f.get("event", "reply") for f in frames] == ["a", "b", "reply"]
    assert writes == [["a", "b", "reply"]]  # with the reply, in one write

    send(dispatcher, {"id": 2, "command": "soon", "args": {"then_emit": True}})
    frames = output.wait_for(7)[3:]
    assert [f.get("event", "reply") for f in frames] == ["a", "b", "progress", "reply"]
    assert writes[1] == ["a", "b", "progress"]  # with the event sent at once, in one write

    # At most HOLD_MOST wait: then they go out together, and the rest with the reply.
    send(dispatcher, {"id": 3, "command": "soon", "args": {"more": HOLD_MOST}})
    frames = output.wait_for(7 + 2 + HOLD_MOST + 1)[7:]
    assert [f["id"] for f in frames] == [3] * (HOLD_MOST + 3)
    assert [len(w) for w in writes[2:]] == [HOLD_MOST, 3]
    runtime.stop_accepting()
    runtime.drain(0.0)
