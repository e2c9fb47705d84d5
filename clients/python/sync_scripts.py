#!/usr/bin/env python3
"""Writes the Lua scripts the Python client runs (src/wasq/lua/*.lua) as
the Rust crate wasq-broker assembles them: its generated prelude,
common.lua, then each script's body. The Rust test that does the writing
(`python_client_ships_these_scripts` in broker/src/redis/scripts.rs) fails,
when run without WASQ_SYNC_SCRIPTS=1, if the shipped copies differ, so
`cargo test` (and `make test`) catch a copy left behind.

Usage: python3 clients/python/sync_scripts.py   (from anywhere in the repo)
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    env = dict(os.environ, WASQ_SYNC_SCRIPTS="1")
    cmd = [
        os.environ.get("CARGO", "cargo"),
        "test",
        "-q",
        "-p",
        "wasq-broker",
        "--lib",
        "python_client_ships_these_scripts",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        print("sync_scripts: cargo test failed", file=sys.stderr)
        return done.returncode
    lua = REPO / "clients/python/src/wasq/lua"
    for path in sorted(lua.glob("*.lua")):
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
