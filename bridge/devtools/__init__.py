"""Tools for developers, apart from the runtime: nothing here runs inside ``portbridge worker``.

* ``client``: ``WorkerClient``, a Python client of one worker process (spawn it,
  send requests, match replies, answer callbacks); the tests and benchmarks
  drive real workers with it, and it is a reference for clients in other languages;
* ``pacing``: the client's answer to ``portbridge.admit`` (a per-model pacer);
* ``interactive``: ``portbridge call`` and ``portbridge repl``;
* ``framecat``: ``portbridge encode`` / ``decode``, readable JSON lines <-> frames
  (the golden vectors are written with it too);
* ``demo``: ``portbridge demo``, a DSPy program driven through real frames.

The worker imports none of them (``tests/test_packaging.py`` checks it).
"""
