"""`python -m ferry.bench checkpoints`: LangGraph checkpoint savers compared on one workload.

    python -m ferry.bench checkpoints [--ferry NAME=URL[@TOKEN]]... [--sqlite-saver]
        [--postgres-saver-url postgres://USER@HOST:PORT/DB] [--puts 500] [--gets N]
        [--concurrency 32] [--duration-s 10] [--preload 0] [--preload-per-thread 100]
        [--value-bytes 1500] [--keep] [--json]

Savers (each measured alone, one after the other, in this order; give at least one):

- `--ferry NAME=URL[@TOKEN]` (repeatable): an `AsyncFerrySaver` on the ferry server at URL
  (the token after the last `@`; without one, `$FERRY_TOKEN`, or none for a server with auth
  off), reported as NAME: e.g. `--ferry ferry-sqlite=http://127.0.0.1:7791 --ferry
  ferry-pg=http://127.0.0.1:7792@fy_...` for a server on each backend. Its threads are
  deleted afterwards (`prune` with strategy `delete`) unless `--keep`.
- `--sqlite-saver`: langgraph-checkpoint-sqlite's `AsyncSqliteSaver` (aiosqlite) on a file in
  a temporary directory, removed afterwards; reported as `sqlite-saver`.
- `--postgres-saver-url URL`: langgraph-checkpoint-postgres's `AsyncPostgresSaver` on a fresh
  database made on URL's server (URL names a database to connect to for `CREATE DATABASE`,
  e.g. `postgres://postgres@127.0.0.1:5432/postgres`), `.setup()` run on it, through a psycopg
  connection pool (LangGraph's documented production setup), the database dropped
  afterwards; reported as `postgres-saver`.

Workload: a put is a checkpoint with 4 channels, each at a new version with a new value of
`--value-bytes` (default ~1.5 KB: a checkpoint + 4 blobs on savers that store blobs); a
put_writes is 3 writes of such values on the checkpoint just put. Per saver, after a short
warm-up (a failing warm-up marks the saver failed, the others still run):

1. `--preload N` (default 0): N checkpoints first stored, `--preload-per-thread` per thread
   (chained), by `--concurrency` concurrent tasks; every later figure is then taken with them
   stored (the "get_tuple with 1,000,000 checkpoints stored" figure). A preloaded checkpoint
   takes about 4 times `--value-bytes` plus a few hundred bytes per saver (a million: ~7 GB each);
   progress is noted on stderr every 10 s.
2. sequential: one thread, `--puts` times a put then a put_writes on it, each timed (p50/p99).
3. `get_tuple` of the thread's latest checkpoint (with its 3 pending writes), `--gets` times
   (default `--puts`); with a preload also the latest of a random preloaded thread each time.
4. concurrent: `--concurrency` asyncio tasks on the one saver, each its own thread doing put
   then put_writes (chained parents) in a loop for `--duration-s`; puts/s and put_writes/s
   (operations over the time until every task finished its last one) and the exceptions
   raised (counted, with a few samples; a saver that refuses concurrent writers shows here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ferry.bench import _percentile, max_rss_mb

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, CheckpointMetadata

__all__ = ["SaverSpec", "main", "parse_ferry", "run_checkpoints"]

CHANNELS = ("messages", "context", "plan", "scratchpad")
WRITE_CHANNELS = CHANNELS[:3]
WARMUP = 5
ERROR_SAMPLES = 3
PRUNE_CHUNK = 100
PROGRESS_S = 10.0


@dataclass
class SaverSpec:
    """One saver to measure: `kind` is `ferry`, `sqlite-saver` or `postgres-saver`."""

    name: str
    kind: str
    url: str | None = None
    token: str | None = None


def parse_ferry(value: str) -> SaverSpec:
    """`NAME=URL[@TOKEN]`: the token is what follows the last `@` when that holds no `/` or `:`
    (so a URL's own `user:pw@host:port` stays the URL's)."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--ferry wants NAME=URL[@TOKEN], got {value!r}")
    url, token = rest, None
    head, at, tail = rest.rpartition("@")
    if at and head and tail and "/" not in tail and ":" not in tail:
        url, token = head, tail
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--ferry {name}: the URL must start with http:// or https://, got {url!r}")
    return SaverSpec(name=name, kind="ferry", url=url, token=token)


