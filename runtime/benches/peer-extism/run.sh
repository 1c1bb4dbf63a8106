#!/usr/bin/env bash
# Builds the Extism plugin and runs the peer benchmark, which measures the
# sinkbox blackhole and the same logic under Extism in one process,
# interleaved, and writes section 8 of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-unknown-unknown
target="${CARGO_TARGET_DIR:-$PWD/target}"
(cd plugin && cargo build --release --target wasm32-unknown-unknown --target-dir "$target")
cargo run --release --target-dir "$target" -- "$target/wasm32-unknown-unknown/release/blackhole_extism.wasm"
