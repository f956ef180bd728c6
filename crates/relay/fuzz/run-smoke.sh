#!/usr/bin/env bash
# Smoke-fuzz every airlock-relay target for ${FUZZ_SECONDS:-60} seconds each on stable Rust
# (`-s none`: no sanitizer, which needs nightly). Installs cargo-fuzz if missing.
# Exit status is non-zero if any target crashes; crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail

seconds="${FUZZ_SECONDS:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."   # crates/relay: cargo fuzz expects to run next to fuzz/

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io..." >&2
    cargo install cargo-fuzz --locked
fi

cargo fuzz build -s none

for target in $(cargo fuzz list); do
    corpus="fuzz/corpus/$target"
    seeds="fuzz/seeds/$target"
    mkdir -p "$corpus"
    dirs=("$corpus")
    if [ -d "$seeds" ]; then
        dirs+=("$seeds")
    fi
    echo "=== fuzzing $target for ${seconds}s" >&2
    cargo fuzz run -s none "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
