"""Backends that fail while loading, for ``--backend-module``.

``tests.support.broken_backends:register_raises`` registers one command, then
raises from ``register``. Importing this module raises whatever
``PORTBRIDGE_TEST_IMPORT_RAISES`` names (set only in a test worker's
environment): an ImportError, or a BaseException such as SystemExit, as a
module's top level sometimes does.
"""

from __future__ import annotations

import os

from bridge.backends import Backend
from bridge.registry import ANY_ARGS

_RAISES = {
    "ImportError": lambda: ImportError("cannot import name 'thing' from 'somewhere'"),
    "SystemExit": lambda: SystemExit(4),
    "KeyboardInterrupt": lambda: KeyboardInterrupt(),
    "BaseException": lambda: BaseException("the root of it all"),
}
_kind = os.environ.get("PORTBRIDGE_TEST_IMPORT_RAISES")
if _kind:
    raise _RAISES[_kind]()


class RegisterRaises(Backend):
    name = "register_raises"

    def register(self, registry) -> None:
        registry.command("half_registered", schema=ANY_ARGS, backend=self.name)(lambda ctx, args: {"ran": True})
        raise ValueError("register() broke halfway")


register_raises = RegisterRaises()
