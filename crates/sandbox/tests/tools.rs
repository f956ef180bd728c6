#![allow(clippy::unwrap_used)]
//! Tool conformance: input schemas, caps and error shapes of the reference toolset.

mod common;

use airlock_sandbox::{ContentBlock, TOOL_NAMES, tool_definitions};
use common::*;
use serde_json::json;

#[test]
fn schemas_match_the_reference() {
    let defs = tool_definitions();
    let names: Vec<&str> = defs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOOL_NAMES);
    let by = |n: &str| defs.iter().find(|d| d["name"] == n).unwrap()["input_schema"].clone();
    assert_eq!(by("bash")["properties"]["timeout_ms"]["type"], "integer");
    assert_eq!(by("bash")["properties"]["restart"]["type"], "boolean");
    assert!(by("bash").get("required").is_none());
    assert_eq!(by("read")["required"], json!(["file_path"]));
    assert_eq!(
        by("read")["properties"]["view_range"]["items"]["type"],
        "integer"
    );
    assert_eq!(by("write")["required"], json!(["file_path", "content"]));
    assert_eq!(
        by("edit")["required"],
        json!(["file_path", "old_string", "new_string"])
    );
    assert_eq!(by("edit")["properties"]["replace_all"]["type"], "boolean");
    assert_eq!(by("glob")["required"], json!(["pattern"]));
    assert_eq!(by("grep")["required"], json!(["pattern"]));
    for d in &defs {
        assert!(d["input_schema"].get("additionalProperties").is_none());
    }
}

#[tokio::test]
async fn bash_persists_state_restarts_and_reports_exit_codes() {
    let env = env();
    let sb = open(&env).await;
    let out = bash(&sb, "export FOO=bar; cd /tmp; echo started").await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(out.text_content(), "started");
    let out = bash(&sb, "echo $FOO $(pwd)").await;
    assert_eq!(out.text_content(), "bar /tmp");
    let out = bash(&sb, "echo oops >&2; false").await;
    assert!(out.is_error);
    assert_eq!(out.text_content(), "oops");
    let out = bash(&sb, "exit_code() { return 7; }; exit_code").await;
    assert!(out.is_error);
    assert_eq!(out.text_content(), "exit 7");
    let out = bash(&sb, "true").await;
    assert!(!out.is_error);
    assert_eq!(out.text_content(), "(no output)");
    let out = tool(&sb, "bash", json!({"restart": true})).await;
    assert_eq!(out.text_content(), "bash session restarted");
    assert!(!out.is_error);
    let out = bash(&sb, "echo \"[$FOO]\" $(pwd)").await;
    assert_eq!(out.text_content(), format!("[] {}", env.workdir.display()));
    // Syntax errors come back as errors at once (no shell left waiting for more input).
    let started = std::time::Instant::now();
    let out = bash(&sb, "echo \"unterminated").await;
    assert!(out.is_error);
    assert!(out.text_content().contains("unexpected EOF"), "{out:?}");
    let out = bash(&sb, "}").await;
    assert!(out.is_error, "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let out = bash(&sb, "cat <<EOF\nheredoc $FOO\nEOF").await;
    assert_eq!(out.text_content(), "heredoc ");
    // A command that closes the shell's output cannot hang the session: the call times out
    // and the next one gets a fresh shell.
    let out = tool(
        &sb,
        "bash",
        json!({"command": "exec >&- 2>&-", "timeout_ms": 1000}),
    )
    .await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "bash: bash command timed out after 1000ms"
    );
    let out = bash(&sb, "echo back").await;
    assert_eq!(out.text_content(), "back");
    // HOME is the workdir: global git settings work.
    let out = bash(
        &sb,
        "git config --global user.name sandbox && git config --global user.name",
    )
    .await;
    assert_eq!(out.text_content(), "sandbox", "{out:?}");
    let out = tool(&sb, "bash", json!({})).await;
    assert!(out.is_error);
    assert_eq!(out.text_content(), "bash: command is required");
    // Colour codes are stripped; stdin is /dev/null (a read does not hang).
    let out = bash(&sb, "printf '\\033[31mred\\033[0m\\n'; read x; echo after").await;
    assert_eq!(out.text_content(), "red\nafter");
    sb.close().await;
}

