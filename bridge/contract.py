"""The files of ``protocol/``, the language-neutral contract, as this package reads them.

``protocol/`` ships inside the wheel as ``bridge._protocol``; in a source tree
it sits beside ``bridge/``. Plain file access: importlib.resources costs
~18 ms of imports before ``ready``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson


def protocol_dir() -> str:
    """Where ``protocol/`` is: inside an installed wheel, or beside ``bridge/`` in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "_protocol")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(here), "protocol")


def read_json(name: str) -> Any:
    """A JSON file of ``protocol/`` (``errors.json``, ``limits.json``), decoded."""
    with open(os.path.join(protocol_dir(), name), "rb") as f:
        return orjson.loads(f.read())
