#![allow(clippy::unwrap_used)]
//! Mechanism selection, the Landlock + seccomp fallback, and the unconfined opt-in.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock_sandbox::{Limits, Mechanism, Sandbox, probe_isolation};
use common::*;
use serde_json::json;

#[test]
fn the_probe_reports_this_machine() {
    let r = probe_isolation();
    assert_eq!(r.platform, std::env::consts::OS);
    // The test machine has bubblewrap (scripts/test installs it).
    assert!(r.bubblewrap_works, "{r:?}");
    assert_eq!(r.best, Some(Mechanism::Bubblewrap));
    let v = serde_json::to_value(&r).unwrap();
    assert!(v.get("cgroup").is_some());
}

#[tokio::test]
async fn unconfined_needs_the_explicit_opt_in() {
    let env = env();
    let mut cfg = config(&env);
    cfg.mechanism = Mechanism::Unconfined;
    let err = Sandbox::open(cfg.clone()).await.unwrap_err();
    assert!(err.to_string().contains("explicit"), "{err}");
    cfg.unconfined = true;
    let sb = Sandbox::open(cfg).await.unwrap();
    assert_eq!(sb.status().mechanism, "unconfined");
    let out = bash(&sb, "echo $HOME").await;
    assert_eq!(out.text_content(), env.workdir.display().to_string());
    // File tools keep their checks even here.
    let out = tool(
        &sb,
        "read",
        json!({"file_path": env.home.join(".ssh/id_ed25519")}),
    )
    .await;
    assert!(out.is_error);
    sb.close().await;
}

#[tokio::test]
async fn a_workdir_containing_the_home_is_refused() {
    let env = env();
    let mut cfg = config(&env);
    cfg.workdir = env.home.parent().unwrap().to_path_buf();
    let err = Sandbox::open(cfg).await.unwrap_err();
    assert!(err.to_string().contains("home"), "{err}");
    let mut cfg = config(&env);
    cfg.workdir = "/".into();
    assert!(Sandbox::open(cfg).await.is_err());
}

#[tokio::test]
async fn allowlisted_paths_are_visible_read_only() {
    let env = env();
    let shared = env.home.join("docs");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("notes.txt"), "shared notes").unwrap();
    let mut cfg = config(&env);
    cfg.read_only_paths = vec![shared.clone()];
    let sb = Sandbox::open(cfg).await.unwrap();
    let out = bash(&sb, &format!("cat {}/notes.txt", shared.display())).await;
    assert_eq!(out.text_content(), "shared notes");
    let out = bash(&sb, &format!("echo x > {}/notes.txt", shared.display())).await;
    assert!(out.is_error);
    let out = tool(&sb, "read", json!({"file_path": shared.join("notes.txt")})).await;
    assert_eq!(out.text_content(), "shared notes");
    let p = shared.join("notes.txt").display().to_string();
    let out = tool(&sb, "write", json!({"file_path": p, "content": "x"})).await;
    assert_eq!(
        out.text_content(),
        format!(
            "write: {p} is inside read-only directory {}",
            shared.display()
        )
    );
    // The rest of the home stays hidden.
    let out = bash(&sb, &format!("ls {}/.ssh", env.home.display())).await;
    assert!(out.is_error);
    sb.close().await;
}

