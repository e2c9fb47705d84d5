"""RPyC and Pyro5 baselines for wasq's direct calls (`wasq bench`, phase
`direct`): a trivial `add(x, y)` served by another process on loopback.

For each framework: a server process (RPyC's ThreadedServer; a Pyro5 daemon,
its default thread pool), then from this process 1,000 sequential round trips
(p50, p99) and 20,000 calls from 8 threads, one connection (proxy) each
(calls/s), every result checked. Writes one JSON file per framework:

    python bench/rpc/bench.py --out-dir DIR [--calls N] [--latency-n N] [--threads T]

Needs `rpyc` and `Pyro5` (scripts/bench.sh installs them in its virtualenv).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(kind, port):
    """Runs a server forever (in the child process)."""
    if kind == "rpyc":
        import rpyc
        from rpyc.utils.server import ThreadedServer

        class Calc(rpyc.Service):
            def exposed_add(self, x, y):
                return x + y

        ThreadedServer(Calc, hostname="127.0.0.1", port=port).start()
    else:
        import Pyro5.api

        @Pyro5.api.expose
        class Calc:
            def add(self, x, y):
                return x + y

        daemon = Pyro5.api.Daemon(host="127.0.0.1", port=port)
        daemon.register(Calc, objectId="calc")
        daemon.requestLoop()


def connect(kind, port):
    """A connection and the `add` to call through it."""
    if kind == "rpyc":
        import rpyc

        conn = rpyc.connect("127.0.0.1", port)
        return conn, conn.root.add
    import Pyro5.api

    proxy = Pyro5.api.Proxy(f"PYRO:calc@127.0.0.1:{port}")
    proxy._pyroBind()
    return proxy, proxy.add


def wait_port(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(kind, calls, latency_n, threads):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        conn, add = connect(kind, port)
        for i in range(200):
            assert add(i, 1) == i + 1
        samples = []
        for i in range(latency_n):
            t = time.perf_counter()
            assert add(i, 2) == i + 2
            samples.append((time.perf_counter() - t) * 1e3)
        samples.sort()
        per_thread = calls // threads
        errors = []

        def worker():
            try:
                _, add = connect(kind, port)
                for i in range(per_thread):
                    if add(i, 3) != i + 3:
                        errors.append("wrong result")
                        return
            except Exception as e:  # reported, not raised, from a thread
                errors.append(repr(e))

        workers = [threading.Thread(target=worker) for _ in range(threads)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t
        if errors:
            raise RuntimeError(errors[0])
        return {
            "label": kind,
            "p50_ms": statistics.median(samples),
            "p99_ms": samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))],
            "latency_n": latency_n,
            "throughput_per_s": per_thread * threads / seconds,
            "calls": per_thread * threads,
            "threads": threads,
        }
    finally:
        server.kill()
        server.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--serve", choices=["rpyc", "pyro5"])
    p.add_argument("--port", type=int)
    p.add_argument("--out-dir")
    p.add_argument("--run", default="1")
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--latency-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8)
    a = p.parse_args()
    if a.serve:
        serve(a.serve, a.port)
        return
    for kind in ("rpyc", "pyro5"):
        result = measure(kind, a.calls, a.latency_n, a.threads)
        print(
            f"{kind}: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
            f"{result['throughput_per_s']:.0f} calls/s ({a.threads} threads)",
            file=sys.stderr,
        )
        with open(os.path.join(a.out_dir, f"rpc-{kind}-{a.run}.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
