"""A real `ferry serve` for tests: the binary on a free loopback port with a temporary data
directory (or a fresh PostgreSQL database), auth on, its first admin token minted before it
starts. Tests talk to it over HTTP exactly as production code does, so nothing is mocked.

The binary is `$FERRY_BIN`, else `<repo>/target/debug/ferry` (what CI builds), else `ferry`
on `PATH`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry._client import AsyncClient, Client

__all__ = ["FerryServer", "find_binary"]

# Servers not closed yet, closed at interpreter exit so no test leaves a process behind.
_OPEN: set[FerryServer] = set()


def find_binary() -> str:
    """The ferry binary tests run: `$FERRY_BIN`, the repository's debug build, or `PATH`'s."""
    env = os.environ.get("FERRY_BIN")
    if env:
        return env
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "target" / "debug" / "ferry"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("ferry")
    if found:
        return found
    raise RuntimeError(
        "no ferry binary: set FERRY_BIN, build the repository (cargo build), or put ferry on PATH"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The caller's environment without `FERRY_*`, so a developer's settings (a database URL,
    a config file) cannot leak into the test server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to ferry.toml")


def to_toml(config: Mapping[str, Any]) -> str:
    """`config` as TOML: nested mappings become `[tables]` (the stdlib only reads TOML)."""
    lines: list[str] = []

    def table(prefix: str, items: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in items.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in items.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for k, v in scalars:
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in tables:
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", config)
    return "\n".join(lines) + "\n"


def _psql(url: str, sql: str) -> None:
    proc = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {proc.stderr.strip() or proc.stdout.strip()}")


class FerryServer:
    """A running `ferry serve` with its own data; `start()` makes one, `close()` removes it."""

    url: str
    token: str
    data_dir: str
    database_url: str | None
    port: int

    def __init__(
        self,
        *,
        binary: str,
        tmp_dir: Path,
        port: int,
        database_url: str | None,
        pg_admin_url: str | None,
        pg_database: str | None,
        config_path: Path | None,
        serve_args: Sequence[str],
    ) -> None:
        self.binary = binary
        self.tmp_dir = tmp_dir
        self.data_dir = str(tmp_dir / "data")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.database_url = database_url
        self.log_path = tmp_dir / "ferry.log"
        self.config_path = config_path
        self.token = ""
        self._pg_admin_url = pg_admin_url
        self._pg_database = pg_database
        self._serve_args = list(serve_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: list[Client] = []
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        pg_url: str | None = None,
        config: Mapping[str, Any] | None = None,
        binary: str | None = None,
        serve_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> FerryServer:
        """Starts a fresh server (SQLite in a temp dir, or a new database on `pg_url`'s
        PostgreSQL); `config` becomes its ferry.toml, e.g. `{"limits": {"max_batch": 10}}`."""
        tmp = Path(tempfile.mkdtemp(prefix="ferry-test-"))
        (tmp / "data").mkdir()
        database_url = pg_database = None
        if pg_url:
            pg_database = "ferry_py_" + secrets.token_hex(6)
            _psql(pg_url, f"CREATE DATABASE {pg_database}")
            database_url = urllib.parse.urlsplit(pg_url)._replace(path="/" + pg_database).geturl()
        config_path = None
        if config:
            config_path = tmp / "ferry.toml"
            config_path.write_text(to_toml(config))
        server = cls(
            binary=binary or find_binary(),
            tmp_dir=tmp,
            port=_free_port(),
            database_url=database_url,
            pg_admin_url=pg_url,
            pg_database=pg_database,
            config_path=config_path,
            serve_args=serve_args,
        )
        _OPEN.add(server)
        try:
            server.token = server._mint_admin_token()
            server._launch(timeout, new_port_on_conflict=True)
        except BaseException:
            server.close()
            raise
        return server

    def _db_args(self) -> list[str]:
        args = ["--data-dir", self.data_dir]
        if self.database_url:
            args += ["--database", self.database_url]
        return args

    def _run_binary(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        # The binary may be replaced while tests run ("text file busy"): retry briefly.
        for attempt in range(50):
            try:
                return subprocess.Popen([self.binary, *args], cwd=self.tmp_dir, env=_clean_env(), **kw)
            except OSError as e:
                if e.errno != 26 or attempt == 49:  # ETXTBSY
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def _mint_admin_token(self) -> str:
        args = ["tokens", "create", "--scopes", "admin", "--name", "test-admin", "--json", *self._db_args()]
        proc = self._run_binary(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ferry tokens create failed ({proc.returncode}): {err.decode(errors='replace')}"
            )
        try:
            return str(json.loads(out)["token"])
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"ferry tokens create printed {out!r}") from e

    def _launch(self, timeout: float, *, new_port_on_conflict: bool) -> None:
        deadline = time.monotonic() + timeout
        while True:
            args = ["serve", "--listen", f"127.0.0.1:{self.port}", "--auth", "true", *self._db_args()]
            if self.config_path is not None:
                args += ["--config", str(self.config_path)]
            args += self._serve_args
            with open(self.log_path, "ab") as log:
                log.write(f"---- ferry {' '.join(args)}\n".encode())
                log.flush()
                self._proc = self._run_binary(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            exited = self._wait_healthy(deadline)
            if not exited:
                return
            in_use = "in use" in self.log_tail(5).lower()
            if in_use and time.monotonic() < deadline:
                # Another process took the port between our probe and the bind; restarts
                # keep their port (the old process may still hold it for a moment).
                if new_port_on_conflict:
                    self.port = _free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
                time.sleep(0.1)
                continue
            raise RuntimeError(
                f"ferry serve exited with {self._proc.returncode if self._proc else '?'} "
                f"before answering /healthz; log {self.log_path}:\n{self.log_tail()}"
            )

    def _wait_healthy(self, deadline: float) -> bool:
        """Polls `/healthz` until it answers 200; True when the process exited first."""
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                return True
            if self._healthz():
                return False
            if time.monotonic() > deadline:
                self._signal(signal.SIGKILL)
                raise RuntimeError(
                    f"ferry serve did not answer /healthz on {self.url} in time; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _healthz(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _signal(self, sig: int) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=15 if sig != signal.SIGKILL else 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILLs the server (a crash: nothing is flushed but what was committed)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERMs the server and waits for its graceful shutdown; data stays for `restart()`."""
        self._signal(signal.SIGTERM)

    def restart(self, timeout: float = 60.0) -> None:
        """Starts the server again on the same port and data (killing it first if it runs)."""
        if self._closed:
            raise RuntimeError("this FerryServer is closed")
        self.kill()
        self._launch(timeout, new_port_on_conflict=False)

    def close(self) -> None:
        """Stops the server and removes its data (temp dir, PostgreSQL database)."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self.stop()
        if self._pg_admin_url and self._pg_database:
            with contextlib.suppress(Exception):
                _psql(self._pg_admin_url, f"DROP DATABASE IF EXISTS {self._pg_database} WITH (FORCE)")
        if not os.environ.get("FERRY_TEST_KEEP"):
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> FerryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = "postgres" if self.database_url else "sqlite"
        return f"FerryServer({self.url}, {backend}, pid={self.pid})"

    # ---- helpers for tests -----------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server logged (stdout and stderr), for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """`FERRY_URL` and `FERRY_TOKEN` for a subprocess (a `ferry-worker`, a CLI)."""
        return {"FERRY_URL": self.url, "FERRY_TOKEN": self.token}

    def client(self, **kw: Any) -> Client:
        """A `ferry.Client` for this server with its admin token (closed with the server)."""
        from ferry._client import Client

        c = Client(self.url, self.token, **kw)
        self._clients.append(c)
        return c

    def async_client(self, **kw: Any) -> AsyncClient:
        """A `ferry.AsyncClient` for this server with its admin token (close it yourself)."""
        from ferry._client import AsyncClient

        return AsyncClient(self.url, self.token, **kw)


@atexit.register
def _close_all() -> None:
    for server in list(_OPEN):
        with contextlib.suppress(Exception):
            server.close()
