#!/usr/bin/env python3
"""Writes src/wasq/lua/prelude.lua, the Lua prelude wasq-broker generates
from its Rust constants. The scripts themselves are links to
broker/src/redis/*.lua, so only the prelude can fall behind; the Rust test
that does the writing (`python_client_ships_these_scripts` in
broker/src/redis/scripts.rs) fails, when run without WASQ_SYNC_SCRIPTS=1, if
it has, so `cargo test` (and `make test`) catch it.

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
    prelude = REPO / "clients/python/src/wasq/lua/prelude.lua"
    print(f"wrote {prelude.relative_to(REPO)} ({prelude.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
