#!/bin/sh
# Run airlock-keystore's tests against a REAL Secret Service: a private D-Bus session with an
# unlocked gnome-keyring (Debian packages: dbus-x11 gnome-keyring libsecret-tools).
# AIRLOCK_TEST_KEYCHAIN=1 makes the keychain tests FAIL (not skip) if the Secret Service is missing.
# Extra arguments go to `cargo test`.
set -eu
cd "$(dirname "$0")/../.."
# A throw-away HOME keeps gnome-keyring's files (and the test keyring's password) away from the user's.
KEYRING_HOME=$(mktemp -d)
trap 'rm -rf "$KEYRING_HOME"' EXIT
export AIRLOCK_TEST_KEYCHAIN=1
# Keep cargo's caches where they are even though HOME changes.
export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
HOME="$KEYRING_HOME" XDG_DATA_HOME="$KEYRING_HOME/.local/share" \
  dbus-run-session -- sh -c '
    echo -n test | gnome-keyring-daemon --unlock --components=secrets >/dev/null
    exec cargo test -p airlock-keystore "$@"
  ' sh "$@"
