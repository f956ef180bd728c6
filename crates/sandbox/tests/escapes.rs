#![allow(clippy::unwrap_used)]
//! The escape catalogue: each attempt is contained and reported as a tool error.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_sandbox::{Limits, Sandbox};
use common::*;
use serde_json::json;

#[tokio::test]
async fn writes_outside_the_workdir_are_refused() {
    let env = env();
    let sb = open(&env).await;
    let outside = env.workdir.parent().unwrap().join("outside.txt");
    for p in [
        outside.display().to_string(),
        "../outside.txt".into(),
        "/etc/evil".into(),
    ] {
        let out = tool(&sb, "write", json!({"file_path": p, "content": "x"})).await;
        assert!(out.is_error);
        assert_eq!(
            out.text_content(),
            format!(
                "path {} is outside the session's working directory",
                serde_json::Value::from(p)
            )
        );
    }
    // bash: system directories are read-only, the user's home is absent.
    let out = bash(&sb, "echo x > /usr/evil").await;
    assert!(out.is_error);
    assert!(
        out.text_content().contains("Read-only file system"),
        "{out:?}"
    );
    let out = bash(&sb, &format!("echo x > {}/planted", env.home.display())).await;
    assert!(out.is_error, "{out:?}");
    assert!(!env.home.join("planted").exists());
    // No way back in through a nested user namespace (which could remount things).
    let out = bash(&sb, "unshare -Ur true").await;
    assert!(out.is_error, "{out:?}");
    // Kernel keyrings (where other software keeps secrets) are out of reach.
    let keyctl = if cfg!(target_arch = "aarch64") {
        219
    } else {
        250
    };
    let out = bash(
        &sb,
        &format!("perl -e 'syscall({keyctl}, 0, -3) == -1 and print \"refused: $!\\n\"'"),
    )
    .await;
    assert_eq!(
        out.text_content(),
        "refused: Operation not permitted",
        "{out:?}"
    );
    // Writing "outside" into the sandbox's private /tmp never reaches the host.
    bash(&sb, &format!("echo x > {}", outside.display())).await;
    assert!(!outside.exists());
    sb.close().await;
}

#[tokio::test]
async fn symlinks_out_of_the_workdir_are_refused() {
    let env = env();
    std::os::unix::fs::symlink(env.home.join(".ssh/id_ed25519"), env.workdir.join("key")).unwrap();
    std::os::unix::fs::symlink(&env.home, env.workdir.join("homelink")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", env.workdir.join("dangling")).unwrap();
    let sb = open(&env).await;
    let out = tool(&sb, "read", json!({"file_path": "key"})).await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "path \"key\" is outside the session's working directory"
    );
    let out = tool(
        &sb,
        "write",
        json!({"file_path": "homelink/.bashrc", "content": "evil"}),
    )
    .await;
    assert_eq!(
        out.text_content(),
        "path \"homelink/.bashrc\" is outside the session's working directory"
    );
    let out = tool(
        &sb,
        "write",
        json!({"file_path": "dangling", "content": "x"}),
    )
    .await;
    assert_eq!(
        out.text_content(),
        "path \"dangling\" is outside the session's working directory"
    );
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "nothere/../key", "old_string": "a", "new_string": "b"}),
    )
    .await;
    assert_eq!(
        out.text_content(),
        "path \"nothere/../key\" is outside the session's working directory"
    );
    // A symlink created by bash is judged the same way by the file tools.
    bash(&sb, "ln -s /etc made-link").await;
    let out = tool(&sb, "read", json!({"file_path": "made-link/hostname"})).await;
    assert_eq!(
        out.text_content(),
        "path \"made-link/hostname\" is outside the session's working directory"
    );
    // And bash cannot follow them out: the targets are not mounted.
    let out = bash(&sb, "cat key").await;
    assert!(out.is_error);
    assert!(!out.text_content().contains("PRIVATE KEY"));
    let out = bash(&sb, "ls homelink/").await;
    assert!(out.is_error);
    assert!(!env.home.join(".bashrc").exists());
    sb.close().await;
}

