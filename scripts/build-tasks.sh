#!/usr/bin/env bash
# Builds the example and test guests in tasks/ (their own cargo workspace, target
# wasm32-wasip1, release profile) and copies every module to target/tasks/*.wasm.
#
#   scripts/build-tasks.sh [extra cargo build flags, e.g. --locked]
#
# Works from any directory. Needs the wasm32-wasip1 target of the toolchain that
# builds tasks/ (`rustup target add wasm32-wasip1`); this script never installs it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tasks="$repo/tasks"
out="$repo/target/tasks"
target="wasm32-wasip1"

# Cargo reads tasks/.cargo/config.toml (build.target) only from inside tasks/.
cd "$tasks"

sysroot="$(rustc --print sysroot)"
if [ ! -d "$sysroot/lib/rustlib/$target" ]; then
    {
        echo "error: the Rust target $target is not installed for $(rustc --version)"
        echo "       install it with:  rustup target add $target"
        echo "       then run this script again"
    } >&2
    exit 1
fi

# A fixed target directory, whatever CARGO_TARGET_DIR says, so the modules are
# found below; tasks/target is git-ignored.
export CARGO_TARGET_DIR="$tasks/target"
# Every task at full speed, except the cold-start benchmark's module, which
# is about its size (profile `small`, see tasks/Cargo.toml).
cargo build --release --target "$target" --workspace --exclude wasq-task-bench100k "$@"
cargo build --profile small --target "$target" -p wasq-task-bench100k "$@"

mkdir -p "$out"
shopt -s nullglob
modules=("$CARGO_TARGET_DIR/$target/release/"*.wasm "$CARGO_TARGET_DIR/$target/small/"*.wasm)
if [ "${#modules[@]}" -lt 3 ]; then
    echo "error: cargo built too few .wasm modules in $CARGO_TARGET_DIR/$target/{release,small}" >&2
    exit 1
fi
for module in "${modules[@]}"; do
    cp "$module" "$out/"
    printf '%8d bytes  %s\n' "$(wc -c <"$module")" "target/tasks/$(basename "$module")"
done
