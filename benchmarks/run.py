"""Run the benchmarks: ``python -m benchmarks`` (all, a few minutes) or ``--quick`` (under a minute).

Each scenario prints its tables, writes ``benchmarks/results/<id>.json`` and
the full run regenerates the results section of ``benchmarks/README.md``.
The quick subset writes to ``benchmarks/results/quick/`` and leaves the README
alone. A missed target is reported, never an error: the exit code is non-zero
only when a scenario could not run at all (a crashed peer, a missing tool).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from . import harness, report
from .harness import machine
from .scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick subset: fewer repeats and sizes (< 1 min)")
    p.add_argument("--only", default=None, help="comma-separated scenario ids: " + ", ".join(SCENARIOS))
    p.add_argument("--cpu", type=int, default=0,
                   help="the CPU ping-type figures pin client and peer to (default 0)")
    p.add_argument("--unpinned", action="store_true",
                   help="let the kernel place client and peers for ping-type figures, and record where")
    p.add_argument("--report", action="store_true",
                   help="only regenerate benchmarks/README.md from benchmarks/results/*.json")
    args = p.parse_args(argv)
    report.ORDER[:] = list(SCENARIOS)
    harness.PIN_CPU = None if args.unpinned else args.cpu
    if args.report:
        return 0 if report.regenerate_readme() else 1
    wanted = list(SCENARIOS) if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "") \
        + (" --unpinned" if args.unpinned else f" --cpu {args.cpu}" if args.cpu else "")
    run = {"date": report.now(), "command": command, "machine": machine(), "quick": args.quick}
    out = report.RESULTS / "quick" if args.quick else report.RESULTS
    print(f"{command}: {', '.join(wanted)}")
    print(f"machine: {run['machine']['cpus']} x {run['machine']['cpu']}, load {run['machine']['loadavg_at_start']}")
    results = []
    failed = 0
    started = time.monotonic()
    for sid in wanted:
        t0 = time.monotonic()
        try:
            result = SCENARIOS[sid](args.quick)
        except Exception as exc:  # report and go on: one broken scenario must not hide the others
            failed += 1
            traceback.print_exc()
            result = report.Result(sid, "failed", error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - t0
        result.run = run
        report.print_result(result)
        report.write_json(result, out)
        results.append(result)
    print()
    print(report.text(report.targets_table(results)))
    print(f"\n{time.monotonic() - started:.0f} s; results in {out}/")
    if not args.quick and report.regenerate_readme():
        print(f"regenerated {report.README}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