#[tokio::test]
async fn landlock_fallback_confines_bash() {
    if !probe_isolation().landlock {
        // Documented: the fallback needs a kernel with Landlock; bubblewrap covers the rest.
        eprintln!("kernel without Landlock: fallback not testable here");
        return;
    }
    let env = env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            h.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = c {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        }
    });
    let mut cfg = config(&env);
    cfg.mechanism = Mechanism::Landlock;
    cfg.limits = Limits {
        pids_max: Some(32),
        ..Limits::default()
    };
    let sb = Sandbox::open(cfg).await.unwrap();
    assert_eq!(sb.status().mechanism, "landlock");
    let out = bash(&sb, "echo inside > f.txt && cat f.txt && echo tmp > $TMPDIR/t && cat $TMPDIR/t >/dev/null && echo ok").await;
    assert_eq!(out.text_content(), "inside\nok", "{out:?}");
    let out = bash(&sb, "cat /etc/shadow").await;
    assert!(out.is_error, "{out:?}");
    let out = bash(&sb, "grep -c ^root: /etc/passwd").await;
    assert_eq!(out.text_content(), "1");
    let out = bash(&sb, "ls /dev/shm").await;
    assert!(out.is_error, "{out:?}");
    let out = bash(&sb, "head -c 4 /dev/urandom | wc -c").await;
    assert_eq!(out.text_content(), "4");
    let planted = env.home.join("planted");
    let out = bash(&sb, &format!("echo x > {}", planted.display())).await;
    assert!(out.is_error);
    assert!(!planted.exists());
    let out = bash(&sb, "echo x > /tmp/airlock-landlock-escape-test").await;
    assert!(out.is_error, "{out:?}");
    let out = bash(&sb, &format!("cat {}/.ssh/id_ed25519", env.home.display())).await;
    assert!(out.is_error);
    assert!(out.text_content().contains("Permission denied"), "{out:?}");
    let out = bash(
        &sb,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    let out = bash(
        &sb,
        &format!("curl -sS --max-time 5 http://127.0.0.1:{port}/"),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let flood = r#"perl -e 'my $n = 0; for (1..1000) { my $p = fork(); if (!defined $p) { print "refused after $n\n"; exit 1 } if ($p == 0) { sleep 20; exit 0 } $n++ } print "not refused: $n\n"'"#;
    let out = tool(&sb, "bash", json!({"command": flood, "timeout_ms": 30000})).await;
    assert!(out.text_content().contains("refused after"), "{out:?}");
    sb.close().await;
}

#[tokio::test]
async fn memory_stores_are_mounted_at_their_path() {
    let env = env();
    let base = env.home.parent().unwrap().join("mnt/memory");
    let rw =
        airlock_sandbox::MemoryMount::create(&base.join("prefs"), "memstore_rw", false).unwrap();
    let ro = airlock_sandbox::MemoryMount::create(&base.join("team"), "memstore_ro", true).unwrap();
    ro.write("/rules.md", "be nice").unwrap();
    let mut cfg = config(&env);
    cfg.writable_roots = vec![rw.root().to_path_buf()];
    cfg.read_only_paths = vec![ro.root().to_path_buf()];
    let sb = Sandbox::open(cfg).await.unwrap();
    let out = bash(
        &sb,
        &format!(
            "echo remembered > {}/today.md && cat {}/rules.md",
            rw.root().display(),
            ro.root().display()
        ),
    )
    .await;
    assert_eq!(out.text_content(), "be nice", "{out:?}");
    let out = bash(&sb, &format!("echo x > {}/rules.md", ro.root().display())).await;
    assert!(out.is_error);
    let p = rw.root().join("edited.md").display().to_string();
    let out = tool(&sb, "write", json!({"file_path": p, "content": "via tool"})).await;
    assert!(!out.is_error, "{out:?}");
    let snap = rw.scan().unwrap();
    assert_eq!(
        snap.files.keys().cloned().collect::<Vec<_>>(),
        ["/edited.md", "/today.md"]
    );
    assert!(rw.marker_ok());
    sb.close().await;
}

#[tokio::test]
async fn the_helper_can_be_a_subcommand_of_another_binary() {
    if !probe_isolation().landlock {
        eprintln!("kernel without Landlock: fallback not testable here");
        return;
    }
    let env = env();
    // Stands in for `airlock sandbox-exec …`: refuses to run without its subcommand word.
    let script = env.home.parent().unwrap().join("fake-airlock");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = sandbox-exec ] || exit 99\nshift\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_airlock-sandbox-exec")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(&env);
    cfg.mechanism = Mechanism::Landlock;
    cfg.helper = Some(script);
    cfg.helper_args = vec!["sandbox-exec".into()];
    let sb = Sandbox::open(cfg).await.unwrap();
    let out = bash(&sb, &format!("cat {}/.ssh/id_ed25519", env.home.display())).await;
    assert!(out.text_content().contains("Permission denied"), "{out:?}");
    sb.close().await;
}
