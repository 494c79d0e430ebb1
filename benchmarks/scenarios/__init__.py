"""The scenarios of issue 5, by id, in run order. Each is ``fn(quick: bool) -> report.Result``."""

from . import memory, payload, ping, startup

SCENARIOS = {
    "ping": ping.run_sequential,
    "pipelined": ping.run_pipelined,
    "startup": startup.run,
    "payload": payload.run,
    "memory": memory.run,
}
