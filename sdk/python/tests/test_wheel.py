"""The wheel installs into a clean virtualenv with httpx alone (no pydantic, no websockets)
and its client talks to a real server from there."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from ferry.testing import FerryServer

SDK = Path(__file__).resolve().parents[1]

# What `pip install ferry-client` may bring: httpx and its own dependencies.
ALLOWED = {
    "ferry-client",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "sniffio",
    "certifi",
    "typing-extensions",
    "exceptiongroup",
    "pip",
    "setuptools",
}

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, json, pathlib
    import ferry
    from ferry.testing import FerryServer  # importable without pytest extras

    assert importlib.util.find_spec("pydantic") is None, "pydantic is not installed"
    assert importlib.util.find_spec("websockets") is None, "websockets is not installed"
    pkg = pathlib.Path(ferry.__file__).parent
    with ferry.Client(name="wheel-test") as c:  # FERRY_URL / FERRY_TOKEN from the environment
        info = c.server_info()
        job = c.enqueue("wheel", {"from": "venv"})
        claimed = c.claim("wheel", max=1)
        c.complete(claimed[0]["id"], claimed[0]["lease"], {"ok": True})
        state = c.get_job(job["id"])["state"]
        try:
            c.event_socket()
            ws = "connected"
        except ImportError as e:
            ws = str(e)

    async def main():
        async with ferry.AsyncClient() as ac:
            return (await ac.health())["status"]

    print(json.dumps({
        "file": ferry.__file__, "typed": (pkg / "py.typed").exists(), "version": info["version"],
        "state": state, "health": asyncio.run(main()), "ws": ws,
    }))
    """
)


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.timeout(300)
def test_the_wheel_installs_alone_and_works(tmp_path: Path, ferry_server: FerryServer) -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable to install httpx into a fresh venv")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    }
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(SDK)]
    if importlib.util.find_spec("hatchling") is not None:
        build.insert(4, "--no-build-isolation")  # the build backend is here already: no download
    _run(build, env=env)
    (wheel,) = dist.glob("ferry_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ferry/py.typed" in names and "ferry/_client.py" in names
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", str(wheel)], env=env)
    frozen = _run([*pip, "list", "--format=json"], env=env).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(frozen)}
    assert installed <= ALLOWED, f"unexpected dependencies: {sorted(installed - ALLOWED)}"
    assert {"ferry-client", "httpx"} <= installed

    out = _run([str(python), "-c", SCRIPT], env={**env, **ferry_server.env()}, cwd=tmp_path).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["file"].startswith(str(venv)), "the installed copy, not the source tree"
    assert result["typed"] is True
    assert result["state"] == "completed" and result["health"] == "ok"
    assert "pip install 'ferry-client[ws]'" in result["ws"]
