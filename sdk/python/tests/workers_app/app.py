"""A worker configured by environment variables, so one module serves the kill, lease and
shutdown tests:

- `APP_OUT`: a file each handler appends its job id to when it finishes (one line per run);
- `APP_STARTED`: a file each handler appends its job id to when it starts;
- `APP_SLEEP`: seconds each handler sleeps (default 0);
- `APP_MODE`: `async` (default) or `threads`.
"""

from __future__ import annotations

import asyncio
import os
import time

import ferry

OUT = os.environ.get("APP_OUT")
STARTED = os.environ.get("APP_STARTED")
SLEEP = float(os.environ.get("APP_SLEEP", "0"))
MODE = os.environ.get("APP_MODE", "async")

worker = ferry.Worker(concurrency=int(os.environ.get("APP_CONCURRENCY", "8")))


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()


if MODE == "threads":

    @worker.task("work")
    def work(n: int = 0) -> dict[str, int]:
        job = ferry.current_job()
        _append(STARTED, job.id)
        if SLEEP:
            time.sleep(SLEEP)
        _append(OUT, job.id)
        return {"n": n}

else:

    @worker.task("work")
    async def work(n: int = 0) -> dict[str, int]:
        job = ferry.current_job()
        _append(STARTED, job.id)
        if SLEEP:
            await asyncio.sleep(SLEEP)
        _append(OUT, job.id)
        return {"n": n}
