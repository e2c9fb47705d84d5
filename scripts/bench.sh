#!/usr/bin/env bash
# `make bench`: wasq's benchmarks and the Celery baseline against the same
# throwaway redis-server, and the RPyC/Pyro5 baseline of direct calls
# (bench/rpc/bench.py), repeated, then the tables of medians and ratios
# against the targets.
#
#   scripts/bench.sh                 # RUNS=3 repetitions, full sizes
#   RUNS=5 scripts/bench.sh
#   QUICK=1 scripts/bench.sh         # small sizes, one run: checks the plumbing
#
# Knobs (env): RUNS (3), CALLS (20000, wasq throughput calls), CELERY_N (5000),
# CELERY_LAT_N (500), CELERY_CONFIGS ("solo:1:4 prefork:2:4", pool:concurrency:
# prefetch as in bench/celery/README.md; the best is the baseline),
# WASQ_BENCH_ARGS (extra flags for `wasq bench`), OUT (target/bench/<time>).
#
# Starts its own redis-server on a free loopback port with a temp dir (never
# the system one), and stops it, by pid, on exit. wasq uses database 2 of it,
# because the Celery baseline flushes databases 0 and 1 before each repetition.
# Celery comes from a virtualenv under target/bench/ (created on first use);
# if it cannot be installed, wasq's numbers are still reported.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

RUNS="${RUNS:-3}"
CALLS="${CALLS:-20000}"
CELERY_N="${CELERY_N:-5000}"
CELERY_LAT_N="${CELERY_LAT_N:-500}"
CELERY_CONFIGS="${CELERY_CONFIGS:-solo:1:4 prefork:2:4}"
WASQ_BENCH_ARGS="${WASQ_BENCH_ARGS:-}"
RPC_ARGS=""
if [ -n "${QUICK:-}" ]; then
    RUNS=1 CALLS=2000 CELERY_N=500 CELERY_LAT_N=100 CELERY_CONFIGS="solo:1:4"
    RPC_ARGS="--calls 2000 --latency-n 200"
    WASQ_BENCH_ARGS="--latency-calls 200 --cold-reps 2 --warm-calls 5000 --fib 27 --sha256-bytes 262144 --cpu-reps 3 --scaling-calls 2000 --memory-calls 200 $WASQ_BENCH_ARGS"
fi
OUT="${OUT:-$repo/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT" "$repo/target/bench"
ln -sfn "$OUT" "$repo/target/bench/latest"

for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install redis-server python3)" >&2; exit 1; }
done
for m in examples bench100k; do
    [ -f "target/tasks/$m.wasm" ] || { echo "error: target/tasks/$m.wasm is missing: run \`make tasks\`" >&2; exit 1; }
done

echo "--- build (release)"
cargo build -q -p wasq-host --release --bin wasq
wasq="${CARGO_TARGET_DIR:-$repo/target}/release/wasq"

echo "--- celery"
venv="$repo/target/bench/celery-venv"
PY=""
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import celery, redis, rpyc, Pyro5" 2>/dev/null; then
    PY="$venv/bin/python"
elif python3 -m venv "$venv" >/dev/null 2>&1 \
    && "$venv/bin/pip" install -q "celery[redis]==5.7.0" "rpyc==6.0.2" "Pyro5==5.17" >"$OUT/pip.log" 2>&1; then
    PY="$venv/bin/python"
else
    echo "WARNING: cannot install Celery (see $OUT/pip.log): reporting wasq's numbers without the baseline" >&2
fi
[ -n "$PY" ] && echo "celery $("$PY" -c 'import celery; print(celery.__version__)') in $venv"

echo "--- redis-server"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rundir="$(mktemp -d "${TMPDIR:-/tmp}/wasq-bench-redis.XXXXXX")"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$rundir/redis.pid" --dir "$rundir" --logfile "$rundir/redis.log"
for _ in $(seq 1 50); do
    [ -s "$rundir/redis.pid" ] && redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis_pid="$(cat "$rundir/redis.pid")"
stop_redis() {
    if kill -0 "$redis_pid" 2>/dev/null; then
        kill -TERM "$redis_pid"
        for _ in $(seq 1 50); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$redis_pid" 2>/dev/null && kill -KILL "$redis_pid"
    fi
    rm -rf "$rundir"
}
trap stop_redis EXIT
trap 'exit 130' INT TERM
echo "$(redis-server --version | cut -d' ' -f1-3), pid $redis_pid on 127.0.0.1:$port"

busy_cores() {  # busy cores over a 1-second sample, from /proc/stat
    local a b
    a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    awk -v t="$(getconf CLK_TCK)" \
        -v u=$(( (b[1]+b[2]+b[3]+b[6]+b[7]) - (a[1]+a[2]+a[3]+a[6]+a[7]) )) \
        'BEGIN { printf "%.2f", u / t }'
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "mem: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1024/1024}' /proc/meminfo)"
    echo "kernel: $(uname -srm)"
    echo "redis-server: $(redis-server --version)"
    echo "rustc: $(rustc --version)"
    [ -n "$PY" ] && echo "python: $("$PY" --version 2>&1), celery $("$PY" -c 'import celery; print(celery.__version__)')"
    echo "wasq bench args: --calls $CALLS $WASQ_BENCH_ARGS"
} > "$OUT/env.txt"
cat "$OUT/env.txt"

for run in $(seq 1 "$RUNS"); do
    echo "--- run $run of $RUNS (machine: $(busy_cores) busy cores before it)"
    # shellcheck disable=SC2086
    "$wasq" bench --redis "redis://127.0.0.1:$port/2" --calls "$CALLS" $WASQ_BENCH_ARGS --json --progress \
        > "$OUT/wasq-$run.json" 2> >(tee "$OUT/wasq-$run.log" >&2) \
        || { echo "wasq bench failed in run $run (see $OUT/wasq-$run.log)" >&2; rm -f "$OUT/wasq-$run.json"; }
    if [ -n "$PY" ]; then
        for cfg in $CELERY_CONFIGS; do
            IFS=: read -r pool conc pf <<<"$cfg"
            label="${pool}-c${conc}-pf${pf}"
            BENCH_OUT="$OUT/celery" timeout 300 "$PY" bench/celery/bench.py \
                --pool "$pool" --concurrency "$conc" --prefetch "$pf" \
                -n "$CELERY_N" --latency-n "$CELERY_LAT_N" --reps 1 --max-seconds 240 \
                --redis-port "$port" --redis-pid "$redis_pid" --label "$label" \
                --out "$OUT/celery-$label-$run.json" \
                || echo "celery $label failed in run $run (see $OUT/celery/logs)" >&2
        done
        timeout 300 "$PY" bench/rpc/bench.py --out-dir "$OUT" --run "$run" $RPC_ARGS \
            || echo "the RPyC/Pyro5 baseline failed in run $run" >&2
    fi
done

echo "--- summary ($OUT)"
"$wasq" bench --summarize "$OUT" | tee "$OUT/summary.md"
