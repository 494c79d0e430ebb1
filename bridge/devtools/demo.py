"""``portbridge demo``: a DSPy program driven through real frames, step by step.

It spawns ``portbridge worker`` exactly as an Erlang Port would, and sends
every step as a request frame: configure the LM (the built-in ``offline``
model unless ``--model`` names another), create a ChainOfThought program, run
it, run it again streaming ``chunk`` events, export it as JSON, and run a
ReAct agent whose tool is a function of this client (the worker calls it
back with a ``callback`` event; the demo answers with ``callback_result``).
Each step prints what went over the wire and how long it took. It needs no
network and no API key with the offline model.
"""

from __future__ import annotations

import sys
import time

import orjson

from .client import RemoteError, WorkerClient, WorkerExited

QUESTION = "What is the capital of France?"
STREAMED_QUESTION = "Why is the sky blue?"
PROGRAM_ID = "demo-qa"
AGENT_ID = "demo-agent"
AGENT_QUESTION = "What is the capital of Italy?"
CAPITALS = {"france": "Paris", "italy": "Rome", "japan": "Tokyo", "kenya": "Nairobi"}
CAPITAL_TOOL = {"name": "capital_of", "description": "Finds the capital city of a country.",
                "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                               "required": ["country"]}}


class Demo:
    def __init__(self, worker: WorkerClient) -> None:
        self.worker = worker
        self.step = 0

    def say(self, text: str = "", indent: int = 0) -> None:
        sys.stdout.write(" " * indent + text + "\n")
        sys.stdout.flush()

    def call(self, title: str, command: str, args: dict, **kw):
        self.step += 1
        self.say(f"{self.step}. {title}")
        self.say(f"-> {command} {orjson.dumps(args).decode()}", 3)
        started = time.perf_counter()
        result = self.worker.call(command, args, **kw)
        self.elapsed_ms = (time.perf_counter() - started) * 1000
        return result

    def done(self, text: str) -> None:
        self.say(f"<- {text} ({self.elapsed_ms:.0f} ms)", 3)
        self.say()


def _usage_line(usage: dict) -> str:
    parts = [f"{model}: {u.get('total_tokens', 0)} tokens in {u.get('lm_calls', 0)} LM call(s)"
             for model, u in usage.items()]
    return "; ".join(parts) or "no usage reported"


class _ChunkPrinter:
    """Prints chunk events as they arrive, one line per field."""

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.field = None
        self.count = 0

    def __call__(self, frame: dict) -> None:
        if frame.get("event") != "chunk":
            return
        data = frame["data"]
        self.count += 1
        if data["field"] != self.field:
            if self.field is not None:
                sys.stdout.write("\n")
            self.field = data["field"]
            sys.stdout.write(f"   ~ {self.field}: ")
        sys.stdout.write(data["text"])
        sys.stdout.flush()

    def finish(self) -> None:
        if self.field is not None:
            sys.stdout.write("\n")


def run(demo: Demo, model: str, api_base: str | None) -> None:
    lm_args = {"model": model, **({"api_base": api_base} if api_base else {})}
    config = demo.call("Configure the LM for the global scope (the first DSPy command waits for DSPy's "
                       "background import)", "configure_lm", lm_args)
    demo.done(f"model {config['model']}")
    if config["model"] == "offline":
        demo.say("(the offline model answers every output with a deterministic, type-valid value derived "
                 "from the prompt)", 3)
        demo.say()

    program = demo.call("Create a ChainOfThought program", "create_program",
                        {"program_id": PROGRAM_ID, "module": "ChainOfThought", "signature": "question -> answer",
                         "instructions": "Answer the question in one short sentence."})
    demo.done(f"program {program['program_id']}: {program['module']}({program['summary']})")

    result = demo.call("Run it", "execute_program", {"program_id": PROGRAM_ID, "inputs": {"question": QUESTION}})
    for name, value in result["outputs"].items():
        demo.say(f"{name}: {value}", 3)
    demo.done(_usage_line(result["usage"]))

    printer = _ChunkPrinter(demo)
    demo.step += 1
    demo.say(f"{demo.step}. Run it again, streaming")
    args = {"program_id": PROGRAM_ID, "inputs": {"question": STREAMED_QUESTION}, "stream": True}
    demo.say(f"-> execute_program {orjson.dumps(args).decode()}", 3)
    started = time.perf_counter()
    result = demo.worker.call("execute_program", args, on_event=printer)
    demo.elapsed_ms = (time.perf_counter() - started) * 1000
    printer.finish()
    demo.done(f"{printer.count} chunk events, then the final outputs {orjson.dumps(result['outputs']).decode()}")

    exported = demo.call("Export it as JSON (definition + learned state; no pickle, no LM settings)",
                         "export_program", {"program_id": PROGRAM_ID})["program"]
    text = orjson.dumps(exported, option=orjson.OPT_INDENT_2).decode()
    for line in text.splitlines():
        demo.say(line, 3)
    demo.done(f"{len(orjson.dumps(exported))} bytes; import_program rebuilds it in any worker")


def capital_of(args: dict) -> str:
    """The demo's own tool: the worker calls it back (a model may pass the country, or the whole question)."""
    text = str(args.get("country", "")).lower()
    found = [capital for country, capital in CAPITALS.items() if country in text]
    return found[0] if found else f"no capital known for {args.get('country')!r}"


def run_agent(demo: Demo) -> None:
    agent = demo.call("Create a ReAct agent whose tool lives in this client (declared as data: name, "
                      "description, JSON Schema)", "create_program",
                      {"program_id": AGENT_ID, "module": "ReAct", "signature": "question -> answer",
                       "tools": [CAPITAL_TOOL], "max_iters": 3})
    demo.done(f"program {agent['program_id']}: {agent['module']} with tool(s) "
              f"{', '.join(t['name'] for t in agent['tools'])}")

    def on_event(frame: dict) -> None:
        if frame.get("event") == "callback":
            data = frame["data"]
            budget = "no deadline" if data["timeout_ms"] is None else f"answer within {data['timeout_ms']} ms"
            demo.say(f"<~ callback {data['name']} {orjson.dumps(data['args']).decode()} ({budget})", 3)

    def tool(args: dict) -> str:
        answer = capital_of(args)
        demo.say(f"~> callback_result {orjson.dumps(answer).decode()}", 3)
        return answer

    result = demo.call("Run the agent: the worker calls the tool back, this client answers",
                       "execute_program", {"program_id": AGENT_ID, "inputs": {"question": AGENT_QUESTION}},
                       callbacks={"capital_of": tool}, on_event=on_event)
    for key, value in result["outputs"]["trajectory"].items():
        demo.say(f"{key}: {orjson.dumps(value).decode()}", 3)
    demo.say(f"answer: {result['outputs']['answer']}", 3)
    demo.done(_usage_line(result["usage"]))


def main(model: str = "offline", api_base: str | None = None, worker_args=()) -> int:
    started = time.perf_counter()
    try:
        with WorkerClient(list(worker_args)) as worker:
            demo = Demo(worker)
            demo.say(f"portbridge demo: worker pid {worker.pid} ready in "
                     f"{(time.perf_counter() - started) * 1000:.0f} ms; every step below is one request frame")
            demo.say()
            try:
                run(demo, model, api_base)
                if model == "offline":  # a real model would need the tool format explained; the offline one follows it
                    run_agent(demo)
            except RemoteError as exc:
                demo.say(f"<- error {exc.category}/{exc.code}: {exc.error.get('message')}", 3)
                return 1
            demo.say(f"done in {time.perf_counter() - started:.2f} s")
            return 0
    except (WorkerExited, TimeoutError) as exc:
        print(f"portbridge demo: {exc}", file=sys.stderr)
        return 2
