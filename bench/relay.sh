#!/usr/bin/env bash
# The Airlock relay on loopback, one run, ratios printed (not part of scripts/test / .ci/run; run
# scripts/test once first for the Node tools). Four measurements:
#
#  1. tools/call (server-everything `echo`, bridged stdio, Node 22) through `airlock relay` + inner TLS
#     (tunnel-load --tls: TCP → relay public port → mux tunnel → agent's inner TLS) vs the same
#     agent's inner TLS WITHOUT the relay (its Anthropic-style ingress on loopback: WebSocket + inner
#     TLS, no relay hop). Goal: relay/direct req/s ≥ 0.85, ≤ 0.2 ms added p50.
#  2. bulk download through the Airlock tunnel vs rathole with its `tls` transport (fair: both
#     encrypt the tunnel), plaintext rathole and bore for information, the direct path as the ceiling.
#     Every path carries the same inner TLS session to the same echo server (relay-load agent).
#     Goal: airlock ≥ 1.0× rathole-tls.
#  3. relay RSS idle, with 1 000 idle tunnels (1 000 agent connections, one token each, from a
#     separate load-generator process), and with 10 000 concurrent streams (inner-TLS sessions through
#     the relay from 127.0.0.2 and up, spread over 48 agent connections of one tunnel).
#
#   bench/relay.sh                              # CONCURRENCY=8 DURATION=10 BULK_MB=512
#   PROFILE=debug DURATION=2 BULK_MB=32 STREAMS=1000 TUNNELS=100 bench/relay.sh   # smoke run
#
# Needs: rathole (`cargo install rathole`), bore (`cargo install --locked bore-cli`) on PATH or in
# $TOOLS_BIN, openssl. A missing rathole/bore is reported and that row skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONCURRENCY="${CONCURRENCY:-8}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
BULK_MB="${BULK_MB:-512}"
TUNNELS="${TUNNELS:-1000}"
STREAMS="${STREAMS:-10000}"
PROFILE="${PROFILE:-release}"
BASE="relay.bench"
NODE_DIR="$ROOT/tests/node"
NODE="$NODE_DIR/node_modules/.bin/node"
SE="$NODE_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
[ -n "${TOOLS_BIN:-}" ] && export PATH="$TOOLS_BIN:$PATH"

for f in "$NODE" "$SE"; do
    if [ ! -e "$f" ]; then
        echo "error: $f is missing; run scripts/test once (it installs the pinned npm tools)" >&2
        exit 1
    fi
done

if [ "${BUILD:-1}" = 1 ]; then
    echo "==> building $PROFILE binaries (airlock, tunnel-load, relay-load); BUILD=0 skips this" >&2
    if [ "$PROFILE" = release ]; then PROFILE_FLAG=(--release); else PROFILE_FLAG=(); fi
    (cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -q -p airlock -p airlock-e2e --bin airlock --bin tunnel-load --bin relay-load)
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
AIRLOCK="${AIRLOCK_BIN:-$TARGET_DIR/$PROFILE/airlock}"
LOAD="$TARGET_DIR/$PROFILE/tunnel-load"
RL="$TARGET_DIR/$PROFILE/relay-load"

TMP="$(mktemp -d -t airlock-bench-relay-XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
ulimit -Sn "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[int(k)] if isinstance(v,list) else v[k]
print(v)' "$1"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_line() { # file, pattern, what
    for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "error: $3 (log: $1)" >&2; cat "$1" >&2; exit 1
}

# --- the relay node ----------------------------------------------------------------------------
RPUB="$(free_port)"; RTUN="$(free_port)"
mkdir -p "$TMP/relay-home"
HOME="$TMP/relay-home" AIRLOCK_HOME="$TMP/relay-home" RUST_LOG=info NO_COLOR=1 \
    "$AIRLOCK" relay --domain "$BASE" --public "127.0.0.1:$RPUB" --tunnel "127.0.0.1:$RTUN" \
    --state "$TMP/relay-state" 2>"$TMP/relay.log" &
RELAY_PID=$!; PIDS+=("$RELAY_PID")
wait_line "$TMP/relay.log" "relay node ready" "airlock relay did not start"
PIN="$(grep -o 'pin=[0-9a-f]*' "$TMP/relay.log" | head -1 | cut -d= -f2)"
token() { HOME="$TMP/relay-home" AIRLOCK_HOME="$TMP/relay-home" "$AIRLOCK" relay token create --domain "$BASE" --name "$1" --state "$TMP/relay-state" 2>/dev/null; }

