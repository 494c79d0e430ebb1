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


def test_no_runtime_module_imports_the_developer_tools():
    """bridge.devtools (client, repl, demo, framecat) stays out of every other module's imports."""
    bridge_dir = os.path.join(ROOT, "bridge")
    modules = []
    for d, dirs, files in os.walk(bridge_dir):
        dirs[:] = [x for x in dirs if x not in ("devtools", "__pycache__")]
        package = os.path.relpath(d, ROOT).replace(os.sep, ".")
        modules += [f"{package}.{f[:-3]}".removesuffix(".__init__") for f in files
                    if f.endswith(".py") and f != "__main__.py"]
    script = ("import importlib, sys\n"
              f"for name in {sorted(modules)!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('bridge.devtools')))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
