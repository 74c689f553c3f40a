"""`processes=N` (`ferry-worker --processes N`): N copies of one worker for CPU-bound handlers
that the GIL would serialise. The supervisor forks the children before any event loop or
thread exists, puts each in its own process group (so a terminal's Ctrl-C reaches them once,
through the supervisor), forwards SIGTERM/SIGINT to all of them, and exits 0 only if every
child did. A child that dies on its own stops the others, so an orchestrator sees the
failure and restarts the whole worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import traceback
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferry._worker import Worker

__all__ = ["supervise"]


def _child(worker: Worker, index: int) -> int:
    """Runs one worker process; its exit code."""
    with contextlib.suppress(OSError):  # already a group leader
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    worker.processes = 1
    worker._child_index = index
    try:
        asyncio.run(worker.arun(handle_signals=True))
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            traceback.print_exc()
        sys.stderr.write(f"ferry-worker: process {index} failed: {e}\n")
        return 1
    return 0


def supervise(worker: Worker) -> int:
    """Forks `worker.processes` workers and waits for them; 0 only if all exited 0."""
    if not hasattr(os, "fork"):
        raise RuntimeError("processes > 1 needs os.fork (POSIX)")
    n = worker.processes
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, int] = {}
    signals = 0
    failed = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(n):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    for s in previous:
                        signal.signal(s, signal.SIG_DFL)
                    code = _child(worker, i)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = i
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                failed = True
                if signals == 0:
                    sys.stderr.write(
                        f"ferry-worker: process {index} exited with {code}; stopping the others\n"
                    )
                    signals = 1
                    for other in list(children):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(other, signal.SIGTERM)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 1 if failed else 0
