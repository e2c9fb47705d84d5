"""The package runs the Rust broker's scripts from one source: ``wasq/lua``
holds the prelude wasq-broker generates (the Rust test
`python_client_ships_these_scripts` checks it is current) and links to
broker/src/redis's ``.lua`` files, which the built package carries as
copies."""

from __future__ import annotations

import hashlib
from importlib import resources

from conftest import REPO

SHIPPED = ["submit", "listen", "revoke"]
RUST = REPO / "broker/src/redis"
SOURCE = REPO / "clients/python/src/wasq/lua"


def test_the_package_links_to_the_rust_scripts() -> None:
    for name in SHIPPED + ["common"]:
        link = SOURCE / f"{name}.lua"
        assert link.is_symlink(), f"{link} should link to broker/src/redis/{name}.lua"
        assert link.resolve() == (RUST / f"{name}.lua").resolve(), name
    prelude = (SOURCE / "prelude.lua").read_text()
    assert prelude.startswith("-- Generated from the Rust constants"), prelude[:80]


def test_the_installed_package_has_them() -> None:
    for name in SHIPPED + ["common", "prelude"]:
        installed = resources.files("wasq").joinpath("lua", f"{name}.lua").read_text("utf-8")
        assert installed == (SOURCE / f"{name}.lua").read_text(), name


def test_scripts_are_assembled_as_the_rust_broker_assembles_them() -> None:
    from wasq import _protocol

    scripts = _protocol.scripts()
    assert sorted(vars(scripts)) == sorted(SHIPPED)
    prelude = (SOURCE / "prelude.lua").read_text()
    common = (RUST / "common.lua").read_text()
    for name, script in vars(scripts).items():
        body = (RUST / f"{name}.lua").read_text()
        assert script.source == f"{prelude}{common}\n{body}", name
        assert script.sha == hashlib.sha1(script.source.encode()).hexdigest()