#[tokio::test]
async fn the_users_secrets_are_not_readable() {
    let env = env();
    let sb = open(&env).await;
    let key = env.home.join(".ssh/id_ed25519").display().to_string();
    let token = env
        .home
        .join(".config/airlock/run/agent.json")
        .display()
        .to_string();
    for p in [&key, &token] {
        let out = tool(&sb, "read", json!({"file_path": p})).await;
        assert!(out.is_error);
        assert_eq!(
            out.text_content(),
            format!(
                "path {} is outside the session's working directory",
                serde_json::Value::from(p.as_str())
            )
        );
        let out = bash(&sb, &format!("cat {p}")).await;
        assert!(out.is_error, "{out:?}");
        assert!(
            out.text_content().contains("No such file or directory"),
            "{out:?}"
        );
    }
    let out = bash(
        &sb,
        &format!("ls -a {} ~/.ssh; cat ~/.ssh/id_ed25519", env.home.display()),
    )
    .await;
    assert!(out.is_error);
    assert!(!out.text_content().contains("PRIVATE KEY"));
    assert!(!out.text_content().contains("control-api-secret-token"));
    let out = bash(&sb, "ls /; grep -rls control-api-secret-token /etc /tmp /run /var /opt /root /home \"$HOME\" 2>/dev/null | head -1").await;
    assert!(
        !out.text_content().contains("control-api-secret-token"),
        "{out:?}"
    );
    // /etc secrets are masked.
    let out = bash(&sb, "cat /etc/shadow | grep -c root").await;
    assert!(out.is_error);
    sb.close().await;
}

#[tokio::test]
async fn the_session_bus_is_out_of_reach() {
    let env = env();
    let run = env.home.join("run-user");
    std::fs::create_dir_all(&run).unwrap();
    let socket = run.join("bus");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut cfg = config(&env);
    // What the agent would have in its own environment is refused outright...
    cfg.env = vec![(
        "DBUS_SESSION_BUS_ADDRESS".into(),
        format!("unix:path={}", socket.display()),
    )];
    assert!(Sandbox::open(cfg).await.is_err());
    let sb = open(&env).await;
    // ...never inherited...
    let out = bash(&sb, "env | grep -c -e DBUS -e XDG_RUNTIME_DIR").await;
    assert_eq!(out.text_content(), "0");
    // ...and the socket itself is not there to connect to.
    let out = bash(
        &sb,
        &format!(
            "curl -sS --max-time 5 --unix-socket {} http://bus/",
            socket.display()
        ),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    let out = bash(&sb, "ls /run/user").await;
    assert!(out.is_error);
    assert!(
        listener.accept().is_err(),
        "the sandbox reached the bus socket"
    );
    sb.close().await;
}

fn serve_counting() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            h.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = conn {
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret");
            }
        }
    });
    (port, hits)
}

