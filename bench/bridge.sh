#!/usr/bin/env bash
# Throughput of tools/call through the Airlock stdio bridge vs `supergateway --stateful`
# (npm, pinned in tests/node) on the same stdio server (server-everything on Node 22),
# measured in one run with the same load generator, fixed concurrency and bounded duration.
# Loopback only. Not part of scripts/test (run scripts/test once first for the tools).
#
#   bench/bridge.sh                      # CONCURRENCY=8 DURATION=10 (seconds per target)
#   CONCURRENCY=16 DURATION=20 bench/bridge.sh
#
# Each load-generator worker opens its own MCP session (initialize), then calls `echo` in a
# closed loop. Prints one JSON line per target and the Airlock/supergateway ratio (goal >= 3x).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONCURRENCY="${CONCURRENCY:-8}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
PROFILE="${PROFILE:-release}"   # PROFILE=debug for a quick smoke run of this script
NODE_DIR="$ROOT/tests/node"
NODE="$NODE_DIR/node_modules/.bin/node"
SE="$NODE_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
SG="$NODE_DIR/node_modules/supergateway/dist/index.js"

for f in "$NODE" "$SE" "$SG"; do
    if [ ! -e "$f" ]; then
        echo "error: $f is missing; run scripts/test once (it installs the pinned npm tools)" >&2
        exit 1
    fi
done

echo "==> building $PROFILE binaries (airlock, mcp-load)" >&2
if [ "$PROFILE" = release ]; then PROFILE_FLAG=(--release); else PROFILE_FLAG=(); fi
(cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -q -p airlock -p airlock-e2e --bin airlock --bin mcp-load)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
AIRLOCK="${AIRLOCK_BIN:-$TARGET_DIR/$PROFILE/airlock}"
LOAD="$TARGET_DIR/$PROFILE/mcp-load"

TMP="$(mktemp -d -t airlock-bench-XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local port=$1 i
    for i in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "error: nothing listens on 127.0.0.1:$port after 30 s" >&2
    return 1
}

# --- Airlock --------------------------------------------------------------------------
mkdir -p "$TMP/home/.config/Claude" "$TMP/airlock"
cat >"$TMP/home/.config/Claude/claude_desktop_config.json" <<JSON
{"mcpServers": {"everything": {"command": "$NODE", "args": ["$SE", "stdio"]}}}
JSON
printf '[discovery]\nprobe_running = false\n' >"$TMP/airlock/config.toml"
export HOME="$TMP/home" AIRLOCK_HOME="$TMP/airlock" XDG_CONFIG_HOME="$TMP/home/.config"
GW_PORT="$(free_port)"
RUST_LOG=warn "$AIRLOCK" up --gateway-port "$GW_PORT" </dev/null 2>"$TMP/airlock.log" &
PIDS+=($!)
for i in $(seq 1 300); do
    if "$AIRLOCK" status --json 2>/dev/null | grep -q '"ready": *true'; then break; fi
    if [ "$i" = 300 ]; then echo "error: airlock not ready; log:" >&2; cat "$TMP/airlock.log" >&2; exit 1; fi
    sleep 0.2
done
for i in $(seq 1 100); do
    "$AIRLOCK" servers --json | grep -q '"name": *"everything"' && break
    sleep 0.2
done
"$AIRLOCK" expose everything --yes >/dev/null
URL_JSON="$("$AIRLOCK" url everything --json)"
AL_URL="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])' <<<"$URL_JSON")"
# A token for this one server (the load generator is a caller without a browser).
AL_TOKEN="$("$AIRLOCK" token create everything --label "bench/bridge.sh" 2>/dev/null)"

# --- supergateway --stateful ----------------------------------------------------------
SG_PORT="$(free_port)"
PATH="$NODE_DIR/node_modules/.bin:$PATH" "$NODE" "$SG" --stdio "$NODE $SE stdio" \
    --outputTransport streamableHttp --stateful --port "$SG_PORT" --logLevel none \
    </dev/null >"$TMP/supergateway.log" 2>&1 &
PIDS+=($!)
wait_port "$SG_PORT"
SG_URL="http://127.0.0.1:$SG_PORT/mcp"

# --- measure (sequentially, same parameters) ------------------------------------------
echo "==> tools/call echo, concurrency $CONCURRENCY, ${DURATION}s each (+${WARMUP}s warm-up)" >&2
status=0
AL_RES="$("$LOAD" --label airlock --url "$AL_URL" --token "$AL_TOKEN" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")" || status=1
echo "$AL_RES"
SG_RES="$("$LOAD" --label supergateway-stateful --url "$SG_URL" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")" || status=1
echo "$SG_RES"
if [ "$status" != 0 ]; then
    echo "error: a target answered no call; logs:" >&2
    tail -n 30 "$TMP/airlock.log" "$TMP/supergateway.log" >&2
    exit 1
fi

python3 - "$AL_RES" "$SG_RES" <<'PY'
import json, sys
a, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = a["rps"] / s["rps"] if s["rps"] else float("inf")
print(f"airlock: {a['rps']:.0f} req/s (p50 {a['p50_ms']:.2f} ms, p99 {a['p99_ms']:.2f} ms, errors {a['errors']})")
print(f"supergateway --stateful: {s['rps']:.0f} req/s (p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, errors {s['errors']})")
print(f"ratio airlock/supergateway: {ratio:.2f}x (goal >= 3x)")
PY
