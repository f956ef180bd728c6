//! The cloudflared supervisor against a stand-in executable that behaves as the research notes
//! document cloudflared: exits 1 without `TUNNEL_TOKEN`, logs four
//! `Registered tunnel connection` lines in cloudflared's format, stays up, exits on SIGTERM
//! (logging `Unregistered tunnel connection`).
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tunnel::cloudflared::{
    CloudflaredOptions, CloudflaredState, CloudflaredSupervisor, TunnelToken, find_cloudflared_in,
};
use tokio::sync::watch;

const TOKEN: &str = "eyJhIjoiYWNjb3VudC10YWciLCJ0IjoidHVubmVsLWlkIiwicyI6InNlY3JldCJ9";
const WAIT: Duration = Duration::from_secs(60);

/// Writes the stand-in into `dir`; it appends `<pid> <argv>` to `dir/runs.log` on each start.
/// With `ignore_term`, it ignores SIGTERM (to exercise the SIGKILL escalation).
fn stand_in(dir: &Path, ignore_term: bool) -> PathBuf {
    let runs = dir.join("runs.log");
    let term = if ignore_term {
        "trap '' TERM".to_owned()
    } else {
        "trap 'for i in 0 1 2 3; do log INF \"Unregistered tunnel connection connIndex=$i event=0 ip=198.41.192.$((7 + i * 10))\"; done; kill $sleeper 2>/dev/null; exit 0' TERM".to_owned()
    };
    let script = format!(
        r#"#!/bin/bash
log() {{ echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $1 $2" >&2; }}
echo "$$ $*" >> '{runs}'
if [ -z "$TUNNEL_TOKEN" ]; then
  log ERR '"cloudflared tunnel run" requires the ID or name of the tunnel to run as the last command line argument or in the configuration file.'
  exit 1
fi
log INF "Starting tunnel tunnelID=6ff42ae2-765d-4adf-8112-31c55c1551ef"
log INF "Version 2026.7.2 (Checksum 4b1e0e2f)"
log INF "GOOS: linux, GOVersion: go1.24.4, GoArch: amd64"
log INF "Generated Connector ID: 9c2a61f0-4f6e-4b8e-a0f4-3b8f1d2c7e55"
log INF "Initial protocol quic"
log WRN "failed to sufficiently increase receive buffer size (was: 208 kiB, wanted: 7168 kiB, got: 416 kiB). See https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes for details."
{term}
for i in 0 1 2 3; do
  log INF "Registered tunnel connection connIndex=$i connection=0b3c1f4e-6a51-4a3e-9d7b-2a1f0c9e8d7$i event=0 ip=198.41.192.$((7 + i * 10)) location=lhr0$((i % 2 + 1)) protocol=quic"
done
while :; do sleep 1 & sleeper=$!; wait $sleeper; done
"#,
        runs = runs.display()
    );
    let path = dir.join("cloudflared");
    std::fs::write(&path, script).expect("write the stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the stand-in");
    path
}

fn opts(binary: &Path) -> CloudflaredOptions {
    let mut o = CloudflaredOptions::for_local_port(8080);
    o.binary = Some(binary.to_owned());
    o.backoff_min = Duration::from_millis(1500);
    o.backoff_max = Duration::from_secs(3);
    o.stop_grace = Duration::from_secs(10);
    o
}

async fn wait_for(
    rx: &mut watch::Receiver<CloudflaredState>,
    what: &str,
    f: impl FnMut(&CloudflaredState) -> bool,
) -> CloudflaredState {
    let result =
        tokio::time::timeout(WAIT, async { rx.wait_for(f).await.map(|s| s.clone()) }).await;
    match result {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("supervisor gone while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; state {:?}", *rx.borrow()),
    }
}

async fn running4(rx: &mut watch::Receiver<CloudflaredState>) -> u32 {
    match wait_for(rx, "Running{4}", |s| {
        matches!(s, CloudflaredState::Running { connections: 4, .. })
    })
    .await
    {
        CloudflaredState::Running { pid, .. } => pid,
        other => panic!("{other:?}"),
    }
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still count as "left".
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_to_four_connections_with_token_only_in_env_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in(dir.path(), false);
    let sup = CloudflaredSupervisor::start(opts(&bin), TunnelToken::new(TOKEN));
    let mut rx = sup.state();
    let pid = running4(&mut rx).await;
    assert!(pid > 0);

    let runs = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    let last = runs.lines().last().unwrap();
    assert_eq!(
        last,
        format!("{pid} tunnel --no-autoupdate run --url http://127.0.0.1:8080")
    );
    if cfg!(target_os = "linux") {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(cmdline.contains("--no-autoupdate"), "{cmdline}");
        assert!(
            !cmdline.contains(TOKEN),
            "token leaked into argv: {cmdline}"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        assert!(
            vars.contains(&format!("TUNNEL_TOKEN={TOKEN}").as_bytes()),
            "token not in the child's environment"
        );
        // Cleared environment: only the passthrough list plus the token.
        for v in &vars {
            let name = String::from_utf8_lossy(v.split(|b| *b == b'=').next().unwrap_or(b""));
            assert!(
                name.is_empty()
                    || [
                        "TUNNEL_TOKEN",
                        "PATH",
                        "HOME",
                        "USER",
                        "LANG",
                        "LC_ALL",
                        "TZ",
                        "TMPDIR",
                        "SSL_CERT_FILE",
                        "SSL_CERT_DIR"
                    ]
                    .contains(&name.as_ref()),
                "unexpected variable {name} in cloudflared's environment"
            );
        }
    }

    sup.shutdown().await;
    assert_eq!(*rx.borrow(), CloudflaredState::Stopped);
    assert!(!alive(pid), "stand-in {pid} still exists after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_child_backs_off_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in(dir.path(), false);
    let sup = CloudflaredSupervisor::start(opts(&bin), TunnelToken::new(TOKEN));
    let mut rx = sup.state();
    let first = running4(&mut rx).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let backoff = wait_for(&mut rx, "Backoff", |s| {
        matches!(s, CloudflaredState::Backoff { .. })
    })
    .await;
    let CloudflaredState::Backoff {
        attempt,
        retry_at_unix_ms,
        last_error,
    } = backoff
    else {
        unreachable!()
    };
    assert!(attempt >= 1);
    assert!(last_error.contains("signal: 9"), "{last_error}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(retry_at_unix_ms + 60_000 > now_ms && retry_at_unix_ms < now_ms + 10_000);

    let second = running4(&mut rx).await;
    assert_ne!(first, second, "a new process should be running");
    assert!(alive(second));
    sup.shutdown().await;
    assert!(!alive(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_exit_is_reported_in_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in(dir.path(), false);
    let sup = CloudflaredSupervisor::start(opts(&bin), TunnelToken::new(""));
    let mut rx = sup.state();
    let s = wait_for(&mut rx, "Backoff", |s| {
        matches!(s, CloudflaredState::Backoff { .. })
    })
    .await;
    let CloudflaredState::Backoff { last_error, .. } = s else {
        unreachable!()
    };
    assert!(last_error.contains("exit status: 1"), "{last_error}");
    assert!(
        last_error.contains("requires the ID or name of the tunnel"),
        "{last_error}"
    );
    // It keeps failing, so it keeps backing off with a growing attempt number.
    wait_for(&mut rx, "Backoff attempt 2", |s| {
        matches!(s, CloudflaredState::Backoff { attempt: 2.., .. })
    })
    .await;
    let runs = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    assert!(runs.lines().count() >= 2, "{runs}");
    sup.shutdown().await;
    assert_eq!(*rx.borrow(), CloudflaredState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_binary_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(&dir.path().join("no-such-cloudflared"));
    o.not_installed_recheck = Duration::from_secs(3600);
    let sup = CloudflaredSupervisor::start(o, TunnelToken::new(TOKEN));
    let mut rx = sup.state();
    let s = wait_for(&mut rx, "NotInstalled", |s| {
        matches!(s, CloudflaredState::NotInstalled { .. })
    })
    .await;
    let CloudflaredState::NotInstalled { hint } = s else {
        unreachable!()
    };
    assert!(hint.contains("brew install cloudflared"), "{hint}");
    assert!(
        hint.contains("github.com/cloudflare/cloudflared/releases"),
        "{hint}"
    );
    assert!(hint.contains("no-such-cloudflared"), "{hint}");
    // Shutdown is prompt even while waiting to recheck.
    tokio::time::timeout(Duration::from_secs(10), sup.shutdown())
        .await
        .unwrap();
    assert_eq!(*rx.borrow(), CloudflaredState::Stopped);
}

#[test]
fn path_search_finds_only_executables() {
    let empty = tempfile::tempdir().unwrap();
    let with = tempfile::tempdir().unwrap();
    assert_eq!(find_cloudflared_in(empty.path().as_os_str()), None);
    let bin = with.path().join("cloudflared");
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = std::env::join_paths([empty.path(), with.path()]).unwrap();
    assert_eq!(find_cloudflared_in(&path), None, "not executable");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(find_cloudflared_in(&path), Some(bin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ignored_escalates_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in(dir.path(), true);
    let mut o = opts(&bin);
    o.stop_grace = Duration::from_millis(500);
    let sup = CloudflaredSupervisor::start(o, TunnelToken::new(TOKEN));
    let mut rx = sup.state();
    let pid = running4(&mut rx).await;
    tokio::time::timeout(Duration::from_secs(20), sup.shutdown())
        .await
        .unwrap();
    assert!(!alive(pid), "stand-in {pid} survived SIGKILL escalation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_supervisor_stops_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let bin = stand_in(dir.path(), false);
    let sup = CloudflaredSupervisor::start(opts(&bin), TunnelToken::new(TOKEN));
    let mut rx = sup.state();
    let pid = running4(&mut rx).await;
    drop(sup);
    wait_for(&mut rx, "Stopped", |s| *s == CloudflaredState::Stopped).await;
    assert!(!alive(pid));
}
