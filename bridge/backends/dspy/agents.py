"""Callbacks into the client: ReAct tools, BestOfN / Refine rewards and metrics, declared as data.

A client never sends code. It declares what the worker may call back:

* tools, in the function-calling convention (``create_program`` with
  ``module: "ReAct"``)::

      {"name": "add", "description": "Adds two numbers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, ...}, "required": [...]}}

  Each becomes a ``dspy.Tool`` whose function checks the arguments the LM
  chose against ``parameters`` (``bridge.schema``'s subset of JSON Schema),
  then calls the client back under the tool's name with those arguments; the
  result (any JSON value) is the observation. Invalid arguments and a
  callback that fails on the client's side (an ``execution`` error) become
  the observation ``Execution error in <tool>: <message>``, as a Python
  tool's exception does in DSPy (without DSPy's traceback of the worker).
* a reward (``reward_fn: {"callback": name}`` of ``BestOfN`` and ``Refine``):
  called with ``{"inputs": {...}, "prediction": {...}}``, answers a number;
* a metric (``metric: {"callback": name}`` of ``evaluate_program`` and
  ``optimize_program``): called with ``{"example": {"inputs", "outputs"},
  "prediction": {...}}``, answers a number, a bool, or ``{"score", "feedback"}``.

Only declared names are ever called, and only from the request that runs
them: the request's ``ctx.callback`` reaches DSPy's code through a DSPy
setting (``inrequest.CALLBACK``) that DSPy copies into the threads its optimisers and
``Evaluate`` start. Only the client function's own failure (an ``execution``
error) is something a run goes on from (an observation, a failed example);
any other (timeout, cancel, shutdown, a name the client did not register)
stops the whole run with that error (``Interrupted``, which DSPy's ``except
Exception`` blocks cannot swallow). Imported after the gate.
"""

from __future__ import annotations

import json
import re

import dspy

from ... import schema as json_schema
from ...errors import BridgeError, RegistrationError, validation_error
from .inrequest import CALLBACK, Interrupted, json_fields

TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MAX_TOOLS = 32
MAX_TOOL_DESC = 2000
MAX_PARAMETERS_CHARS = 20_000
DEFAULT_MAX_ITERS = 20  # dspy.ReAct's
FAILED = "execution"  # the client's function failed: the one callback error a run goes on from


def call_back(name: str, args: dict):
    """Ask the client (the running request's ``ctx.callback``); an interrupting failure stops the run."""
    callback = dspy.settings.get(CALLBACK)
    if callback is None:
        raise Interrupted(BridgeError("execution", "no_callbacks", f"{name!r} is a client callback, and this worker "
                                      "cannot call its client back"))
    try:
        return callback(name, args)
    except BridgeError as exc:
        if exc.category != FAILED:  # timeout, cancel, shutdown, no such function on the client...
            raise Interrupted(exc) from None
        raise


# -- tools ----------------------------------------------------------------------------

def check_tools(tools, path: str = "args.tools") -> list[dict]:
    """Declared tools, checked (names, descriptions, parameter schemas); returns them in canonical form."""
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise validation_error("bad_tools", f"{path}: a list of 1 to {MAX_TOOLS} tools", path=path)
    checked, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"{path}[{i}]"
        if not isinstance(tool, dict) or set(tool) - {"name", "description", "parameters"}:
            raise validation_error("bad_tools", f"{where}: a tool is {{name, description, parameters}}", path=where)
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name) or name == "finish":
            raise validation_error("bad_tools", f"{where}.name: letters, digits, _ and -, at most 64, not 'finish' "
                                   "(ReAct's own)", path=f"{where}.name")
        if name in seen:
            raise validation_error("bad_tools", f"{where}.name: {name!r} is declared twice", path=f"{where}.name")
        seen.add(name)
        desc = tool.get("description", "")
        if not isinstance(desc, str) or len(desc) > MAX_TOOL_DESC:
            raise validation_error("bad_tools", f"{where}.description: a string of at most {MAX_TOOL_DESC} "
                                   "characters", path=f"{where}.description")
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        checked.append({"name": name, "description": desc, "parameters": _check_parameters(parameters, where)})
    return checked