#[tokio::test]
async fn bash_environment_starts_empty() {
    let env = env();
    let mut cfg = config(&env);
    cfg.env = vec![("MY_SETTING".into(), "1".into())];
    // Values in the agent's own environment never reach the sandbox.
    let sb = airlock_sandbox::Sandbox::open(cfg).await.unwrap();
    let out = bash(&sb, "env | cut -d= -f1 | sort | tr '\\n' ' '").await;
    let names: Vec<&str> = out.text_content().leak().split_whitespace().collect();
    for n in &names {
        assert!(
            [
                "HOME",
                "LANG",
                "LOGNAME",
                "MY_SETTING",
                "PATH",
                "PWD",
                "SHELL",
                "SHLVL",
                "TERM",
                "TMPDIR",
                "USER",
                "_",
                "OLDPWD"
            ]
            .contains(n),
            "unexpected variable {n} in {names:?}"
        );
    }
    let out = bash(&sb, "echo $HOME $TERM").await;
    assert_eq!(
        out.text_content(),
        format!("{} dumb", env.workdir.display())
    );
    let mut cfg = config(&env);
    cfg.env = vec![("ANTHROPIC_API_KEY".into(), "sk".into())];
    assert!(airlock_sandbox::Sandbox::open(cfg).await.is_err());
    let mut cfg = config(&env);
    cfg.env = vec![("DBUS_SESSION_BUS_ADDRESS".into(), "unix:path=/x".into())];
    assert!(airlock_sandbox::Sandbox::open(cfg).await.is_err());
    sb.close().await;
}

#[tokio::test]
async fn bash_output_keeps_the_last_100_kib() {
    let env = env();
    let sb = open(&env).await;
    let out = bash(&sb, "head -c 300000 /dev/zero | tr '\\0' a; echo; echo END").await;
    let text = out.text_content();
    assert!(text.starts_with("[output truncated]\n"), "{}", &text[..40]);
    assert!(text.ends_with("\nEND"));
    let body = text.strip_prefix("[output truncated]\n").unwrap();
    assert!(body.len() <= 100 * 1024, "{}", body.len());
    assert!(body.len() > 100 * 1024 - 10);
    sb.close().await;
}

#[tokio::test]
async fn bash_timeout_kills_the_shell() {
    let env = env();
    let sb = open(&env).await;
    bash(&sb, "export KEEP=1").await;
    let started = std::time::Instant::now();
    let out = tool(
        &sb,
        "bash",
        json!({"command": "sleep 30", "timeout_ms": 500}),
    )
    .await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "bash: bash command timed out after 500ms"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // A fresh shell afterwards.
    let out = bash(&sb, "echo \"[$KEEP]\"").await;
    assert_eq!(out.text_content(), "[]");
    // Cancellation works the same way.
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        c2.cancel();
    });
    let out = sb
        .run_tool("bash", json!({"command": "sleep 30"}), cancel)
        .await;
    assert!(out.is_error);
    assert_eq!(out.text_content(), "bash command cancelled");
    sb.close().await;
}