# --- 1. tools/call: through the relay vs direct inner TLS --------------------------------------
ADOM="abcd1234.direct.example"
mkdir -p "$TMP/home/.config/Claude" "$TMP/airlock"
cat >"$TMP/home/.config/Claude/claude_desktop_config.json" <<JSON
{"mcpServers": {"everything": {"command": "$NODE", "args": ["$SE", "stdio"]}}}
JSON
cat >"$TMP/airlock/config.toml" <<TOML
[discovery]
probe_running = false

[keystore]
backend = "file"

[anthropic]
tunnel_domain = "$ADOM"
listen_addr = "127.0.0.1:0"
TOML
agent_env=(HOME="$TMP/home" AIRLOCK_HOME="$TMP/airlock" XDG_CONFIG_HOME="$TMP/home/.config")
token agent >"$TMP/agent-token.json"
env "${agent_env[@]}" "$AIRLOCK" tunnel login --relay "127.0.0.1:$RTUN" --relay-fingerprint "$PIN" \
    --relay-public-port "$RPUB" <"$TMP/agent-token.json" >/dev/null 2>"$TMP/login.log"
env "${agent_env[@]}" RUST_LOG=warn "$AIRLOCK" up --gateway-port "$(free_port)" </dev/null 2>"$TMP/airlock.log" &
PIDS+=("$!")
for i in $(seq 1 300); do
    if env "${agent_env[@]}" "$AIRLOCK" status --json 2>/dev/null | grep -q '"ready": *true'; then break; fi
    if [ "$i" = 300 ]; then echo "error: airlock not ready" >&2; cat "$TMP/airlock.log" >&2; exit 1; fi
    sleep 0.2
done
for i in $(seq 1 300); do
    env "${agent_env[@]}" "$AIRLOCK" expose everything --yes >/dev/null 2>&1 && break
    [ "$i" = 300 ] && { echo "error: cannot expose everything" >&2; exit 1; }
    sleep 0.2
done
for i in $(seq 1 300); do
    env "${agent_env[@]}" "$AIRLOCK" status --json | grep -q '"state": *"connected"' && break
    [ "$i" = 300 ] && { echo "error: relay node not connected" >&2; exit 1; }
    sleep 0.2
done
URLJ="$(env "${agent_env[@]}" "$AIRLOCK" url everything --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
STATUSJ="$(env "${agent_env[@]}" "$AIRLOCK" status --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
RELAY_URL="$(echo "$URLJ" | json_field relay_url)"
RELAY_CA="$(echo "$URLJ" | json_field relay_ca_file)"
# A token for this one server (the load generators are callers without a browser); valid on every ingress.
BEARER="$(env "${agent_env[@]}" "$AIRLOCK" token create everything --label "bench/relay.sh" 2>/dev/null)"
WS="$(echo "$STATUSJ" | json_field anthropic.listen_addr)"
cp "$TMP/airlock/pki/$ADOM/ca.pem" "$TMP/direct-ca.pem"
HOSTNAME_SUB="$(echo "$RELAY_URL" | sed -E 's#https://([^.]+)\..*#\1#')"

