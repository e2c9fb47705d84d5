"""The deployment the tests run against: a throwaway ``redis-server`` on a
free port with its own temp dir (as ``broker/src/testing.rs`` starts one),
real ``wasq host run`` processes, and the example task module.

``WASQ_BIN`` names the ``wasq`` binary (default ``<repo>/target/debug/wasq``)
and ``WASQ_EXAMPLES_WASM`` the module (default
``<repo>/target/tasks/examples.wasm``); a missing one fails the tests
rather than skipping them. Every test gets its own key prefix where it
needs one; the hosts serve the prefix of the session's deployment.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import wasq

REPO = Path(__file__).resolve().parents[3]

_counter = itertools.count()


def wasq_bin() -> Path:
    path = Path(os.environ.get("WASQ_BIN") or REPO / "target/debug/wasq")
    if not path.is_file():
        pytest.fail(f"no wasq binary at {path}: `make build`, or set WASQ_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(
    within: float, what: str, observe: Callable[[], object], until: Callable[[object], bool]
):
    """Looks at ``observe()`` until ``until`` holds of it, for at most
    ``within`` seconds; fails naming ``what`` and the last value seen."""
    deadline = time.monotonic() + within
    while True:
        seen = observe()
        if until(seen):
            return seen
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {within} s; last seen: {seen!r}")
        time.sleep(0.02)


class RedisServer:
    """A ``redis-server`` child on a free loopback port, killed by ``stop``."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (Redis 7.0 or newer)")
        self.dir = tempfile.mkdtemp(prefix="wasq-pytest-redis-")
        last = ""
        for _ in range(8):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    self.dir,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    os.path.join(self.dir, "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(64).startswith(b"+PONG"):
                            return
                except OSError:
                    time.sleep(0.02)
            last = Path(self.dir, "redis.log").read_text(errors="replace")[-2000:]
            self.stop()
        pytest.fail(f"cannot start redis-server: {last}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Proc:
    """A ``wasq`` child process with its stderr in a log file; killed by ``kill``."""

    def __init__(self, args: List[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [str(wasq_bin()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
            env=dict(os.environ, RUST_LOG="wasq_host=info"),
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, marker: str) -> str:
        """Waits until the log has a line with ``marker``; the rest of that line."""
        log = eventually(
            30, f"{self.log.name} logging {marker!r}", self.text, lambda t: marker in t
        )
        line = next(l for l in log.splitlines() if marker in l)
        return line.split(marker, 1)[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Deployment:
    """A redis-server, a key prefix and two hosts serving it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer()
        self.prefix = f"pytest{os.getpid()}"
        self.procs: List[Proc] = []
        for n in range(2):
            self.spawn(
                f"host{n}",
                [
                    "host",
                    "run",
                    "--redis",
                    self.redis.url,
                    "--prefix",
                    self.prefix,
                    "--concurrency",
                    "8",
                    "--lease",
                    "5",
                    "--grace",
                    "1",
                ],
            )

    def spawn(self, name: str, args: List[str]) -> Proc:
        proc = Proc(args, self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name} ---\n{p.text()[-4000:]}" for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        self.redis.stop()
        shutil.rmtree(self.redis.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def examples() -> Path:
    """The example task module (tasks/examples)."""
    path = Path(os.environ.get("WASQ_EXAMPLES_WASM") or REPO / "target/tasks/examples.wasm")
    if not path.is_file():
        pytest.fail(f"no task module at {path}: `make tasks`, or set WASQ_EXAMPLES_WASM")
    return path


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("deployment"))
    try:
        # The hosts are up once one of them answers a call.
        with wasq.Client(d.redis.url, d.prefix) as c:
            try:
                assert c.call(examples, "add", 1, 1, wait=60) == 2
            except Exception as e:  # the hosts' logs say why
                pytest.fail(f"the hosts do not answer ({e!r}):\n{d.logs()}")
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(deployment: Deployment) -> Iterator[wasq.Client]:
    with wasq.Client(deployment.redis.url, deployment.prefix) as c:
        yield c


@pytest.fixture
def module(client: wasq.Client, examples: Path) -> str:
    """``sha256:HEX`` of the uploaded example module."""
    return client.upload(examples)


def unique(name: str) -> str:
    """A name no other test uses (tags, prefixes)."""
    return f"{name}-{os.getpid()}-{next(_counter)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call" and "deployment" in item.fixturenames:
        d = item.funcargs.get("deployment")
        if d is not None:
            report.sections.append(("wasq processes", d.logs()))
