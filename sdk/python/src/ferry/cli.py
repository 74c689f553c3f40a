"""`ferry-worker`: runs a worker as a process of its own (often PID 1 in a container).

    ferry-worker module:worker [--concurrency N] [--queues a,b] [--processes N] [--url U] [--token T]
    ferry-worker package        # imports every module of the package, runs every @ferry.task

Exit status 0 after a clean shutdown (SIGTERM/SIGINT); otherwise `ferry-worker: <message>`
on stderr and 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from typing import Any, NoReturn

__all__ = ["main"]


class CliError(Exception):
    """A usage or setup problem, printed as `ferry-worker: <message>`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see ferry-worker --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ferry-worker",
        description="Run ferry tasks: `module:worker` (a ferry.Worker) or a package whose "
        "@ferry.task functions to run.",
    )
    p.add_argument(
        "target", help="module:attr naming a ferry.Worker, or a package with @ferry.task functions"
    )
    p.add_argument("--concurrency", type=int, help="handlers run at once (default: the worker's, 8)")
    p.add_argument("--queues", help="comma-separated queues to work (default: all the worker's tasks)")
    p.add_argument("--processes", type=int, help="worker processes, for CPU-bound handlers (default 1)")
    p.add_argument("--url", help="server URL (default: the worker's, else FERRY_URL)")
    p.add_argument("--token", help="API token (default: the worker's, else FERRY_TOKEN)")
    p.add_argument("--shutdown-timeout", type=float, help="seconds running jobs get after SIGTERM (25)")
    p.add_argument(
        "--log-level",
        default=os.environ.get("FERRY_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (default INFO, or FERRY_LOG_LEVEL)",
    )
    return p


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise CliError(f"cannot import {name!r}: no module named {e.name!r}") from None
        raise CliError(f"importing {name!r} failed: {e}") from e
    except CliError:
        raise
    except Exception as e:
        raise CliError(f"importing {name!r} failed: {type(e).__name__}: {e}") from e


def load_worker(target: str) -> Any:
    """The Worker `target` names: `module:attr` (a Worker, or a Task run alone), or a package
    (or module) whose `@ferry.task` functions make up a new Worker."""
    from ferry._task import Task, registered_tasks
    from ferry._worker import Worker

    if ":" in target:
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise CliError(f"{target!r} is not module:attribute")
        obj: Any = _import(module_name)
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
        if isinstance(obj, Worker):
            return obj
        if isinstance(obj, Task):
            w = Worker()
            w.include(obj)
            return w
        raise CliError(f"{target} is a {type(obj).__name__}, not a ferry.Worker")
    pkg = _import(target)
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=pkg.__name__ + "."):
        _import(info.name)
    tasks = registered_tasks()
    if not tasks:
        raise CliError(f"no @ferry.task found in {target!r}")
    w = Worker()
    w.include(*tasks)
    return w


def main(argv: list[str] | None = None) -> int:
    """The `ferry-worker` command; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        level = getattr(logging, str(args.log_level).upper(), None)
        if not isinstance(level, int):
            raise CliError(f"unknown log level {args.log_level!r}")
        from ferry._context import install_log_factory

        install_log_factory()
        logging.basicConfig(
            level=level,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s [%(job_id)s] %(message)s",
        )
        # One line per HTTP request drowns the worker's own lines.
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        worker = load_worker(args.target)
        if args.concurrency is not None:
            if args.concurrency < 1:
                raise CliError("--concurrency must be at least 1")
            worker.concurrency = args.concurrency
        if args.processes is not None:
            if args.processes < 1:
                raise CliError("--processes must be at least 1")
            worker.processes = args.processes
        if args.queues:
            worker.queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        if args.url:
            worker.url = args.url
        if args.token:
            worker.token = args.token
        if args.shutdown_timeout is not None:
            worker.shutdown_timeout = args.shutdown_timeout
        from ferry import _task

        _task.configure(worker.url, worker.token)
        try:
            worker._selected()
        except ValueError as e:
            raise CliError(str(e)) from None
        worker.run()
    except CliError as e:
        print(f"ferry-worker: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ferry-worker: interrupted", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"ferry-worker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