common=(--token "$BEARER" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP")
echo "==> tools/call through the relay: $RELAY_URL" >&2
R1="$("$LOAD" --tls "127.0.0.1:$RPUB" --tunnel-url "$RELAY_URL" --ca "$RELAY_CA" --label relay "${common[@]}")"
echo "==> tools/call direct inner TLS (no relay): https://$HOSTNAME_SUB.$ADOM/mcp via $WS" >&2
R0="$("$LOAD" --ws "$WS" --tunnel-url "https://$HOSTNAME_SUB.$ADOM/mcp" --ca "$TMP/direct-ca.pem" --label direct "${common[@]}")"
echo "$R1"; echo "$R0"

# --- 2. bulk throughput ------------------------------------------------------------------------
token echo >"$TMP/echo-token.json"
ETOK="$(json_field token <"$TMP/echo-token.json")"; EDOM="$(json_field tunnel_domain <"$TMP/echo-token.json")"
mkfifo "$TMP/agent-in"
"$RL" agent --tunnel "127.0.0.1:$RTUN" --pin "$PIN" --domain "$EDOM" --ca-out "$TMP/echo-ca.pem" \
    --connections 48 <"$TMP/agent-in" >"$TMP/agent.out" 2>"$TMP/agent.err" &
ECHO_PID=$!; PIDS+=("$ECHO_PID")
exec 7>"$TMP/agent-in"; echo "$ETOK" >&7
wait_line "$TMP/agent.out" direct "the echo agent did not connect"
DIRECT="$(json_field direct <"$TMP/agent.out")"; EHOST="$(json_field host <"$TMP/agent.out")"
DPORT="${DIRECT##*:}"
BYTES=$((BULK_MB * 1024 * 1024))
bulk() { "$RL" bulk --connect "$1" --host "$EHOST" --ca "$TMP/echo-ca.pem" --bytes "$BYTES" --label "$2"; }
B_AIR="$(bulk "127.0.0.1:$RPUB" airlock)" || { echo "error: bulk through the relay failed" >&2; tail -5 "$TMP/relay.log" >&2; B_AIR=""; }; echo "$B_AIR"
B_DIR="$(bulk "$DIRECT" direct)"; echo "$B_DIR"

B_RT=""; B_RP=""; B_BORE=""
if command -v rathole >/dev/null && command -v openssl >/dev/null; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$TMP/rt.key" -out "$TMP/rt.crt" 2>/dev/null
    openssl pkcs12 -export -out "$TMP/rt.pfx" -inkey "$TMP/rt.key" -in "$TMP/rt.crt" -passout pass:bench 2>/dev/null
    rathole_pair() { # name transport
        local cport sport; cport="$(free_port)"; sport="$(free_port)"
        local tls_s="" tls_c=""
        if [ "$2" = tls ]; then
            tls_s=$'[server.transport.tls]\npkcs12 = "'"$TMP/rt.pfx"$'"\npkcs12_password = "bench"'
            tls_c=$'[client.transport.tls]\ntrusted_root = "'"$TMP/rt.crt"$'"\nhostname = "localhost"'
        fi
        cat >"$TMP/$1-s.toml" <<T
[server]
bind_addr = "127.0.0.1:$cport"
[server.transport]
type = "$2"
$tls_s
[server.services.echo]
token = "bench"
bind_addr = "127.0.0.1:$sport"
T
        cat >"$TMP/$1-c.toml" <<T
[client]
remote_addr = "localhost:$cport"
[client.transport]
type = "$2"
$tls_c
[client.services.echo]
token = "bench"
local_addr = "127.0.0.1:$DPORT"
T
        RUST_LOG=warn rathole "$TMP/$1-s.toml" >"$TMP/$1-s.log" 2>&1 & PIDS+=("$!")
        sleep 0.5
        RUST_LOG=info rathole "$TMP/$1-c.toml" >"$TMP/$1-c.log" 2>&1 & PIDS+=("$!")
        wait_line "$TMP/$1-c.log" "Control channel established" "rathole $2 did not connect"
        echo "127.0.0.1:$sport"
    }
    RT_ADDR="$(rathole_pair rt-tls tls)"; B_RT="$(bulk "$RT_ADDR" rathole-tls)"; echo "$B_RT"
    RP_ADDR="$(rathole_pair rt-tcp tcp)"; B_RP="$(bulk "$RP_ADDR" rathole-plain)"; echo "$B_RP"
else
    echo "rathole or openssl missing: rathole rows skipped (cargo install rathole)" >&2
fi
if command -v bore >/dev/null; then
    BCTL_LOG="$TMP/bore-s.log"; BPORT="$(free_port)"
    bore server --bind-addr 127.0.0.1 >"$BCTL_LOG" 2>&1 & PIDS+=("$!")
    sleep 0.5
    bore local "$DPORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$BPORT" >"$TMP/bore-c.log" 2>&1 & PIDS+=("$!")
    wait_line "$TMP/bore-c.log" "listening at" "bore did not connect"
    B_BORE="$(bulk "127.0.0.1:$BPORT" bore-plain)"; echo "$B_BORE"
else
    echo "bore missing: bore row skipped (cargo install --locked bore-cli)" >&2
fi

# --- 3. relay RSS --------------------------------------------------------------------------------
RSS_BASE="$(rss_kb "$RELAY_PID")"
mkfifo "$TMP/tun-in"
"$RL" tunnels --tunnel "127.0.0.1:$RTUN" --pin "$PIN" --state "$TMP/relay-state" --domain "$BASE" \
    --count "$TUNNELS" <"$TMP/tun-in" >"$TMP/tun.out" 2>"$TMP/tun.err" &
TUN_PID=$!; PIDS+=("$TUN_PID")
exec 8>"$TMP/tun-in"
wait_line "$TMP/tun.out" tunnels "the idle tunnels did not come up"
sleep 1
RSS_TUN="$(rss_kb "$RELAY_PID")"
exec 8>&-; wait "$TUN_PID" 2>/dev/null || true
sleep 1
mkfifo "$TMP/str-in"
"$RL" streams --connect "127.0.0.1:$RPUB" --host "$EHOST" --ca "$TMP/echo-ca.pem" --count "$STREAMS" \
    <"$TMP/str-in" >"$TMP/str.out" 2>"$TMP/str.err" &
STR_PID=$!; PIDS+=("$STR_PID")
exec 9>"$TMP/str-in"
wait_line "$TMP/str.out" streams "the concurrent streams did not come up"
sleep 1
RSS_STR="$(rss_kb "$RELAY_PID")"
exec 9>&-; wait "$STR_PID" 2>/dev/null || true
echo "{\"relay_rss_kb\": {\"idle\": $RSS_BASE, \"tunnels\": $TUNNELS, \"with_tunnels\": $RSS_TUN, \"streams\": $STREAMS, \"with_streams\": $RSS_STR}, \"tunnels_up\": $(cat "$TMP/tun.out"), \"streams_up\": $(cat "$TMP/str.out")}"

# --- summary ------------------------------------------------------------------------------------
python3 - "$R1" "$R0" "$B_AIR" "$B_DIR" "$B_RT" "$B_RP" "$B_BORE" "$RSS_BASE" "$RSS_TUN" "$RSS_STR" "$TUNNELS" "$STREAMS" <<'PY'
import json, sys
a = sys.argv[1:]
r1, r0 = json.loads(a[0]), json.loads(a[1])
bulk = {j["label"]: j for j in (json.loads(x) for x in a[2:7] if x)}
print("== tools/call (concurrency %s)" % r1.get("concurrency"))
for r in (r1, r0):
    print("  %-7s %8.1f req/s  p50 %.3f ms  p99 %.3f ms  errors %s" % (r["label"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]))
print("  relay/direct req/s ratio: %.3f (goal >= 0.85)" % (r1["rps"] / r0["rps"] if r0["rps"] else 0))
print("  added p50: %+.3f ms (goal <= 0.2 ms)   added p99: %+.3f ms" % (r1["p50_ms"] - r0["p50_ms"], r1["p99_ms"] - r0["p99_ms"]))
print("== bulk download (%d MiB, inner TLS on every path)" % (next(iter(bulk.values()))["bytes"] >> 20))
for k, j in bulk.items():
    print("  %-14s %9.1f Mbit/s" % (k, j["mbit_s"]))
if "airlock" not in bulk:
    print("  airlock: FAILED (see the error above)")
elif "rathole-tls" in bulk:
    print("  airlock / rathole-tls: %.3f (goal >= 1.0)" % (bulk["airlock"]["mbit_s"] / bulk["rathole-tls"]["mbit_s"]))
if "rathole-plain" in bulk and "airlock" in bulk:
    print("  airlock / rathole-plain: %.3f (information)" % (bulk["airlock"]["mbit_s"] / bulk["rathole-plain"]["mbit_s"]))
if "bore-plain" in bulk and "airlock" in bulk:
    print("  airlock / bore: %.3f (information)" % (bulk["airlock"]["mbit_s"] / bulk["bore-plain"]["mbit_s"]))
base, tun, st, nt, ns = (int(x) for x in a[7:12])
print("== relay RSS: idle %.1f MiB; %d idle tunnels %.1f MiB (%.1f KiB/tunnel); %d streams %.1f MiB (%.1f KiB/stream)" % (
    base / 1024, nt, tun / 1024, (tun - base) / nt, ns, st / 1024, (st - base) / ns))
PY
