#!/usr/bin/env bash
# Smoke-fuzz every airlock-proto target for ${FUZZ_SECONDS:-60} seconds each (see scripts/fuzz-smoke).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../scripts/fuzz-smoke" "$here/.."
