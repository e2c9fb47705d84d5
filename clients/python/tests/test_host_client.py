"""HostClient against a real `wasq serve`: uploads, calls, failures, tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import wasq
from conftest import Deployment, Proc, free_port, unique


def serve(deployment: Deployment, name: str, *extra: str) -> Proc:
    return deployment.spawn(name, ["serve", "--listen", "127.0.0.1:0", *extra])


def address(proc: Proc) -> str:
    rest = proc.logged("answering calls at ")
    return rest.split("://", 1)[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def served(deployment: Deployment) -> Iterator[str]:
    proc = serve(
        deployment, "serve", "--redis", deployment.redis.url, "--prefix", deployment.prefix
    )
    yield f"http://{address(proc)}"
    proc.kill()


def test_upload_and_call(served: str, examples: Path) -> None:
    host = wasq.HostClient(served)
    ref = host.upload(examples)
    assert ref.startswith("sha256:") and len(ref) == 71
    assert host.call(ref, "add", 4, 5) == 9
    env = host.run(ref, "process_file", "a.txt", "one two")
    assert env.succeeded and env.result["words"] == 2 and env.attempt == 1
    assert host.health()["status"] == "ok"


def test_module_bytes_are_sent_when_missing(deployment: Deployment, examples: Path) -> None:
    proc = serve(deployment, "serve-fresh")
    host = wasq.HostClient(f"http://{address(proc)}")
    assert host.call(examples, "add", 1, 2) == 3
    assert host.call(examples.read_bytes(), "add", 2, 2) == 4
    proc.kill()


def test_failures_map_to_their_kinds(served: str, examples: Path) -> None:
    host = wasq.HostClient(served)
    ref = host.upload(examples)
    cases = [
        (("fib", 100), {}, wasq.TaskError),
        (("add", "x", 1), {}, wasq.BadInput),
        (("fib", 30), {"fuel": 100_000}, wasq.FuelExhausted),
        (("long_processing", "x", 10), {"timeout": 0.2}, wasq.TaskTimeout),
        (("nope",), {}, wasq.TaskNotFound),
    ]
    for (task, *args), limits, kind in cases:
        with pytest.raises(kind) as raised:
            host.call(ref, task, *args, **limits)
        assert raised.value.envelope is not None and raised.value.kind == kind.kind
    with pytest.raises(wasq.ModuleNotFound):
        host.call("sha256:" + "ef" * 32, "add", 1, 2)
    with pytest.raises(wasq.InvalidModule):
        host.upload(b"not wasm at all")
    with pytest.raises(wasq.InvalidCall):
        host.call(ref, "add", args=5)


def test_names_from_the_store(served: str, client: wasq.Client, examples: Path) -> None:
    name = unique("served")
    client.tag(name, examples, version="3")
    assert wasq.HostClient(served).call(f"{name}@3", "add", 3, 3) == 6


def test_token_and_unreachable(deployment: Deployment, examples: Path) -> None:
    proc = serve(deployment, "serve-token", "--token", "s3cret")
    url = f"http://{address(proc)}"
    assert wasq.HostClient(url, token="s3cret").call(examples, "add", 1, 1) == 2
    with pytest.raises(wasq.BrokerError, match="401"):
        wasq.HostClient(url).call(examples, "add", 1, 1)
    proc.kill()
    with pytest.raises(wasq.BrokerUnavailable):
        wasq.HostClient(f"http://127.0.0.1:{free_port()}").call(examples, "add", 1, 1)
