#!/usr/bin/env bash
# Idle cost of the tray app (not part of CI).
#
# Starts `airlock-tray` on a virtual display (Xvfb) in its own D-Bus session with a throwaway
# HOME and AIRLOCK_HOME (no MCP servers configured, file keystore), waits until its in-process
# agent is ready, lets it settle, then samples it for IDLE_SECONDS (default 60):
#   - PSS summed over the app and all its descendants (WebKit's web and network processes),
#     from /proc/PID/smaps_rollup — the memory the app really costs, shared pages split fairly;
#   - RSS summed the same way (overcounts shared libraries);
#   - CPU used over the idle window (utime + stime of the same processes), as % of one core.
# Twice: with the window closed (the tray's normal state: the window is created on "Open
# Airlock…" and dropped when closed) and with the window open on the UI.
#
# Usage: bench/tray-idle.sh            (uses target/debug/airlock-tray; build it first)
#        AIRLOCK_TRAY_BIN=target/release/airlock-tray IDLE_SECONDS=120 bench/tray-idle.sh
# Needs: xvfb-run, dbus-run-session (apt xvfb, dbus-daemon), WebKitGTK 4.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRAY="${AIRLOCK_TRAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/airlock-tray}"
IDLE_SECONDS="${IDLE_SECONDS:-60}"

if [ ! -x "$TRAY" ]; then
    echo "error: $TRAY not found; build it with \`cargo build -p airlock-tray\` or set AIRLOCK_TRAY_BIN" >&2
    exit 1
fi
for tool in xvfb-run dbus-run-session; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is missing (apt-get install xvfb xauth dbus-daemon)" >&2
        exit 1
    fi
done

if [ "${TRAY_IDLE_INNER:-0}" != "1" ]; then
    export TRAY_IDLE_INNER=1 TRAY IDLE_SECONDS
    exec xvfb-run -a -s "-screen 0 1280x800x24" dbus-run-session -- "${BASH_SOURCE[0]}" "$@"
fi

# ---------------------------------------------------------------------------------------
# Inside the virtual display and the private D-Bus session.
# ---------------------------------------------------------------------------------------
WORK="$(mktemp -d -t airlock-tray-idle.XXXXXX)"
TRAY_PID=""
cleanup() {
    if [ -n "$TRAY_PID" ] && kill -0 "$TRAY_PID" 2>/dev/null; then
        kill -TERM "$TRAY_PID" 2>/dev/null || true
        wait "$TRAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

CLK_TCK="$(getconf CLK_TCK)"

# The app and all its descendants.
tree() {
    local pids=("$1") i=0 child
    while [ "$i" -lt "${#pids[@]}" ]; do
        for child in $(pgrep -P "${pids[$i]}" 2>/dev/null || true); do
            pids+=("$child")
        done
        i=$((i + 1))
    done
    printf '%s\n' "${pids[@]}"
}

# Sum of a "Key: N kB" field over the tree, in kB.
sum_kb() {
    local file="$1" key="$2" total=0 pid v
    for pid in $(tree "$TRAY_PID"); do
        v="$(awk -v k="$key:" '$1 == k { print $2; exit }' "/proc/$pid/$file" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# utime + stime (clock ticks) over the tree.
cpu_ticks() {
    local total=0 pid stat
    for pid in $(tree "$TRAY_PID"); do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null || true)"
        [ -n "$stat" ] || continue
        stat="${stat##*) }"
        # fields after "comm)": state(1) ppid(2) ... utime(12) stime(13)
        total=$((total + $(echo "$stat" | awk '{ print $12 + $13 }')))
    done
    echo "$total"
}

describe_tree() {
    local pid
    for pid in $(tree "$TRAY_PID"); do
        printf '    %-7s %-22s PSS %6s kB\n' "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null)" \
            "$(awk '$1 == "Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null)"
    done
}

measure() {
    local label="$1" show="$2"
    local home="$WORK/$label"
    mkdir -p "$home/home" "$home/airlock"
    printf '[discovery]\nprobe_running = false\n\n[keystore]\nbackend = "file"\n' >"$home/airlock/config.toml"
    HOME="$home/home" AIRLOCK_HOME="$home/airlock" XDG_CONFIG_HOME="$home/home/.config" \
        XDG_DATA_HOME="$home/home/.local/share" XDG_CACHE_HOME="$home/home/.cache" \
        AIRLOCK_TRAY_SHOW="$show" \
        RUST_LOG=warn "$TRAY" >"$home/tray.log" 2>&1 &
    TRAY_PID=$!
    local waited=0
    until [ -f "$home/airlock/run/agent.json" ]; do
        if ! kill -0 "$TRAY_PID" 2>/dev/null; then
            echo "error: the tray exited before its agent was ready:" >&2
            cat "$home/tray.log" >&2
            exit 1
        fi
        sleep 0.5
        waited=$((waited + 1))
        if [ "$waited" -gt 240 ]; then
            echo "error: the agent was not ready after 120 s" >&2
            exit 1
        fi
    done
    # Let start-up (and the window's first load) settle before measuring idle.
    sleep 10

    local t0 c0 c1 pss rss peak=0 elapsed
    t0="$(date +%s.%N)"
    c0="$(cpu_ticks)"
    local end=$(($(date +%s) + IDLE_SECONDS))
    while [ "$(date +%s)" -lt "$end" ]; do
        pss="$(sum_kb smaps_rollup Pss)"
        [ "$pss" -gt "$peak" ] && peak="$pss"
        sleep 5
    done
    c1="$(cpu_ticks)"
    elapsed="$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { print a - b }')"
    pss="$(sum_kb smaps_rollup Pss)"
    rss="$(sum_kb status VmRSS)"
    [ "$pss" -gt "$peak" ] && peak="$pss"

    printf '%s (%d processes):\n' "$label" "$(tree "$TRAY_PID" | wc -l)"
    describe_tree
    awk -v pss="$pss" -v peak="$peak" -v rss="$rss" -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v t="$elapsed" \
        'BEGIN { printf "  PSS total %.1f MB (peak %.1f MB)   RSS total %.1f MB   CPU %.2f%% of one core over %.0f s\n",
                 pss / 1024, peak / 1024, rss / 1024, (c1 - c0) * 100 / hz / t, t }' 

    kill -TERM "$TRAY_PID"
    wait "$TRAY_PID" || true
    TRAY_PID=""
}

echo "airlock-tray idle: $TRAY, ${IDLE_SECONDS}s per scenario"
measure "window-closed" 0
measure "window-open" 1
