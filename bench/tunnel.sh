#!/usr/bin/env bash
# Throughput of tools/call through Airlock's Anthropic tunnel ingress (WebSocket + inner TLS,
# reached the way Anthropic's backend reaches it) vs the loopback gateway of the SAME agent, on
# the same bridged stdio server (server-everything on Node 22, tool `echo`), in one run, with
# the same load generator, fixed concurrency and bounded duration. Loopback only; no
# cloudflared involved. Not part of scripts/test (run scripts/test once first for the tools).
#
#   bench/tunnel.sh                      # CONCURRENCY=8 DURATION=10 (seconds per target)
#   CONCURRENCY=16 DURATION=20 bench/tunnel.sh
#   PROFILE=debug DURATION=2 bench/tunnel.sh   # quick smoke run of this script
#
# Each load-generator worker holds one connection (one WebSocket + TLS session, or one TCP
# connection), opens its own MCP session on it, then calls `echo` in a closed loop. Prints one
# JSON line per target and the tunnel/gateway ratio.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONCURRENCY="${CONCURRENCY:-8}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
PROFILE="${PROFILE:-release}"
DOMAIN="${TUNNEL_DOMAIN:-abcd1234.tunnel.example}"
NODE_DIR="$ROOT/tests/node"
NODE="$NODE_DIR/node_modules/.bin/node"
SE="$NODE_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"

for f in "$NODE" "$SE"; do
    if [ ! -e "$f" ]; then
        echo "error: $f is missing; run scripts/test once (it installs the pinned npm tools)" >&2
        exit 1
    fi
done

echo "==> building $PROFILE binaries (airlock, tunnel-load)" >&2
if [ "$PROFILE" = release ]; then PROFILE_FLAG=(--release); else PROFILE_FLAG=(); fi
(cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -q -p airlock -p airlock-e2e --bin airlock --bin tunnel-load)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
AIRLOCK="${AIRLOCK_BIN:-$TARGET_DIR/$PROFILE/airlock}"
LOAD="$TARGET_DIR/$PROFILE/tunnel-load"

TMP="$(mktemp -d -t airlock-bench-tunnel-XXXXXX)"
AGENT_PID=""
cleanup() {
    if [ -n "$AGENT_PID" ]; then
        kill "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[k]
print(v)' "$1"; }

# --- one agent: loopback gateway + Anthropic tunnel ingress --------------------------------
mkdir -p "$TMP/home/.config/Claude" "$TMP/airlock"
cat >"$TMP/home/.config/Claude/claude_desktop_config.json" <<JSON
{"mcpServers": {"everything": {"command": "$NODE", "args": ["$SE", "stdio"]}}}
JSON
# File keystore: a benchmark must not touch (or prompt for) the user's keychain.
cat >"$TMP/airlock/config.toml" <<TOML
[discovery]
probe_running = false

[keystore]
backend = "file"

[anthropic]
tunnel_domain = "$DOMAIN"
listen_addr = "127.0.0.1:0"
TOML
export HOME="$TMP/home" AIRLOCK_HOME="$TMP/airlock" XDG_CONFIG_HOME="$TMP/home/.config"
GW_PORT="$(free_port)"
RUST_LOG=warn "$AIRLOCK" up --gateway-port "$GW_PORT" </dev/null 2>"$TMP/airlock.log" &
AGENT_PID=$!
for i in $(seq 1 300); do
    if "$AIRLOCK" status --json 2>/dev/null | grep -q '"ready": *true'; then break; fi
    if [ "$i" = 300 ]; then echo "error: airlock not ready; log:" >&2; cat "$TMP/airlock.log" >&2; exit 1; fi
    sleep 0.2
done
for i in $(seq 1 100); do
    "$AIRLOCK" servers --json | grep -q '"name": *"everything"' && break
    sleep 0.2
done
"$AIRLOCK" expose everything --yes --hostname everything >/dev/null
URL_JSON="$("$AIRLOCK" url everything --json)"
GW_URL="$(json_field url <<<"$URL_JSON")"
# A token for this one server (the load generator stands for a caller without a browser).
TOKEN="$("$AIRLOCK" token create everything --label "bench/tunnel.sh" 2>/dev/null)"
TUNNEL_URL="$(json_field tunnel_url <<<"$URL_JSON")"
WS_ADDR="$("$AIRLOCK" status --json | json_field anthropic.listen_addr)"
"$AIRLOCK" ca export >"$TMP/ca.pem"

# --- measure (sequentially, same parameters, same bridged child) ----------------------------
echo "==> tools/call echo, concurrency $CONCURRENCY, ${DURATION}s each (+${WARMUP}s warm-up)" >&2
echo "    tunnel:  ws://$WS_ADDR -> TLS $TUNNEL_URL" >&2
echo "    gateway: $GW_URL" >&2
TUNNEL_RES="$("$LOAD" --label tunnel --ws "$WS_ADDR" --tunnel-url "$TUNNEL_URL" --ca "$TMP/ca.pem" \
    --token "$TOKEN" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")"
echo "$TUNNEL_RES"
GW_RES="$("$LOAD" --label gateway --gateway-url "$GW_URL" --token "$TOKEN" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")"
echo "$GW_RES"

python3 - "$TUNNEL_RES" "$GW_RES" <<'PY'
import json, sys
t, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratio = t["rps"] / g["rps"] if g["rps"] else float("inf")
print(f"tunnel (WebSocket + inner TLS): {t['rps']:.0f} req/s (p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms, errors {t['errors']})")
print(f"loopback gateway:               {g['rps']:.0f} req/s (p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms, errors {g['errors']})")
print(f"ratio tunnel/gateway: {ratio:.2f}x")
PY
