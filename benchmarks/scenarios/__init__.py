"""The scenarios of issue 5, by id, in run order. Each is ``fn(quick: bool) -> report.Result``."""

from . import callbacks, cluster, dspy_native, elixir, lm, memory, payload, ping, pipeline, pool, rate_limit, sdk, startup

SCENARIOS = {
    "ping": ping.run_sequential,
    "pipelined": ping.run_pipelined,
    "startup": startup.run,
    "payload": payload.run,
    "lm_concurrency": lm.run_concurrency,
    "overhead": lm.run_overhead,
    "dspy_throughput": lm.run_throughput,
    "pipeline_cpu": pipeline.run_cpu,
    "pipeline_throughput": pipeline.run_throughput,
    "elixir": elixir.run,
    "dspy_native": dspy_native.run,
    "pool": pool.run,
    "cluster": cluster.run,
    "sdk": sdk.run,
    "memory": memory.run,
    "callbacks": callbacks.run,
    "rate_limit": rate_limit.run,
}
