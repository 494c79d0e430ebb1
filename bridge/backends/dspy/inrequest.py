"""What DSPy code running inside a request shares with the request (a leaf: imports no sibling module).

* The ``dspy.context`` keys through which code deep inside a DSPy run (a
  ReAct tool, a reward, a metric, a retrieve step) finds what only the
  running request has: the client callback (``CALLBACK``), the scope's
  indexes (``INDEXES``), the caller its LM calls are admitted and reported
  for (``CALLER``), the request context the ``forward`` of an exposed
  ``dspy.Module`` class receives (``CONTEXT``, ``bridge.sdk.programs``) and,
  when asked for, the list a pipeline records its steps in (``STEP_TRACE``).
  DSPy copies its settings into the threads its optimisers and ``Evaluate``
  start, so these reach every thread of a run.
* ``Interrupted``: how the request's end (cancel, deadline, shutdown, a
  callback that cannot be answered) stops DSPy's work.
* ``json_value``: how DSPy's values (pydantic models included) become wire data.

The modules that build programs, run them and call the client all use these,
so they live here, below all of them, and no two of those modules import
each other to reach them.
"""

from __future__ import annotations

from pydantic_core import to_jsonable_python

from ...errors import BridgeError
from ...sdk.programs import SETTING as CONTEXT  # noqa: F401 -- the SDK reads it: one name for both sides

CALLBACK = "portbridge_callback"  # fn(name, args) -> result: the running request's ctx.callback
INDEXES = "portbridge_indexes"  # fn(index_id) -> retrieval.Index, in the running request's scope
STEP_TRACE = "portbridge_step_trace"  # a list a pipeline appends {step, inputs, outputs} to (trace: true)
CALLER = "portbridge_caller"  # bridge.lmcalls.Caller: the request and program LM calls are made for


class Interrupted(BaseException):
    """The request was answered (cancel, deadline, shutdown) while DSPy worked: stop the run.

    A BaseException on purpose: DSPy catches ``Exception`` from callbacks, from
    examples in its ParallelExecutor, from metrics and from ReAct's tools, and
    would count a cancel as one more failed example and carry on. It carries
    the request's error (``running.call_context`` raises it).
    """

    def __init__(self, error: BridgeError | None = None) -> None:
        super().__init__(error)
        self.error = error


def json_value(value):
    """Any output value (pydantic models included) as plain JSON data."""
    return to_jsonable_python(value, fallback=str)


def json_fields(values) -> dict:
    """A prediction's, an example's or a demo's fields as plain JSON data."""
    return {key: to_jsonable_python(value, fallback=str) for key, value in values.items()}
