"""A CPU-bound task for `--processes`: each job reports the pid that ran it."""

from __future__ import annotations

import os

import ferry

worker = ferry.Worker(concurrency=2)


@worker.task("cpu")
def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return os.getpid()
