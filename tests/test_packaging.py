"""The wheel ships the protocol folder, and pyproject lists every package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_directory_is_listed_in_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        block = re.search(r"^packages = \[(.*?)\]$", f.read(), re.M | re.S).group(1)
    listed = set(re.findall(r'"([\w.]+)"', block))
    found = {
        os.path.relpath(d, ROOT).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "bridge"))
        if "__init__.py" in files
    }
    assert found | {"bridge._protocol", "bridge._protocol.schemas", "bridge._protocol.vectors"} == listed


def test_wheel_contains_the_protocol_and_the_entry_points(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), ROOT], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("portbridge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for path in ("errors.json", "limits.json", "PROTOCOL.md", "schemas/request.schema.json", "vectors/codec.json"):
        assert f"bridge/_protocol/{path}" in names
    assert "portbridge = bridge.cli:main" in entry_points
    assert "dspy = bridge.backends.dspy:backend" in entry_points
