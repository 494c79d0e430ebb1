"""The loopback OpenAI-compatible server (tests/support/openai_server.py) as a child process.

    python -m benchmarks.lm_server --latency-ms 200
    python -m benchmarks.lm_server --rate-limit 10 --rate-window-s 1   # a provider's limit, 429s beyond

Binds 127.0.0.1 on a free port, prints ``listening on http://127.0.0.1:PORT/v1``
and serves until its stdin closes (its parent ended, however it ended) or
``--max-seconds`` have passed: it always stops by itself. Being a separate
process, its threads never compete with a measured process for a GIL.
"""

from __future__ import annotations

import argparse
import sys
import threading

from tests.support.openai_server import OpenAIServer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--rate-limit", type=int, default=None,
                   help="at most this many chat completions per model in any --rate-window-s seconds (429 beyond)")
    p.add_argument("--rate-window-s", type=float, default=60.0)
    ns = p.parse_args(argv)
    with OpenAIServer(latency_ms=ns.latency_ms, rate_limit=ns.rate_limit, rate_window_s=ns.rate_window_s) as server:
        print(f"listening on {server.base_url}", flush=True)
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), done.set()), daemon=True).start()
        done.wait(ns.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
