//! Where the agent keeps its private keys and tokens, with the real `airlock up`.
//!
//! * `--keystore keychain` under a real Secret Service (a private D-Bus session with an unlocked
//!   gnome-keyring): the CA key and the server key are keychain entries under
//!   the service `airlock:<first 16 hex of sha256(absolute AIRLOCK_HOME)>`, and no file under
//!   `AIRLOCK_HOME` holds a private key. Runs only with `AIRLOCK_TEST_KEYCHAIN=1` (then a missing
//!   Secret Service is a failure):
//!
//!   ```sh
//!   dbus-run-session -- sh -c 'echo -n test | gnome-keyring-daemon --unlock --components=secrets \
//!       >/dev/null; AIRLOCK_TEST_KEYCHAIN=1 cargo test -p airlock-e2e --test keychain'
//!   ```
//!
//! * `--keystore file` (always runs): the same secrets as `0600` files in a `0700` `secrets/`
//!   directory, and the agent warns about plain files in its log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_e2e::{Agent, TestHome, run_with_timeout, venv_bin};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DOMAIN: &str = "abcd1234.tunnel.example";

fn keychain_required() -> bool {
    std::env::var("AIRLOCK_TEST_KEYCHAIN").is_ok_and(|v| v == "1")
}

/// A home with `time` in its Claude Desktop config and an `[anthropic]` section (no
/// `[keystore]` section: the backend comes from `--keystore`).
fn home() -> TestHome {
    let home = TestHome::new();
    let cfg = json!({
        "mcpServers": {
            "time": {
                "command": venv_bin("mcp-server-time"),
                "args": ["--local-timezone", "UTC"]
            }
        }
    });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize the Claude Desktop config"),
    );
    home.write_airlock_config(&format!(
        "[discovery]\nprobe_running = false\n\n\
         [anthropic]\ntunnel_domain = \"{DOMAIN}\"\nlisten_addr = \"127.0.0.1:0\"\n"
    ));
    home
}

/// Starts the agent with `--keystore <backend>`, exposes `time` and returns an access token for it (obtained
/// through the OAuth flow; the authorization server keeps only its hash).
fn start(backend: &str) -> (Agent, String) {
    let agent = Agent::start_with_args(home(), &["--keystore", backend]);
    let status = agent.cli_json(&["status", "--json"]);
    assert_eq!(status["keystore"], backend, "{status}");
    assert!(
        status["anthropic"]["listen_addr"].is_string(),
        "the tunnel ingress must run: {status}"
    );
    agent.wait_server("time", Duration::from_secs(60));
    let out = agent.cli(&[
        "--keystore",
        backend,
        "expose",
        "time",
        "--yes",
        "--hostname",
        "time",
    ]);
    assert!(
        out.code == Some(0),
        "`airlock expose time` failed: {out:?}\n--- agent stderr\n{}",
        agent.stderr_log()
    );
    let url = agent.cli_json(&["--keystore", backend, "url", "time", "--json"]);
    let local = url["url"]
        .as_str()
        .unwrap_or_else(|| panic!("`airlock url --json` has no url: {url}"));
    let token = airlock_e2e::oauth::obtain_token(&agent, local).access_token;
    (agent, token)
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The CA certificate the agent wrote (`pki/<domain>/ca.pem`).
fn ca_cert_pem(airlock_home: &Path) -> String {
    let p = airlock_home.join("pki").join(DOMAIN).join("ca.pem");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The keychain service name of an Airlock home, computed independently of the product:
/// `airlock:` + the first 16 hex digits of SHA-256 of the absolute path.
fn service_for(airlock_home: &Path) -> String {
    let hex: String = Sha256::digest(airlock_home.as_os_str().as_encoded_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("airlock:{}", &hex[..16])
}

fn secret_tool(args: &[&str]) -> airlock_e2e::Output {
    let mut cmd = Command::new("secret-tool");
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

#[test]
fn keychain_backend_keeps_every_private_key_out_of_airlock_home() {
    if !keychain_required() {
        println!("skipped: no Secret Service (run scripts/test)");
        return;
    }
    let probe = secret_tool(&["search", "--all", "service", "airlock-e2e-nothing"]);
    assert!(
        !probe.timed_out && probe.code.is_some(),
        "AIRLOCK_TEST_KEYCHAIN=1 but `secret-tool` does not answer (install libsecret-tools, run \
         inside dbus-run-session with an unlocked gnome-keyring): {probe:?}"
    );

    let (agent, token) = start("keychain");
    let airlock_home = agent.home.airlock_home();
    let service = service_for(&airlock_home);
    let ca_pem = ca_cert_pem(&airlock_home);

    // No file under AIRLOCK_HOME holds a private key; the certificates are there (not vacuous).
    let files = files_under(&airlock_home);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with(format!("{DOMAIN}/ca.pem")))
            && files
                .iter()
                .any(|f| f.ends_with(format!("{DOMAIN}/server.pem"))),
        "the CA and server certificates are files under AIRLOCK_HOME: {files:?}"
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        assert!(
            !contains(&bytes, b"PRIVATE KEY"),
            "{} holds a private key although the keystore is the keychain",
            f.display()
        );
        assert!(
            !contains(&bytes, token.as_bytes()),
            "{} holds an access token in plaintext",
            f.display()
        );
    }
    let secrets = airlock_home.join("secrets");
    if secrets.is_dir() {
        let names: Vec<String> = files_under(&secrets)
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("ca-key") || n.starts_with("server-key")),
            "no key may be a file in secrets/ with the keychain backend: {names:?}"
        );
    }

    // The keychain lists the CA key and the server key under this home's service (no shared gateway token).
    let found = secret_tool(&["search", "--all", "service", &service]);
    let listing = format!("{}\n{}", found.stdout, found.stderr);
    for name in [format!("ca-key.{DOMAIN}"), format!("server-key.{DOMAIN}")] {
        assert!(
            listing.contains(&format!("attribute.username = {name}")),
            "`secret-tool search --all service {service}` must list {name}:\n{listing}"
        );
    }
    assert!(
        !listing.contains("attribute.username = gateway-token"),
        "no shared gateway token may exist:\n{listing}"
    );
    // The entries are the real ones: the CA key belongs to the CA certificate.
    let ca_key = secret_tool(&[
        "lookup",
        "service",
        &service,
        "username",
        &format!("ca-key.{DOMAIN}"),
    ]);
    assert!(
        ca_key.stdout.contains("PRIVATE KEY"),
        "the keychain's CA key is a PEM private key: {:?}",
        ca_key.stderr
    );
    airlock_pki::CertificateAuthority::from_parts(&ca_pem, &ca_key.stdout)
        .unwrap_or_else(|e| panic!("the keychain's CA key does not belong to ca.pem: {e}"));
    drop(agent);
    // Leave the session keyring as we found it.
    let _ = secret_tool(&["clear", "service", &service]);
}

