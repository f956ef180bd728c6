//! Keychain backend against a REAL Secret Service (Linux).
//!
//! Run under a private session bus with an unlocked gnome-keyring:
//!
//! ```text
//! AIRLOCK_TEST_KEYCHAIN=1 dbus-run-session -- sh -c \
//!   'echo -n test | gnome-keyring-daemon --unlock --components=secrets >/dev/null; cargo test -p airlock-keystore'
//! ```
//! (`crates/keystore/run-keychain-tests.sh` does exactly that.) With `AIRLOCK_TEST_KEYCHAIN=1` a
//! missing Secret Service FAILS the tests; without it they print "skipped: no Secret Service".
//! Every stored value is cross-checked with `secret-tool`, i.e. outside this process.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use airlock_keystore::{
    Backend, KeychainStore, Keystore, KeystoreChoice, KeystoreError, Namespace, Secret,
    ensure_real_keychain_backend, open_with_timeout,
};
use tokio::io::AsyncWriteExt;

const PROBE: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "AIRLOCK_KEYSTORE_TEST_CHILD";

fn required() -> bool {
    std::env::var("AIRLOCK_TEST_KEYCHAIN").is_ok_and(|v| v == "1")
}

/// A keychain store for a fresh namespace, or `None` (skip) when no Secret Service answers
/// and `AIRLOCK_TEST_KEYCHAIN=1` is not set. Panics if it is set and the probe fails.
async fn keychain_or_skip(home: &Path) -> Option<Keystore> {
    let ns = Namespace::for_home(home);
    let dir = home.join("secrets");
    match open_with_timeout(KeystoreChoice::Keychain, &ns, &dir, PROBE).await {
        Ok(store) => Some(store),
        Err(e) if required() => panic!(
            "AIRLOCK_TEST_KEYCHAIN=1 but no usable Secret Service: {e}\n\
             run the tests under `dbus-run-session -- sh -c 'echo -n test | \
             gnome-keyring-daemon --unlock --components=secrets; cargo test ...'` \
             (Debian packages: dbus-x11 gnome-keyring libsecret-tools)"
        ),
        Err(e) => {
            eprintln!("skipped: no Secret Service ({e})");
            None
        }
    }
}

/// Runs secret-tool; returns (success, stdout, stderr). (`search` prints attributes on stderr.)
async fn secret_tool(args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    let mut child = tokio::process::Command::new("secret-tool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run secret-tool (apt-get install libsecret-tools): {e}")
        });
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("write to secret-tool: {e}"));
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("secret-tool {args:?} hung for 60 s"))
        .unwrap_or_else(|e| panic!("secret-tool {args:?}: {e}"));
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The secret as the Secret Service itself returns it (`secret-tool lookup`).
async fn lookup(service: &str, name: &str) -> Option<Vec<u8>> {
    let (ok, out, _) = secret_tool(&["lookup", "service", service, "username", name], None).await;
    ok.then_some(out)
}

/// All items stored under `service` (`secret-tool search --all`): descriptions and attributes.
async fn search_all(service: &str) -> String {
    let (_, out, err) = secret_tool(&["search", "--all", "service", service], None).await;
    format!("{}\n{err}", String::from_utf8_lossy(&out))
}

