"""Names: tag a module, resolve NAME and NAME@VERSION, call by name."""

from __future__ import annotations

import subprocess

import pytest

import wasq
from conftest import unique, wasq_bin


def test_tag_resolve_and_call_by_name(client: wasq.Client, examples, module: str) -> None:
    name = unique("examples")
    assert client.tag(name, examples, version="1.0") == module
    assert client.resolve(name) == module
    assert client.resolve(f"{name}@1.0") == module
    assert client.call(f"{name}@1.0", "add", 4, 5, wait=30) == 9
    assert client.submit(name, "add", 1, 1).get(timeout=30) == 2
    with pytest.raises(wasq.ModuleNotFound):
        client.resolve(f"{name}@9")


def test_names_are_shared_with_the_cli(deployment, client: wasq.Client, module: str) -> None:
    # A tag written by the Python client is what `wasq module ls` lists.
    name = unique("shared")
    client.tag(name, module)
    out = subprocess.run(
        [
            str(wasq_bin()),
            "module",
            "ls",
            "--redis",
            deployment.redis.url,
            "--prefix",
            deployment.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert name in out.stdout and module[7:] in out.stdout


def test_bad_names(client: wasq.Client, module: str) -> None:
    with pytest.raises(wasq.InvalidName):
        client.tag("a b", module)
    with pytest.raises(wasq.InvalidName):
        client.tag("ok", module, version="x@y")
    with pytest.raises(wasq.InvalidName):
        client.resolve("a@b@c")
    with pytest.raises(wasq.ModuleNotFound):
        client.tag(unique("missing"), "sha256:" + "cd" * 32)