#[tokio::test]
async fn read_write_edit_shapes() {
    let env = env();
    let sb = open(&env).await;
    let out = tool(
        &sb,
        "write",
        json!({"file_path": "dir/a.txt", "content": "one\ntwo\nthree\nfour\n"}),
    )
    .await;
    assert_eq!(out.text_content(), "wrote 19 bytes to dir/a.txt");
    assert!(!out.is_error);
    assert_eq!(
        std::fs::read_to_string(env.workdir.join("dir/a.txt")).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    let out = tool(&sb, "read", json!({"file_path": "dir/a.txt"})).await;
    assert_eq!(out.text_content(), "one\ntwo\nthree\nfour\n");
    let abs = env.workdir.join("dir/a.txt").display().to_string();
    let out = tool(&sb, "read", json!({"file_path": abs, "view_range": [2, 3]})).await;
    assert_eq!(out.text_content(), "two\nthree");
    let out = tool(
        &sb,
        "read",
        json!({"file_path": "dir/a.txt", "view_range": [3, -1]}),
    )
    .await;
    assert_eq!(out.text_content(), "three\nfour");
    let out = tool(
        &sb,
        "read",
        json!({"file_path": "dir/a.txt", "view_range": [1]}),
    )
    .await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "read: view_range must be [start_line, end_line]"
    );
    let out = tool(&sb, "read", json!({"file_path": "missing.txt"})).await;
    assert_eq!(
        out.text_content(),
        "read: missing.txt: no such file or directory"
    );
    let out = tool(&sb, "read", json!({"file_path": "dir"})).await;
    assert_eq!(out.text_content(), "read: dir: not a regular file");
    let out = tool(&sb, "read", json!({})).await;
    assert_eq!(out.text_content(), "read: file_path is required");

    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "dir/a.txt", "old_string": "two", "new_string": "2"}),
    )
    .await;
    assert_eq!(out.text_content(), "edited dir/a.txt (1 replacement(s))");
    tool(
        &sb,
        "write",
        json!({"file_path": "b.txt", "content": "x y x y x"}),
    )
    .await;
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "b.txt", "old_string": "x", "new_string": "z"}),
    )
    .await;
    assert!(out.is_error);
    assert_eq!(
        out.text_content(),
        "edit: old_string appears 3 times in b.txt (must be unique)"
    );
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "b.txt", "old_string": "q", "new_string": "z"}),
    )
    .await;
    assert_eq!(out.text_content(), "edit: old_string not found in b.txt");
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "b.txt", "old_string": "x", "new_string": "$0", "replace_all": true}),
    )
    .await;
    assert_eq!(out.text_content(), "edited b.txt (3 replacement(s))");
    assert_eq!(
        std::fs::read_to_string(env.workdir.join("b.txt")).unwrap(),
        "$0 y $0 y $0"
    );

    // Caps: 256 KiB text.
    std::fs::write(env.workdir.join("big.txt"), "a".repeat(256 * 1024 + 1)).unwrap();
    let out = tool(&sb, "read", json!({"file_path": "big.txt"})).await;
    assert_eq!(
        out.text_content(),
        "read: big.txt is 262145 bytes, exceeds 262144-byte limit. Use bash (head/tail/sed) to read a slice."
    );
    let out = tool(
        &sb,
        "edit",
        json!({"file_path": "big.txt", "old_string": "a", "new_string": "b"}),
    )
    .await;
    assert_eq!(
        out.text_content(),
        "edit: big.txt is 262145 bytes, exceeds 262144-byte limit. Use bash (sed/awk) to edit a large file."
    );
    std::fs::write(env.workdir.join("bin.dat"), [0u8, 159, 146, 150]).unwrap();
    let out = tool(&sb, "read", json!({"file_path": "bin.dat"})).await;
    assert_eq!(
        out.text_content(),
        "read: bin.dat: not valid UTF-8 text (binary files are only supported for image/PDF extensions)"
    );
    sb.close().await;
}