#[test]
fn file_backend_keeps_keys_in_0600_files_and_warns() {
    let (agent, token) = start("file");
    let airlock_home = agent.home.airlock_home();
    let secrets = airlock_home.join("secrets");
    assert_eq!(mode(&secrets), 0o700, "secrets/ must be 0700");

    let ca_key = secrets.join(format!("ca-key.{DOMAIN}"));
    let server_key = secrets.join(format!("server-key.{DOMAIN}"));
    assert!(
        !secrets.join("gateway-token").exists(),
        "no shared gateway token may exist"
    );
    for f in [&ca_key, &server_key] {
        assert!(
            f.is_file(),
            "{} must exist: {:?}",
            f.display(),
            files_under(&secrets)
        );
        assert_eq!(mode(f), 0o600, "{} must be 0600", f.display());
    }
    let ca_key_pem = std::fs::read_to_string(&ca_key).expect("read the CA key file");
    assert!(
        ca_key_pem.contains("PRIVATE KEY"),
        "{} holds a PEM key",
        ca_key.display()
    );
    airlock_pki::CertificateAuthority::from_parts(&ca_cert_pem(&airlock_home), &ca_key_pem)
        .unwrap_or_else(|e| panic!("{} does not belong to ca.pem: {e}", ca_key.display()));
    let server_key_pem = std::fs::read_to_string(&server_key).expect("read the server key file");
    assert!(
        server_key_pem.contains("PRIVATE KEY"),
        "{} holds a PEM key",
        server_key.display()
    );
    // Private keys live in secrets/ only.
    for f in files_under(&airlock_home) {
        if f.starts_with(&secrets) {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        assert!(
            !contains(&bytes, b"PRIVATE KEY"),
            "{} holds a private key outside secrets/",
            f.display()
        );
        assert!(
            !contains(&bytes, token.as_bytes()),
            "{} holds an access token in plaintext",
            f.display()
        );
    }
    let log = agent.stderr_log();
    assert!(
        log.to_ascii_lowercase().contains("plain files"),
        "the agent must warn that secrets are stored in plain files; its log:\n{log}"
    );
    let status: Value = agent.cli_json(&["status", "--json"]);
    assert_eq!(status["keystore"], "file", "{status}");
    drop(agent);
}
