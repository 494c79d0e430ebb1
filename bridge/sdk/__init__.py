"""Your own Python as worker commands (``@command``) and DSPy programs (``@program``).

    from bridge.sdk import command

    @command
    def add(a: int, b: int = 1) -> int:
        \"\"\"Add two integers.\"\"\"
        return a + b

``portbridge worker --expose mypkg.mathcmds`` imports that module and serves
``mathcmds.add``: the module's last name, a dot, the function's name
(``@command(name="plus")`` renames the part after the dot; ``--expose
mypkg.mathcmds=math`` the part before it). Installed packages can list modules
in the ``portbridge.commands`` entry-point group instead (``math =
"mypkg.mathcmds"``). Only the worker's operator chooses modules: a client can
call what was exposed and nothing else.

- Arguments are checked against the schema derived from the type hints before
  the function runs (``bridge.sdk.hints``): str, int, float, bool, list[...],
  dict[str, ...], Optional/unions, Literal, Enum, TypedDict, dataclasses (built
  from their maps); ``Annotated[int, "what it is", Schema(minimum=1)]`` adds
  a description and schema keywords. ``describe`` shows the
  schema and the docstring; a Google-style ``Args:`` section describes each
  argument.
- The return value is the result (dataclasses, Enum members, tuples and numpy
  arrays are converted). A generator streams: each yielded value is a ``chunk``
  event ``{"value": item}``, and what the generator returns is the result.
  ``async def`` functions run on an event loop of their own, cancelled at
  once when their request is.
- A parameter annotated ``Context`` receives the request's context instead of
  an argument: ``progress``, this module's ``state`` in the session, the
  ``deadline``, cancellation (``cancelled``, ``check``, ``wait``) and callbacks.
  It is the worker's own request context (``bridge.context.Context``), scoped
  to the module's namespace.
- A ``ValueError`` is a ``validation`` error (the function refused its input),
  any other exception an ``execution`` error; the client sees the message, and
  the traceback only from a worker started with ``--debug``. ``BridgeError``
  (re-exported here) picks any category of protocol/errors.json.
- ``cpu_bound=True`` marks a function that holds the GIL while it computes:
  ``describe`` says so, so that a client can send it to a pool of Python
  processes that each run one request at a time (the Elixir ``PortBridge.Pool``
  with ``strategy: :exclusive``).

Your own ``dspy.Module`` classes are programs the same way (``bridge.sdk.programs``)::

    @program
    class MultiHop(dspy.Module):
        \"\"\"Answer with several searches.\"\"\"
        def __init__(self, hops: int = 2): ...
        def forward(self, question: str, ctx: Context | None = None): ...

``create_program {"module": "myprogs.MultiHop", "init": {"hops": 2}}`` builds
one on a worker that exposes ``myprogs`` (``init`` checked against the hints of
``__init__``, inputs against those of ``forward``), and every program command
(execute, stream, evaluate, optimise, export/import) takes it. ``describe``
lists exposed programs under ``backends.dspy.exposed_programs``.
"""

from ..context import Context
from ..errors import BridgeError
from .commands import command
from .hints import Schema
from .programs import program

__all__ = ["command", "program", "Context", "Schema", "BridgeError"]
