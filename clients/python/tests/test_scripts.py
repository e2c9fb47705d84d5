"""The package ships the Rust broker's scripts: each copy is the prelude
wasq-broker generates, its common.lua and the script's body, byte for byte
(the Rust test `python_client_ships_these_scripts` checks the whole text,
prelude included; this one catches a body or common.lua edited in
broker/src/redis/ without `sync_scripts.py`, and a package installed
without them)."""

from __future__ import annotations

import hashlib
from importlib import resources

from conftest import REPO

SHIPPED = ["submit", "listen", "revoke"]
RUST = REPO / "broker/src/redis"
SOURCE = REPO / "clients/python/src/wasq/lua"


def test_copies_are_prelude_common_and_body() -> None:
    common = (RUST / "common.lua").read_text()
    for name in SHIPPED:
        shipped = (SOURCE / f"{name}.lua").read_text()
        body = (RUST / f"{name}.lua").read_text()
        assert shipped.startswith("-- Generated from the Rust constants"), name
        assert shipped.endswith(common + "\n" + body), (
            f"clients/python/src/wasq/lua/{name}.lua is out of date: run "
            "`python3 clients/python/sync_scripts.py`"
        )


def test_the_installed_package_has_them() -> None:
    for name in SHIPPED:
        installed = resources.files("wasq").joinpath("lua", f"{name}.lua").read_text("utf-8")
        assert installed == (SOURCE / f"{name}.lua").read_text(), name


def test_every_script_the_client_runs_is_shipped() -> None:
    from wasq import _protocol

    scripts = _protocol.scripts()
    assert sorted(vars(scripts)) == sorted(SHIPPED)
    for script in vars(scripts).values():
        assert script.sha == hashlib.sha1(script.source.encode()).hexdigest()
