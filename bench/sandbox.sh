#!/usr/bin/env bash
# bash tool round trip (`true`) inside the sandbox (bubblewrap + cgroup limits) vs unconfined,
# in one run (goal: at most 15 ms added). Not part of scripts/test. Needs bubblewrap.
#
#   bench/sandbox.sh               # N=500 warm calls, COLD_N=30 sandbox starts per mode
#   N=2000 COLD_N=100 bench/sandbox.sh
#
# Prints JSON lines: warm_* (persistent shell, what every call after the first costs),
# cold_* (open the sandbox + first call), spawn_unconfined (a fresh `bash -c true` per call),
# and a summary with the added milliseconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec cargo bench -q -p airlock-sandbox --bench roundtrip