def _check_parameters(parameters, where: str) -> dict:
    path = f"{where}.parameters"
    if not isinstance(parameters, dict) or parameters.get("type") != "object" or \
            len(json.dumps(parameters)) > MAX_PARAMETERS_CHARS:
        raise validation_error("bad_tools", f"{path}: a JSON Schema object ({{\"type\": \"object\", \"properties\": "
                               f"...}}) of at most {MAX_PARAMETERS_CHARS} characters", path=path)
    try:
        json_schema.check_schema(parameters, path)
    except (RegistrationError, re.error, TypeError, AttributeError) as exc:
        raise validation_error("bad_tools", f"{path}: {exc}; the keywords understood are "
                               f"{sorted(json_schema.KEYWORDS)}", path=path) from None
    return parameters


class CallbackTool(dspy.Tool):
    """A ``dspy.Tool`` whose function checks the arguments against the whole ``parameters`` schema itself.

    DSPy's own check (each argument against its property's schema, with
    jsonschema) would answer a bad argument with a traceback of the worker.
    """

    def _validate_and_parse_args(self, **kwargs):
        return kwargs


def tool(decl: dict) -> "dspy.Tool":
    """A ``dspy.Tool`` that checks its arguments, then calls the client back under its name."""
    name, parameters = decl["name"], decl["parameters"]

    def call(**kwargs):
        try:
            json_schema.validate(parameters, kwargs, path=name)
            return call_back(name, kwargs)
        except BridgeError as exc:  # bad arguments, or the client's tool failed: the LM reads why
            return f"Execution error in {name}: {exc.message}"

    return CallbackTool(call, name=name, desc=decl["description"] or None,
                        args=dict(parameters.get("properties", {})), arg_types={})


def react(signature, tools: list[dict], max_iters: int) -> "dspy.ReAct":
    return dspy.ReAct(signature, tools=[tool(t) for t in tools], max_iters=max_iters)


# -- rewards and metrics ------------------------------------------------------------------

def check_callback_ref(doc, path: str) -> str:
    if not isinstance(doc, dict) or set(doc) != {"callback"} or not isinstance(doc["callback"], str) or \
            not TOOL_NAME.match(doc["callback"]):
        raise validation_error("bad_callback", f"{path}: {{\"callback\": \"<name>\"}} (letters, digits, _ and -)",
                               path=path)
    return doc["callback"]


def _number(value, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise BridgeError("execution", "bad_callback_result", f"callback {name!r} must answer a number, got "
                      f"{type(value).__name__}", {"callback": name})


class _OwnTrace:
    """BestOfN and Refine add their best attempt's trace to DSPy's; a worker runs without one (trace=None)."""

    def forward(self, **kwargs):
        if dspy.settings.trace is None:
            with dspy.context(trace=[]):
                return super().forward(**kwargs)  # type: ignore[misc]
        return super().forward(**kwargs)  # type: ignore[misc]


class BestOfN(_OwnTrace, dspy.BestOfN):
    pass


class Refine(_OwnTrace, dspy.Refine):
    pass


def wrapper(module_name: str, inner, options: dict):
    """BestOfN or Refine around ``inner``, asking the client's reward callback."""
    cls = BestOfN if module_name == "BestOfN" else Refine
    return cls(module=inner, N=options["N"], reward_fn=reward(options["reward_fn"]["callback"]),
               threshold=options["threshold"], fail_count=options.get("fail_count"))


def reward(name: str):
    """``reward_fn(inputs, prediction) -> float`` for BestOfN and Refine: the client's answer."""

    def reward_fn(inputs: dict, prediction) -> float:
        args = {"inputs": json_fields(inputs), "prediction": json_fields(prediction)}
        return _number(call_back(name, args), name)

    return reward_fn


def metric_grade(name: str):
    """``grade(example, prediction) -> (score, feedback())`` asking the client (``scoring.Metric`` wraps it)."""

    def grade(example, prediction):
        args = {"example": {"inputs": json_fields(example.inputs()), "outputs": json_fields(example.labels())},
                "prediction": json_fields(prediction)}
        answer = call_back(name, args)
        feedback = None
        if isinstance(answer, dict) and "score" in answer and set(answer) <= {"score", "feedback"}:
            feedback = answer.get("feedback")
            if feedback is not None and not isinstance(feedback, str):
                raise BridgeError("execution", "bad_callback_result", f"callback {name!r}: feedback must be a "
                                  "string", {"callback": name})
            answer = answer["score"]
        score = _number(answer, name)
        return score, lambda: feedback if feedback is not None else f"score {score}"

    return grade
