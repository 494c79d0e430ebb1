"""A backend that misbehaves on purpose, loaded with ``--backend-module``.

Each command does one thing a real backend or library might do wrong: print to
stdout, make noise every other way Python code can (``noise``), spawn a child that writes to stdout or reads stdin, raise any kind of
exception, hang forever, log, emit many events, return values the frame format
cannot carry; with ``PORTBRIDGE_TEST_SHUTDOWN_HANGS=1`` in its environment, its
``shutdown()`` never returns. The tests prove the worker survives each.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import warnings

from bridge.backends import Backend
from bridge.errors import BridgeError
from bridge.registry import ANY_ARGS

log = logging.getLogger("tests.misbehaving")


class BrokenStr(Exception):
    """An exception whose str() itself raises (libraries do ship these)."""

    def __str__(self):
        raise RuntimeError("__str__ failed")


class NonStrStr(Exception):
    def __str__(self):
        return 42  # TypeError: __str__ returned non-string


EXCEPTIONS = {
    "ValueError": lambda: ValueError("a plain bug"),
    "KeyError": lambda: KeyError("missing"),
    "RecursionError": lambda: RecursionError("too deep"),
    "MemoryError": lambda: MemoryError(),
    "KeyboardInterrupt": lambda: KeyboardInterrupt(),
    "SystemExit": lambda: SystemExit(3),
    "GeneratorExit": lambda: GeneratorExit(),
    "BaseException": lambda: BaseException("the root of it all"),
    "BridgeError": lambda: BridgeError("execution", "user_program_failed", "the program raised"),
    "BrokenStr": lambda: BrokenStr(),
    "NonStrStr": lambda: NonStrStr(),
    "StopIteration": lambda: StopIteration("done"),
    "ExceptionGroup": lambda: ExceptionGroup("several", [ValueError("one"), KeyError("two")]),
    "BaseExceptionGroup": lambda: BaseExceptionGroup("several", [KeyboardInterrupt(), ValueError("x")]),
    "HugeMessage": lambda: ValueError("x" * 5_000_000),
}


class Misbehaving(Backend):
    name = "misbehaving"

    def shutdown(self) -> None:
        if os.environ.get("PORTBRIDGE_TEST_SHUTDOWN_HANGS"):  # set only in a test worker's environment
            threading.Event().wait()  # a shutdown hook that never returns

    def register(self, registry) -> None:
        cmd = lambda name, schema=ANY_ARGS: registry.command(name, schema=schema, backend=self.name)  # noqa: E731
        cmd("print_stdout")(print_stdout)
        cmd("noise")(noise)
        cmd("raise", {
            "type": "object",
            "properties": {"kind": {"enum": sorted(EXCEPTIONS)}},
            "required": ["kind"],
        })(raise_)
        cmd("hang")(hang)
        cmd("log")(log_)
        cmd("emit")(emit)
        cmd("result")(result)
        cmd("leak")(leak)
        cmd("spawn_child")(spawn_child)
        cmd("signal_this_thread", {
            "type": "object",
            "properties": {"signal": {"enum": ["SIGTERM", "SIGINT"]}},
            "required": ["signal"],
        })(signal_this_thread)


def print_stdout(ctx, args):
    """Write to stdout every way a library might, then answer."""
    print("print() to stdout")
    sys.stdout.write("sys.stdout.write\n")
    sys.stdout.flush()
    sys.__stdout__.write("sys.__stdout__.write\n")
    sys.__stdout__.flush()
    os.write(1, b"os.write(1)\n")
    child = subprocess.run(
        [sys.executable, "-c", "import sys; print('child stdout'); print(repr(sys.stdin.read(10)))"],
        timeout=10,
    )
    return {"printed": True, "child_exit": child.returncode}


class _FailingFinalizer:
    def __del__(self):
        raise RuntimeError("a finaliser failed")


def noise(ctx, args):
    """Say things every way Python code does besides logging, without touching a descriptor."""
    print("print() from a handler")
    sys.stderr.write("a progress bar\r 50%\r100% done\n")
    warnings.warn("a library's warning", UserWarning, stacklevel=1)
    log.warning("a library's record")
    thread = threading.Thread(target=lambda: 1 / 0, name="noisy-thread")
    thread.start()
    thread.join()
    _FailingFinalizer()  # collected at once: its __del__ raises where nobody can catch it
    return {"noisy": True}


def raise_(ctx, args):
    raise EXCEPTIONS[args["kind"]]()


def hang(ctx, args):
    """Block forever and ignore cancellation (an uninterruptible call)."""
    threading.Event().wait()


def signal_this_thread(ctx, args):
    """Direct a signal at the handler's own thread: what the kernel does with a process-directed
    signal whenever it picks a thread other than the main one."""
    signal.pthread_kill(threading.get_ident(), getattr(signal, args["signal"]))
    return {"sent": args["signal"]}


def log_(ctx, args):
    getattr(log, args.get("level", "warning"))(args.get("message", "a message"))
    return {"logged": True}


def emit(ctx, args):
    for i in range(args.get("n", 3)):
        ctx.emit("chunk", {"i": i, "text": args.get("text", "x")})
    return {"emitted": args.get("n", 3)}


def result(ctx, args):
    """Return a value chosen by name, including ones a format cannot carry."""
    values = {
        "bytes": b"\x00\x01",
        "big_int": 2**70,
        "int_key": {1: "one"},
        "set": {1, 2},
        "nan": float("nan"),
    }
    return {"value": values[args["kind"]]}


def spawn_child(ctx, args):
    """Start a long-lived child (which starts a grandchild when asked); hang when asked, else answer its pid."""
    code = "import time; time.sleep(600)"
    if args.get("grandchild"):
        code = ("import subprocess, sys, time; "
                "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                "print(g.pid, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE if args.get("grandchild") else None)
    pids = [child.pid]
    if args.get("grandchild"):
        pids.append(int(child.stdout.readline()))
    if args.get("hang"):
        ctx.emit("progress", {"pids": pids})
        threading.Event().wait()
    return {"pids": pids}


def leak(ctx, args):
    """Handle a secret the careless way: log it, put it in a nested result and an exception.

    With ``register: false`` it does not even declare it a secret: only a key the
    worker already knows (from configure_lm) can be masked then."""
    from bridge.redaction import register_secret

    secret = args["secret"]
    if args.get("register", True):
        register_secret(secret)
    log.warning("calling the provider with key %s", secret)
    raise ValueError(f"provider said: invalid key {secret}")


backend = Misbehaving()