# ---- the workload ---------------------------------------------------------------------------------


class _Chain:
    """One LangGraph thread's checkpoints, each a child of the one before."""

    def __init__(self, saver: BaseCheckpointSaver[Any], thread: str, value_bytes: int) -> None:
        self.saver = saver
        self.thread = thread
        self.value_bytes = value_bytes
        self.step = 0
        self.versions: dict[str, Any] = {}
        self.config: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}

    def _value(self) -> str:
        # A fresh string of `value_bytes` characters (msgpack adds a few bytes).
        return os.urandom(self.value_bytes // 2 + 1).hex()[: self.value_bytes]

    def next_checkpoint(self) -> tuple[Checkpoint, dict[str, Any], dict[str, Any]]:
        """The next checkpoint, its metadata and new versions: every channel moves."""
        from datetime import datetime, timezone

        from langgraph.checkpoint.base import Checkpoint
        from langgraph.checkpoint.base.id import uuid6

        new = {ch: self.saver.get_next_version(self.versions.get(ch), None) for ch in CHANNELS}
        self.versions.update(new)
        checkpoint = Checkpoint(
            v=4,
            id=str(uuid6(clock_seq=self.step)),
            ts=datetime.now(timezone.utc).isoformat(),
            channel_values={ch: self._value() for ch in CHANNELS},
            channel_versions=dict(self.versions),
            versions_seen={"agent": dict(self.versions)},
            updated_channels=list(CHANNELS),
        )
        metadata = {"source": "loop", "step": self.step, "parents": {}}
        self.step += 1
        return checkpoint, metadata, new

    async def put(self) -> None:
        checkpoint, metadata, new = self.next_checkpoint()
        md = cast("CheckpointMetadata", metadata)
        self.config = await self.saver.aput(self.config, checkpoint, md, new)

    async def put_writes(self) -> None:
        writes = [(ch, self._value()) for ch in WRITE_CHANNELS]
        await self.saver.aput_writes(self.config, writes, task_id=secrets.token_hex(8))

    @property
    def checkpoint_id(self) -> str | None:
        return self.config["configurable"].get("checkpoint_id")


def _latest(thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


# ---- figures ------------------------------------------------------------------------------------


@dataclass
class _Timings:
    samples: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, e: BaseException) -> None:
        self.errors += 1
        text = f"{type(e).__name__}: {e}"[:300]
        if len(self.error_samples) < ERROR_SAMPLES and text not in self.error_samples:
            self.error_samples.append(text)

    async def time(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
        """Awaits `make()`, timing it; an exception is counted (and sampled): whether it worked."""
        t0 = time.perf_counter()
        try:
            await make()
        except Exception as e:
            self.error(e)
            return False
        self.samples.append((time.perf_counter() - t0) * 1000)
        return True

    def figures(self) -> dict[str, Any]:
        s = sorted(self.samples)
        out: dict[str, Any] = {
            "n": len(s),
            "p50_ms": round(_percentile(s, 50), 3) if s else None,
            "p99_ms": round(_percentile(s, 99), 3) if s else None,
            "mean_ms": round(statistics.fmean(s), 3) if s else None,
            "max_ms": round(s[-1], 3) if s else None,
            "errors": self.errors,
        }
        if self.error_samples:
            out["error_samples"] = self.error_samples
        return out


@dataclass
class Workload:
    """What each saver is put through (the CLI's options)."""

    puts: int = 500
    gets: int | None = None
    concurrency: int = 32
    duration_s: float = 10.0
    preload: int = 0
    preload_per_thread: int = 100
    value_bytes: int = 1500
    keep: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "puts": self.puts,
            "gets": self.gets if self.gets is not None else self.puts,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "preload": self.preload,
            "preload_per_thread": self.preload_per_thread,
            "value_bytes": self.value_bytes,
            "channels": len(CHANNELS),
            "writes_per_put_writes": len(WRITE_CHANNELS),
        }


class _Run:
    """One saver through the workload; `threads` lists every thread it wrote."""

    def __init__(self, saver: BaseCheckpointSaver[Any], name: str, w: Workload, log: bool) -> None:
        self.saver = saver
        self.name = name
        self.w = w
        self.log = log
        self.prefix = f"bench-{secrets.token_hex(4)}"
        self.threads: list[str] = []
        self.warmed = False

    def chain(self, suffix: str) -> _Chain:
        thread = f"{self.prefix}-{suffix}"
        self.threads.append(thread)
        return _Chain(self.saver, thread, self.w.value_bytes)

    def note(self, text: str) -> None:
        if self.log:
            print(f"ferry.bench checkpoints: {self.name}: {text}", file=sys.stderr, flush=True)

    async def warmup(self) -> None:
        """A few puts, put_writes and gets; raises when the saver does not work at all."""
        c = self.chain("warmup")
        for _ in range(WARMUP):
            await c.put()
            await c.put_writes()
            await self.saver.aget_tuple(_latest(c.thread))
        self.warmed = True

    async def preload(self) -> tuple[dict[str, Any], list[str]]:
        """`preload` checkpoints over threads of `preload_per_thread`, by `concurrency` tasks."""
        total, per = self.w.preload, max(1, self.w.preload_per_thread)
        nthreads = -(-total // per)
        threads = [f"{self.prefix}-pre{i}" for i in range(nthreads)]
        self.threads.extend(threads)
        errors = _Timings()
        next_thread = 0
        done = 0
        t0 = time.perf_counter()
        next_note = t0 + PROGRESS_S

        async def worker() -> None:
            nonlocal next_thread, done, next_note
            while next_thread < nthreads:
                i = next_thread
                next_thread += 1
                c = _Chain(self.saver, threads[i], self.w.value_bytes)
                for _ in range(min(per, total - i * per)):
                    try:
                        await c.put()
                    except Exception as e:
                        errors.error(e)
                    done += 1
                    now = time.perf_counter()
                    if now >= next_note:
                        next_note = now + PROGRESS_S
                        self.note(f"preload {done}/{total} ({done / (now - t0):.0f} puts/s)")

        await asyncio.gather(*(worker() for _ in range(min(self.w.concurrency, nthreads))))
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = {
            "checkpoints": total,
            "threads": nthreads,
            "seconds": round(seconds, 3),
            "puts_per_s": round(total / seconds, 1) if seconds > 0 else None,
            "errors": errors.errors,
        }
        if errors.error_samples:
            out["error_samples"] = errors.error_samples
        return out, threads

    async def sequential(self) -> tuple[_Chain, dict[str, Any], dict[str, Any]]:
        c = self.chain("seq")
        puts, writes = _Timings(), _Timings()
        for _ in range(self.w.puts):
            await puts.time(c.put)
            await writes.time(c.put_writes)
        return c, puts.figures(), writes.figures()

    async def gets(self, c: _Chain, preloaded: list[str]) -> dict[str, Any]:
        n = self.w.gets if self.w.gets is not None else self.w.puts
        # The thread's latest is the last checkpoint put, with its pending writes.
        tup = await self.saver.aget_tuple(_latest(c.thread))
        got = None if tup is None else tup.config["configurable"].get("checkpoint_id")
        if tup is None or got != c.checkpoint_id:
            raise RuntimeError(f"get_tuple returned {got!r}, the latest put is {c.checkpoint_id!r}")
        values = set(tup.checkpoint["channel_values"])
        if len(tup.pending_writes or ()) != len(WRITE_CHANNELS) or values != set(CHANNELS):
            raise RuntimeError("get_tuple returned the latest checkpoint without its values or writes")
        out: dict[str, Any] = {}
        latest = _Timings()
        for _ in range(n):
            await latest.time(self._getter(c.thread))
        out["get_tuple"] = latest.figures()
        if preloaded:
            rnd = _Timings()
            for _ in range(n):
                await rnd.time(self._getter(random.choice(preloaded)))
            out["get_tuple_preloaded"] = rnd.figures()
        return out

    def _getter(self, thread: str) -> Callable[[], Coroutine[Any, Any, Any]]:
        return lambda: self.saver.aget_tuple(_latest(thread))

    async def concurrent(self) -> dict[str, Any]:
        puts, writes = _Timings(), _Timings()
        chains = [self.chain(f"c{i}") for i in range(self.w.concurrency)]
        t0 = time.perf_counter()
        deadline = t0 + self.w.duration_s

        async def loop(c: _Chain) -> None:
            while time.perf_counter() < deadline:
                # After a failure, a millisecond's pause: a failing saver must not be spun on.
                if not await puts.time(c.put):
                    await asyncio.sleep(0.001)
                    continue
                if not await writes.time(c.put_writes):
                    await asyncio.sleep(0.001)

        await asyncio.gather(*(loop(c) for c in chains))
        seconds = time.perf_counter() - t0
        p, wr = puts.figures(), writes.figures()
        ops = p["n"] + wr["n"]
        errors = puts.errors + writes.errors
        out: dict[str, Any] = {
            "concurrency": self.w.concurrency,
            "seconds": round(seconds, 3),
            "puts": p["n"],
            "put_writes": wr["n"],
            "puts_per_s": round(p["n"] / seconds, 1),
            "put_writes_per_s": round(wr["n"] / seconds, 1),
            "errors": errors,
            "errors_pct": round(100 * errors / (ops + errors), 2) if ops + errors else 0.0,
            "put_errors": puts.errors,
            "put_writes_errors": writes.errors,
            "put_p50_ms": p["p50_ms"],
            "put_p99_ms": p["p99_ms"],
            "put_writes_p50_ms": wr["p50_ms"],
            "put_writes_p99_ms": wr["p99_ms"],
        }
        samples = [*puts.error_samples, *writes.error_samples][:ERROR_SAMPLES]
        if samples:
            out["error_samples"] = samples
        return out

    async def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        await self.warmup()
        out: dict[str, Any] = {}
        preloaded: list[str] = []
        if self.w.preload > 0:
            self.note(f"preloading {self.w.preload} checkpoints")
            out["preload"], preloaded = await self.preload()
        self.note("sequential puts")
        c, out["put"], out["put_writes"] = await self.sequential()
        out.update(await self.gets(c, preloaded))
        self.note(f"{self.w.concurrency} concurrent threads for {self.w.duration_s:g} s")
        out["concurrent"] = await self.concurrent()
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out


# ---- the savers -----------------------------------------------------------------------------------


@asynccontextmanager
async def _ferry_saver(spec: SaverSpec, w: Workload, run_box: list[_Run]) -> AsyncIterator[Any]:
    from ferry._client import AsyncClient
    from ferry.langgraph import AsyncFerrySaver

    token = spec.token if spec.token is not None else os.environ.get("FERRY_TOKEN") or None
    client = AsyncClient(spec.url, token, name="ferry-bench-checkpoints")
    saver = AsyncFerrySaver(client)
    try:
        yield saver
    finally:
        try:
            # Nothing to clean when the warm-up failed (the server may be unreachable).
            if not w.keep and run_box and run_box[0].warmed:
                threads = run_box[0].threads
                for i in range(0, len(threads), PRUNE_CHUNK):
                    await saver.aprune(threads[i : i + PRUNE_CHUNK], strategy="delete")
        except Exception as e:  # the figures stand; say what was left behind
            print(f"ferry.bench checkpoints: {spec.name}: cleanup failed: {e}", file=sys.stderr)
        finally:
            await client.aclose()


@asynccontextmanager
async def _sqlite_saver() -> AsyncIterator[Any]:
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    tmp = tempfile.mkdtemp(prefix="ferry-bench-sqlite-")
    try:
        async with AsyncSqliteSaver.from_conn_string(os.path.join(tmp, "checkpoints.sqlite")) as saver:
            await saver.setup()
            yield saver
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


@asynccontextmanager
async def _postgres_saver(admin_url: str, w: Workload) -> AsyncIterator[Any]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow, dict_row
    from psycopg_pool import AsyncConnectionPool

    db = "ferry_bench_" + secrets.token_hex(6)
    await asyncio.to_thread(_pg_admin, admin_url, f"CREATE DATABASE {db}")
    try:
        url = urllib.parse.urlsplit(admin_url)._replace(path="/" + db).geturl()
        pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max(1, w.concurrency),
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        await pool.open(wait=True)
        try:
            saver = AsyncPostgresSaver(pool)
            await saver.setup()
            yield saver
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(_pg_admin, admin_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


async def _measure(spec: SaverSpec, w: Workload, log: bool) -> dict[str, Any]:
    run_box: list[_Run] = []
    async with AsyncExitStack() as stack:
        if spec.kind == "ferry":
            saver = await stack.enter_async_context(_ferry_saver(spec, w, run_box))
        elif spec.kind == "sqlite-saver":
            saver = await stack.enter_async_context(_sqlite_saver())
        else:
            assert spec.url is not None
            saver = await stack.enter_async_context(_postgres_saver(spec.url, w))
        run = _Run(saver, spec.name, w, log)
        run_box.append(run)
        out = await run.run()
    return out


async def _run_all(specs: list[SaverSpec], w: Workload, log: bool) -> dict[str, Any]:
    savers: dict[str, Any] = {}
    for spec in specs:
        try:
            r = await _measure(spec, w, log)
        except Exception as e:
            r = {"error": f"{type(e).__name__}: {e}"}
            if log:
                print(f"ferry.bench checkpoints: {spec.name}: {r['error']}", file=sys.stderr, flush=True)
        savers[spec.name] = {"kind": spec.kind, **r}
    return {"savers": savers, "workload": w.as_dict(), "max_rss_mb": round(max_rss_mb(), 1)}


def run_checkpoints(specs: list[SaverSpec], workload: Workload, *, log: bool = False) -> dict[str, Any]:
    """Every saver through `workload`, one after the other; what `--json` prints."""
    if not specs:
        raise ValueError("no saver to measure: give --ferry, --sqlite-saver or --postgres-saver-url")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"saver names must differ: {names}")
    return asyncio.run(_run_all(specs, workload, log))


# ---- output ---------------------------------------------------------------------------------------


def _ms(v: Any) -> str:
    return f"{v:9.2f}" if isinstance(v, (int, float)) else f"{'-':>9}"


def _human(r: dict[str, Any]) -> list[str]:
    w = r["workload"]
    savers: dict[str, dict[str, Any]] = r["savers"]
    width = max([12, *(len(n) for n in savers)])
    lines = [
        f"workload: put = a checkpoint + {w['channels']} values of {w['value_bytes']} B, put_writes = "
        f"{w['writes_per_put_writes']} writes; {w['puts']} sequential puts, {w['gets']} gets, "
        f"{w['concurrency']} concurrent threads for {w['duration_s']:g} s, preload {w['preload']}",
        f"{'figure':<26} {'saver':<{width}} {'p50 ms':>9} {'p99 ms':>9} {'n':>7}  errors",
    ]
    figures = [
        ("put", "put, sequential"),
        ("put_writes", "put_writes, sequential"),
        ("get_tuple", "get_tuple latest"),
        ("get_tuple_preloaded", "get_tuple preloaded thread"),
    ]
    for key, label in figures:
        for name, s in savers.items():
            f = s.get(key)
            if f is None:
                if key == "put" and "error" in s:
                    lines.append(f"{label:<26} {name:<{width}} failed: {s['error']}")
                continue
            ms = f"{_ms(f['p50_ms'])} {_ms(f['p99_ms'])}"
            lines.append(f"{label:<26} {name:<{width}} {ms} {f['n']:>7}  {f['errors']}")
    head = f"concurrent x{w['concurrency']}, {w['duration_s']:g} s"
    lines.append(f"{head:<26} {'saver':<{width}} {'puts/s':>9} {'writes/s':>9} {'put p99':>9}  errors")
    for name, s in savers.items():
        c = s.get("concurrent")
        if c is None:
            continue
        err = f"{c['errors']} ({c['errors_pct']:.2f}%)"
        if c.get("error_samples"):
            err += f" e.g. {c['error_samples'][0][:80]}"
        lines.append(
            f"{'':<26} {name:<{width}} {c['puts_per_s']:9.1f} {c['put_writes_per_s']:9.1f} "
            f"{_ms(c['put_p99_ms'])}  {err}"
        )
    for name, s in savers.items():
        p = s.get("preload")
        if p is not None:
            lines.append(
                f"{'preload':<26} {name:<{width}} {p['checkpoints']} checkpoints in {p['threads']} threads, "
                f"{p['puts_per_s'] or 0:.0f} puts/s, {p['errors']} errors"
            )
    return lines


def main(argv: list[str]) -> int:
    """`python -m ferry.bench checkpoints ...`."""
    p = argparse.ArgumentParser(
        prog="python -m ferry.bench checkpoints",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="See the module docstring (ferry/_bench_checkpoints.py) for the workload.",
    )
    p.add_argument(
        "--ferry",
        action="append",
        default=[],
        metavar="NAME=URL[@TOKEN]",
        help="an AsyncFerrySaver on this server, reported as NAME (repeatable; token default $FERRY_TOKEN)",
    )
    p.add_argument("--sqlite-saver", action="store_true", help="include AsyncSqliteSaver (a temp file)")
    p.add_argument(
        "--postgres-saver-url",
        metavar="URL",
        help="include AsyncPostgresSaver, on a fresh database made (and dropped) on this server",
    )
    p.add_argument("--puts", type=int, default=500, help="sequential puts (and put_writes), default 500")
    p.add_argument("--gets", type=int, help="latest get_tuple calls (default --puts)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent threads (default 32)")
    p.add_argument("--duration-s", type=float, default=10.0, help="concurrent phase seconds (default 10)")
    p.add_argument("--preload", type=int, default=0, help="checkpoints stored first (default 0)")
    p.add_argument("--preload-per-thread", type=int, default=100, help="preloaded checkpoints per thread")
    p.add_argument("--value-bytes", type=int, default=1500, help="bytes per channel value and write")
    p.add_argument("--keep", action="store_true", help="leave the benchmark's threads on ferry servers")
    p.add_argument("--quiet", action="store_true", help="no progress notes on stderr")
    p.add_argument("--json", action="store_true", help='one JSON object {"savers": {name: {...}}, ...}')
    a = p.parse_args(argv)
    if a.puts < 1 or (a.gets is not None and a.gets < 1) or a.concurrency < 1:
        p.error("--puts, --gets and --concurrency must be >= 1")
    if a.duration_s <= 0 or a.preload < 0 or a.preload_per_thread < 1 or a.value_bytes < 1:
        p.error("--duration-s, --preload-per-thread and --value-bytes must be > 0, --preload >= 0")
    specs: list[SaverSpec] = []
    try:
        specs += [parse_ferry(v) for v in a.ferry]
    except ValueError as e:
        p.error(str(e))
    if a.sqlite_saver:
        specs.append(SaverSpec(name="sqlite-saver", kind="sqlite-saver"))
    if a.postgres_saver_url:
        specs.append(SaverSpec(name="postgres-saver", kind="postgres-saver", url=a.postgres_saver_url))
    if not specs:
        p.error("give at least one saver: --ferry NAME=URL[@TOKEN], --sqlite-saver, --postgres-saver-url URL")
    workload = Workload(
        puts=a.puts,
        gets=a.gets,
        concurrency=a.concurrency,
        duration_s=a.duration_s,
        preload=a.preload,
        preload_per_thread=a.preload_per_thread,
        value_bytes=a.value_bytes,
        keep=a.keep,
    )
    try:
        r = run_checkpoints(specs, workload, log=not a.quiet)
    except Exception as e:
        print(f"ferry.bench: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(r))
    else:
        print("\n".join(_human(r)))
    return 1 if any("error" in s for s in r["savers"].values()) else 0