#[test]
fn keychain_backend_is_not_the_in_memory_mock() {
    // keyring v3 silently uses a mock store when built without a backend feature.
    assert!(
        ensure_real_keychain_backend().is_ok(),
        "keyring was built without a real backend: check the keyring features in crates/keystore/Cargo.toml"
    );
    let entry = keyring::Entry::new("airlock:mock-check", "x")
        .unwrap_or_else(|e| panic!("keyring entry: {e}"));
    assert!(
        entry
            .get_credential()
            .downcast_ref::<keyring::secret_service::SsCredential>()
            .is_some(),
        "keyring's default credential is not the Secret Service one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keychain_round_trip_is_stored_in_the_secret_service() -> Result<(), KeystoreError> {
    let home = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let Some(store) = keychain_or_skip(home.path()).await else {
        return Ok(());
    };
    assert_eq!(store.backend(), Backend::Keychain);
    let service = Namespace::for_home(home.path()).service().to_string();

    assert!(store.get("ca-key").await?.is_none());
    assert_eq!(lookup(&service, "ca-key").await, None);

    store
        .set(
            "ca-key",
            &Secret::from("-----BEGIN PRIVATE KEY-----\nabc\n"),
        )
        .await?;
    // Seen from outside the process, by the Secret Service itself.
    assert_eq!(
        lookup(&service, "ca-key").await.as_deref(),
        Some(&b"-----BEGIN PRIVATE KEY-----\nabc\n"[..])
    );
    let listing = search_all(&service).await;
    assert!(
        listing.contains("attribute.username = ca-key")
            && listing.contains(&format!("attribute.service = {service}")),
        "secret-tool search --all service {service} did not list the entry:\n{listing}"
    );
    // The probe entry used by open() must not be left behind.
    assert!(
        !listing.contains("airlock-probe-"),
        "probe entry leaked:\n{listing}"
    );

    let got = store.get("ca-key").await?;
    assert_eq!(
        got.as_ref().map(Secret::expose),
        Some(&b"-----BEGIN PRIVATE KEY-----\nabc\n"[..])
    );

    // Overwrite replaces, never duplicates.
    store.set("ca-key", &Secret::from("second")).await?;
    assert_eq!(
        lookup(&service, "ca-key").await.as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(
        search_all(&service)
            .await
            .matches("attribute.username = ca-key")
            .count(),
        1
    );

    assert!(store.delete("ca-key").await?);
    assert_eq!(lookup(&service, "ca-key").await, None);
    assert!(store.get("ca-key").await?.is_none());
    assert!(!store.delete("ca-key").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keychain_reads_what_the_secret_service_holds() -> Result<(), KeystoreError> {
    let home = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let Some(store) = keychain_or_skip(home.path()).await else {
        return Ok(());
    };
    let service = Namespace::for_home(home.path()).service().to_string();
    // Written by another program, not by this process: proves reads are not served from memory.
    let (ok, _, err) = secret_tool(
        &[
            "store",
            "--label=airlock test",
            "service",
            &service,
            "username",
            "external",
            "target",
            "default",
        ],
        Some(b"from-secret-tool"),
    )
    .await;
    assert!(ok, "secret-tool store failed: {err}");
    let got = store.get("external").await?;
    assert_eq!(
        got.as_ref().map(Secret::expose),
        Some(&b"from-secret-tool"[..])
    );
    assert!(store.delete("external").await?);
    assert_eq!(lookup(&service, "external").await, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homes_never_collide() -> Result<(), KeystoreError> {
    let home_a = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let home_b = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    let Some(a) = keychain_or_skip(home_a.path()).await else {
        return Ok(());
    };
    let Some(b) = keychain_or_skip(home_b.path()).await else {
        return Ok(());
    };
    a.set("token", &Secret::from("value-a")).await?;
    assert!(
        b.get("token").await?.is_none(),
        "home B sees home A's secret"
    );
    b.set("token", &Secret::from("value-b")).await?;
    let got_a = a.get("token").await?;
    let got_b = b.get("token").await?;
    assert_eq!(got_a.as_ref().map(Secret::expose), Some(&b"value-a"[..]));
    assert_eq!(got_b.as_ref().map(Secret::expose), Some(&b"value-b"[..]));
    assert!(a.delete("token").await?);
    let got_b = b.get("token").await?;
    assert_eq!(got_b.as_ref().map(Secret::expose), Some(&b"value-b"[..]));
    assert!(b.delete("token").await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_the_keychain_when_it_answers() -> Result<(), KeystoreError> {
    let home = tempfile::tempdir().map_err(|e| KeystoreError::io(Path::new("tmp"), e))?;
    if keychain_or_skip(home.path()).await.is_none() {
        return Ok(());
    }
    let dir = home.path().join("secrets");
    let store = open_with_timeout(
        KeystoreChoice::Auto,
        &Namespace::for_home(home.path()),
        &dir,
        PROBE,
    )
    .await?;
    assert_eq!(store.backend(), Backend::Keychain);
    assert!(
        !dir.exists(),
        "Auto with a keychain must not create the file store"
    );
    Ok(())
}

/// Runs `child_without_session_bus` in a child process with no session bus configured
/// (changing our own environment would race other tests).
#[test]
fn without_a_session_bus_keychain_explains_and_auto_falls_back_to_files() {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let runtime_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_without_session_bus",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "no-bus")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .env("DISPLAY", "")
        .output()
        .unwrap_or_else(|e| panic!("spawn child test: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Helper for the test above; does nothing unless started by it (with CHILD_ENV set).
#[tokio::test]
async fn child_without_session_bus() {
    if std::env::var(CHILD_ENV).ok().as_deref() != Some("no-bus") {
        return;
    }
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ns = Namespace::for_home(home.path());
    let err = KeychainStore::open(&ns, PROBE)
        .await
        .err()
        .unwrap_or_else(|| panic!("keychain opened without a session bus"));
    assert!(
        matches!(err, KeystoreError::NoSessionBus { .. }),
        "expected NoSessionBus, got {err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("session bus") && msg.contains("dbus-run-session"),
        "message does not say how to fix: {msg}"
    );

    let dir = home.path().join("secrets");
    let store = open_with_timeout(KeystoreChoice::Auto, &ns, &dir, PROBE)
        .await
        .unwrap_or_else(|e| panic!("Auto must fall back to files: {e}"));
    assert_eq!(store.backend(), Backend::File);
    store
        .set("k", &Secret::from("v"))
        .await
        .unwrap_or_else(|e| panic!("file set: {e}"));
    assert!(dir.join("k").is_file());
    println!("CHILD-OK");
}

fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A login keyring that exists but is locked (daemon started without the password) must be
/// reported as locked, with how to unlock, and `Auto` must fall back to files.
#[test]
fn locked_keyring_is_reported_as_locked() {
    if !(have("dbus-run-session") && have("gnome-keyring-daemon") && have("secret-tool")) {
        assert!(
            !required(),
            "AIRLOCK_TEST_KEYCHAIN=1 but dbus-run-session / gnome-keyring-daemon / secret-tool are \
             missing (apt-get install dbus-x11 gnome-keyring libsecret-tools)"
        );
        eprintln!("skipped: no Secret Service tools");
        return;
    }
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // 1. Create a password-protected login keyring in a throw-away HOME.
    let seed = std::process::Command::new("dbus-run-session")
        .args([
            "--",
            "sh",
            "-c",
            "echo -n test | gnome-keyring-daemon --unlock --components=secrets >/dev/null && \
             echo -n x | secret-tool store --label=seed service airlock-seed username seed",
        ])
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap_or_else(|e| panic!("dbus-run-session: {e}"));
    assert!(
        seed.status.success(),
        "seeding the test keyring failed: {}",
        String::from_utf8_lossy(&seed.stderr)
    );
    // 2. A new session whose daemon has not been given the password: the keyring is locked.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let out = std::process::Command::new("dbus-run-session")
        .args([
            "--",
            "sh",
            "-c",
            "gnome-keyring-daemon --start --components=secrets >/dev/null; \
             exec \"$0\" --exact child_with_locked_keyring --nocapture --test-threads=1",
        ])
        .arg(exe)
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("DISPLAY", "")
        .env(CHILD_ENV, "locked")
        .output()
        .unwrap_or_else(|e| panic!("dbus-run-session: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Helper for the test above; does nothing unless started by it (with CHILD_ENV=locked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_with_locked_keyring() {
    if std::env::var(CHILD_ENV).ok().as_deref() != Some("locked") {
        return;
    }
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ns = Namespace::for_home(home.path());
    let err = KeychainStore::open(&ns, PROBE)
        .await
        .err()
        .unwrap_or_else(|| panic!("keychain opened although the keyring is locked"));
    assert!(
        matches!(err, KeystoreError::Locked { .. }),
        "expected Locked, got {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("locked") && msg.contains("unlock"), "{msg}");
    let dir = home.path().join("secrets");
    let store = open_with_timeout(KeystoreChoice::Auto, &ns, &dir, PROBE)
        .await
        .unwrap_or_else(|e| panic!("Auto must fall back to files: {e}"));
    assert_eq!(store.backend(), Backend::File);
    println!("CHILD-OK");
}

/// A "session bus" that accepts connections and never answers (a hung D-Bus): the probe must give
/// up within its time bound, `Keychain` must report a timeout and `Auto` must fall back to files.
#[test]
fn a_silent_bus_times_out_and_auto_falls_back() {
    use std::os::unix::net::UnixListener;
    use std::time::Instant;
    const HOLD: Duration = Duration::from_secs(8);

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("silent-bus");
    let listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("nonblocking: {e}"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // Hold every connection for HOLD without a byte of reply, then close it (which also lets the
    // child's stuck blocking threads finish so it can exit).
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) || !held.is_empty() {
            if let Ok((conn, _)) = listener.accept() {
                held.push((Instant::now(), conn));
            }
            held.retain(|(t, _)| t.elapsed() < HOLD);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_with_silent_bus",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "silent")
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", sock.display()),
        )
        .output()
        .unwrap_or_else(|e| panic!("spawn child test: {e}"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// Helper for the test above; does nothing unless started by it (with CHILD_ENV=silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_with_silent_bus() {
    if std::env::var(CHILD_ENV).ok().as_deref() != Some("silent") {
        return;
    }
    let probe = Duration::from_secs(1);
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let ns = Namespace::for_home(home.path());
    let err = KeychainStore::open(&ns, probe)
        .await
        .err()
        .unwrap_or_else(|| panic!("keychain opened on a silent bus"));
    assert!(
        matches!(err, KeystoreError::Timeout(d) if d == probe),
        "expected Timeout, got {err:?}"
    );
    let dir = home.path().join("secrets");
    let store = open_with_timeout(KeystoreChoice::Auto, &ns, &dir, probe)
        .await
        .unwrap_or_else(|e| panic!("Auto must fall back to files: {e}"));
    assert_eq!(store.backend(), Backend::File);
    println!("CHILD-OK");
}