#[tokio::test]
async fn read_images_and_pdfs_as_base64_blocks() {
    let env = env();
    let sb = open(&env).await;
    let png = b"\x89PNG\r\n\x1a\nfake-png-bytes";
    std::fs::write(env.workdir.join("pic.png"), png).unwrap();
    let out = tool(&sb, "read", json!({"file_path": "pic.png"})).await;
    assert!(!out.is_error);
    let v = serde_json::to_value(&out.content).unwrap();
    assert_eq!(v[0]["type"], "image");
    assert_eq!(v[0]["source"]["type"], "base64");
    assert_eq!(v[0]["source"]["media_type"], "image/png");
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(v[0]["source"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, png);
    std::fs::write(env.workdir.join("doc.pdf"), b"%PDF-1.4 fake").unwrap();
    let out = tool(&sb, "read", json!({"file_path": "doc.pdf"})).await;
    assert!(
        matches!(&out.content[0], ContentBlock::Document { source } if source.media_type == "application/pdf")
    );
    let out = tool(
        &sb,
        "read",
        json!({"file_path": "doc.pdf", "view_range": [1, 2]}),
    )
    .await;
    assert!(out.is_error);
    // An image whose base64 form exceeds 5 MiB is refused.
    let f = std::fs::File::create(env.workdir.join("huge.jpg")).unwrap();
    f.set_len(4 * 1024 * 1024).unwrap();
    let out = tool(&sb, "read", json!({"file_path": "huge.jpg"})).await;
    assert!(out.is_error);
    assert!(
        out.text_content()
            .contains("exceeds 5242880-byte image limit"),
        "{out:?}"
    );
    let f = std::fs::File::create(env.workdir.join("huge.pdf")).unwrap();
    f.set_len(20 * 1024 * 1024 + 1).unwrap();
    let out = tool(&sb, "read", json!({"file_path": "huge.pdf"})).await;
    assert!(
        out.text_content()
            .contains("exceeds 20971520-byte PDF limit"),
        "{out:?}"
    );
    sb.close().await;
}

#[tokio::test]
async fn glob_and_grep_shapes() {
    let env = env();
    let sb = open(&env).await;
    for (p, c) in [
        ("src/a.rs", "fn main() {}\n// TODO one\n"),
        ("src/deep/b.rs", "// TODO two\n"),
        ("README.md", "nothing\n"),
        ("node_modules/x.rs", "// TODO hidden\n"),
        (".git/y.rs", "// TODO hidden\n"),
    ] {
        let path = env.workdir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    // Newest first.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(env.workdir.join("src/a.rs"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = tool(&sb, "glob", json!({"pattern": "**/*.rs"})).await;
    let w = env.workdir.display();
    assert_eq!(
        out.text_content(),
        format!("{w}/src/deep/b.rs\n{w}/src/a.rs")
    );
    let out = tool(&sb, "glob", json!({"pattern": "*.rs", "path": "src"})).await;
    assert_eq!(out.text_content(), format!("{w}/src/a.rs"));
    let out = tool(&sb, "glob", json!({"pattern": "*.py"})).await;
    assert_eq!(out.text_content(), "no matches");
    let out = tool(&sb, "glob", json!({"pattern": "/etc/*"})).await;
    assert_eq!(out.text_content(), "glob: absolute pattern not permitted");
    assert!(out.is_error);
    let out = tool(&sb, "glob", json!({"pattern": "../*"})).await;
    assert_eq!(
        out.text_content(),
        "glob: '..' is not permitted in the pattern"
    );
    let out = tool(&sb, "glob", json!({"pattern": "*", "path": "/etc"})).await;
    assert_eq!(
        out.text_content(),
        "path \"/etc\" is outside the session's working directory"
    );
    for i in 0..250 {
        std::fs::write(env.workdir.join(format!("many{i}.txt")), "").unwrap();
    }
    let out = tool(&sb, "glob", json!({"pattern": "many*.txt"})).await;
    assert_eq!(out.text_content().lines().count(), 200);

    let out = tool(&sb, "grep", json!({"pattern": "TODO \\w+"})).await;
    assert_eq!(
        out.text_content(),
        format!("{w}/src/a.rs:2:// TODO one\n{w}/src/deep/b.rs:1:// TODO two")
    );
    let out = tool(&sb, "grep", json!({"pattern": "TODO", "path": "src/deep"})).await;
    assert_eq!(
        out.text_content(),
        format!("{w}/src/deep/b.rs:1:// TODO two")
    );
    let out = tool(&sb, "grep", json!({"pattern": "absent-string"})).await;
    assert_eq!(out.text_content(), "no matches");
    assert!(!out.is_error);
    let out = tool(&sb, "grep", json!({"pattern": "("})).await;
    assert!(out.is_error);
    assert!(out.text_content().starts_with("grep: invalid pattern"));
    // Output cap.
    std::fs::write(
        env.workdir.join("lots.txt"),
        "match-me-please\n".repeat(20_000),
    )
    .unwrap();
    let out = tool(
        &sb,
        "grep",
        json!({"pattern": "match-me", "path": "lots.txt"}),
    )
    .await;
    let text = out.text_content();
    assert!(text.ends_with("[output truncated at 102400 bytes]"));
    assert!(text.len() <= 102_400 + 40);
    // Over-long lines are skipped.
    std::fs::write(
        env.workdir.join("long.txt"),
        format!("{}needle\nshort needle\n", "x".repeat(2100)),
    )
    .unwrap();
    let out = tool(
        &sb,
        "grep",
        json!({"pattern": "needle", "path": "long.txt"}),
    )
    .await;
    assert_eq!(out.text_content(), format!("{w}/long.txt:2:short needle"));
    let out = tool(&sb, "nonexistent", json!({})).await;
    assert!(out.is_error);
    sb.close().await;
}

#[test]
fn the_api_types_cross_tasks() {
    fn check<T: Send + Sync + 'static>() {}
    check::<airlock_sandbox::Sandbox>();
    check::<airlock_sandbox::SandboxConfig>();
    check::<airlock_sandbox::ToolOutput>();
    // The result serializes as a `user.tool_result`'s content / is_error.
    let v = serde_json::to_value(airlock_sandbox::ToolOutput::error("boom")).unwrap();
    assert_eq!(
        v,
        json!({"content": [{"type": "text", "text": "boom"}], "is_error": true})
    );
}