#[tokio::test]
async fn network_is_off_by_default() {
    let env = env();
    let (port, hits) = serve_counting();
    let sb = open(&env).await;
    let out = bash(
        &sb,
        &format!("curl -sS --max-time 5 http://127.0.0.1:{port}/"),
    )
    .await;
    assert!(out.is_error);
    assert!(!out.text_content().contains("secret"));
    let out = bash(
        &sb,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    let out = bash(&sb, "curl -sS --max-time 5 http://example.com/").await;
    assert!(out.is_error);
    let out = bash(&sb, "exec 3<>/dev/tcp/1.1.1.1/80 && echo connected").await;
    assert!(out.is_error, "{out:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    sb.close().await;
}

#[tokio::test]
async fn a_process_flood_is_stopped_by_pids_max() {
    let env = env();
    let mut cfg = config(&env);
    cfg.limits = Limits {
        pids_max: Some(32),
        ..Limits::default()
    };
    let sb = Sandbox::open(cfg).await.unwrap();
    assert!(sb.limits_applied(), "{:?}", sb.status());
    // Bounded: at most 1000 forks, children sleep and are killed with the session.
    let flood = r#"perl -e 'my $n = 0; for (1..1000) { my $p = fork(); if (!defined $p) { print "refused after $n\n"; exit 1 } if ($p == 0) { sleep 20; exit 0 } $n++ } print "not refused: $n\n"'"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tool(&sb, "bash", json!({"command": flood, "timeout_ms": 30000})),
    )
    .await
    .unwrap();
    assert!(out.is_error, "{out:?}");
    let text = out.text_content();
    let n: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("refused after "))
        .unwrap_or_else(|| panic!("no refusal: {text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(n < 32, "{n} forks succeeded");
    assert!(
        text.contains("[sandbox: process limit reached (pids.max)"),
        "{text}"
    );
    // The session recovers once the flood is killed.
    tool(&sb, "bash", json!({"restart": true})).await;
    let out = bash(&sb, "echo alive").await;
    assert_eq!(out.text_content(), "alive");
    sb.close().await;
}

#[tokio::test]
async fn a_memory_hog_is_killed_by_memory_max() {
    let env = env();
    let mut cfg = config(&env);
    cfg.limits = Limits {
        memory_max: Some(64 << 20),
        ..Limits::default()
    };
    let sb = Sandbox::open(cfg).await.unwrap();
    assert!(sb.limits_applied());
    let out = tool(
        &sb,
        "bash",
        json!({"command": "perl -e '$x = \"x\" x (512 * 1024 * 1024); print \"allocated\\n\"'", "timeout_ms": 60000}),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    let text = out.text_content();
    assert!(!text.lines().any(|l| l == "allocated"), "{text}");
    assert!(
        text.contains("memory limit reached")
            || text.contains("Killed")
            || text.contains("Out of memory"),
        "{text}"
    );
    sb.close().await;
}

#[tokio::test]
async fn sleep_past_the_timeout_is_killed() {
    let env = env();
    let sb = open(&env).await;
    let started = std::time::Instant::now();
    let out = tool(
        &sb,
        "bash",
        json!({"command": "sleep 600 & sleep 600", "timeout_ms": 1000}),
    )
    .await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "bash: bash command timed out after 1000ms"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // Nothing of the session survives (the background sleep is gone too).
    let out = bash(&sb, "ps -e -o comm= | grep -c sleep").await;
    assert_eq!(out.text_content(), "0", "{out:?}");
    sb.close().await;
}

#[tokio::test]
async fn files_that_steer_other_tools_are_read_only() {
    let env = env();
    let w = &env.workdir;
    std::fs::create_dir_all(w.join(".git/hooks")).unwrap();
    std::fs::write(w.join(".git/config"), "[core]\n").unwrap();
    std::fs::write(w.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(w.join(".mcp.json"), "{}\n").unwrap();
    let sb = open(&env).await;
    for cmd in [
        "echo '{\"mcpServers\":{\"x\":{\"command\":\"evil\"}}}' > .mcp.json",
        "printf '#!/bin/sh\\nevil\\n' > .git/hooks/pre-commit",
        "echo '[core] hooksPath = /tmp' >> .git/config",
        "rm .mcp.json",
    ] {
        let out = bash(&sb, cmd).await;
        assert!(out.is_error, "{cmd}: {out:?}");
        assert!(
            out.text_content().contains("Read-only file system")
                || out.text_content().contains("Device or resource busy"),
            "{cmd}: {out:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.join(".mcp.json")).unwrap(),
        "{}\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.join(".git/config")).unwrap(),
        "[core]\n"
    );
    assert!(!w.join(".git/hooks/pre-commit").exists());
    // Other files of the repository stay writable.
    let out = bash(&sb, "echo 'ref: refs/heads/dev' > .git/HEAD").await;
    assert!(!out.is_error, "{out:?}");
    for (p, tool_name) in [
        (".mcp.json", "write"),
        (".git/hooks/post-checkout", "write"),
        (".vscode/settings.json", "write"),
        (".bashrc", "write"),
        ("sub/.mcp.json", "write"),
    ] {
        let out = tool(&sb, tool_name, json!({"file_path": p, "content": "x"})).await;
        assert!(out.is_error);
        assert!(
            out.text_content()
                .starts_with(&format!("write: {p} is a protected path")),
            "{out:?}"
        );
    }
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": ".git/config", "old_string": "[core]", "new_string": "[x]"}),
    )
    .await;
    assert!(
        out.text_content()
            .starts_with("edit: .git/config is a protected path")
    );
    // A protected file that did not exist is removed again and the call reported as failed.
    let out = bash(
        &sb,
        "mkdir -p .vscode && echo '{}' > .vscode/tasks.json && echo made",
    )
    .await;
    assert!(out.is_error, "{out:?}");
    assert!(
        out.text_content()
            .contains("refused and removed protected files"),
        "{out:?}"
    );
    assert!(!w.join(".vscode").exists());
    sb.close().await;
    assert!(!w.join(".vscode").exists());
}
