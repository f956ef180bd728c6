//! The proxy config: parsing, the proxy's validation errors, round trip, route lookup.

use std::collections::HashMap;
use std::time::Duration;

use airlock_egress::Purpose;
use airlock_tunnel::anthropic_config::{
    ConfigErrorKind, LogLevel, ProxyConfig, UpstreamScheme, expand_env, format_go_duration,
    parse_go_duration,
};

const EXAMPLE: &str = r#"listen_addr: ":8080"
log_level: info
shutdown_timeout: 30s
tunnel_domain: ${TUNNEL_DOMAIN}
tls:
  cert_file: /data/tls.crt
  key_file: /data/tls.key
routes:
  echo: http://hello-mcp:9000          # https://echo.<tunnel-domain>/...
  docs: https://docs-mcp.example.corp:8443
  full.host.example: http://10.0.0.7:80
upstream:
  allowed_ips: [10.0.0.0/8, 192.168.1.10]
  tls:
    ca_file: /data/upstream-ca.pem
    include_system_cas: true
"#;

fn env() -> HashMap<String, String> {
    HashMap::from([(
        "TUNNEL_DOMAIN".to_owned(),
        "abcd1234.tunnel.anthropic.com".to_owned(),
    )])
}

fn parse(text: &str) -> Result<ProxyConfig, airlock_tunnel::ConfigError> {
    ProxyConfig::from_yaml_str(text, &env())
}

#[test]
fn parses_the_documented_example() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.listen_addr, ":8080");
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.tunnel_domain, "abcd1234.tunnel.anthropic.com");
    assert_eq!(c.tls.cert_file.to_str(), Some("/data/tls.crt"));
    assert_eq!(c.routes.len(), 3);
    let echo = &c.routes["echo"];
    assert_eq!(echo.upstream.scheme, UpstreamScheme::Http);
    assert_eq!(echo.upstream.host, "hello-mcp");
    assert_eq!(echo.upstream.port, 9000);
    assert_eq!(c.upstream.allowed_ips.len(), 2);
    assert!(c.upstream.tls.include_system_cas);
    let policy = c.ip_policy();
    assert!(
        policy
            .check("10.2.3.4".parse().unwrap(), Purpose::UserExposed)
            .is_ok()
    );
    assert!(
        policy
            .check("192.168.1.10".parse().unwrap(), Purpose::UserExposed)
            .is_ok()
    );
    assert!(
        policy
            .check("192.168.1.11".parse().unwrap(), Purpose::UserExposed)
            .is_err()
    );
}

#[test]
fn defaults_and_minimal_config() {
    let c = parse("listen_addr: \":8080\"\ntls: {cert_file: a.crt, key_file: a.key}\nroutes:\n  x: http://h:1\n").unwrap();
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.tunnel_domain, "");
    assert!(!c.upstream.disable_ip_validation);
    assert!(
        c.ip_policy()
            .check("10.0.0.1".parse().unwrap(), Purpose::Fetch)
            .is_ok()
    );
    assert!(
        c.ip_policy()
            .check("8.8.8.8".parse().unwrap(), Purpose::Fetch)
            .is_err()
    );
}

#[test]
fn routes_as_a_list_gets_the_proxy_error_with_a_line() {
    let text = "listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nroutes:\n  - echo: http://hello-mcp:9000\n";
    let err = ProxyConfig::from_yaml_str(text, &HashMap::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot unmarshal !!seq into map[string]string"),
        "{msg}"
    );
    assert!(matches!(*err.kind, ConfigErrorKind::Yaml(_)));
    assert!(
        matches!(err.line, Some(3 | 4)),
        "line {:?}: {msg}",
        err.line
    );
}

#[test]
fn invalid_upstreams_name_the_route() {
    for (value, why) in [
        ("http://hello-mcp:9000/mcp", "path"),
        ("http://hello-mcp", "port"),
        ("hello-mcp:9000", "scheme"),
        ("ftp://hello-mcp:21", "scheme"),
        ("http://hello-mcp:0", "port"),
        ("http://hello-mcp:99999", "port"),
        ("http://:9000", "host"),
        ("http://u:p@h:9000", "userinfo"),
        ("http://hello-mcp:9000?x=1", "query"),
    ] {
        let text = format!(
            "listen_addr: \":8080\"\ntls: {{cert_file: a, key_file: b}}\nroutes:\n  good: http://ok:1\n  echo: {value}\n"
        );
        let err = parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("invalid upstream (must be scheme://host:port)"),
            "{value}: {msg}"
        );
        assert!(msg.contains("\"echo\""), "{value}: {msg}");
        assert!(msg.contains(why), "{value} should mention {why}: {msg}");
        assert_eq!(err.line, Some(5), "{value}: {msg}");
    }
    // IPv6 literal in brackets is fine.
    let c = parse("listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nroutes:\n  v6: http://[fd00::5]:8080\n").unwrap();
    assert_eq!(c.routes["v6"].upstream.host, "fd00::5");
    assert_eq!(c.routes["v6"].upstream.url(), "http://[fd00::5]:8080");
}

#[test]
fn allowed_ips_with_disable_is_an_error() {
    let text = "listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nroutes: {}\nupstream:\n  allowed_ips: [10.0.0.0/8]\n  disable_ip_validation: true\n";
    let err = parse(text).unwrap_err();
    assert!(err.to_string().contains("mutually exclusive"), "{err}");
    assert_eq!(err.line, Some(6));
    // disable alone is fine and turns validation off.
    let c = parse("listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nupstream:\n  disable_ip_validation: true\n").unwrap();
    assert!(
        c.ip_policy()
            .check("8.8.8.8".parse().unwrap(), Purpose::Fetch)
            .is_ok()
    );
}

#[test]
fn bad_cidr_is_named_with_its_line() {
    let text = "listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nupstream:\n  allowed_ips:\n    - 10.0.0.0/8\n    - 10.0.0.0/40\n";
    let err = parse(text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("10.0.0.0/40"), "{msg}");
    assert_eq!(err.line, Some(6), "{msg}");
}

#[test]
fn load_errors_carry_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "listen_addr: \":8080\"\ntls: [oops\n").unwrap();
    let err = ProxyConfig::load(&path, &HashMap::new()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}:", path.display())), "{msg}");
    assert!(err.line.is_some(), "{msg}");
    let missing = ProxyConfig::load(&dir.path().join("nope.yaml"), &HashMap::new()).unwrap_err();
    assert!(matches!(*missing.kind, ConfigErrorKind::Read(_)));
    assert!(missing.to_string().contains("nope.yaml"));
}

#[test]
fn missing_required_fields_say_so() {
    let err = parse("tls: {cert_file: a, key_file: b}\n").unwrap_err();
    assert!(
        matches!(
            *err.kind,
            ConfigErrorKind::Missing {
                field: "listen_addr",
                ..
            }
        ),
        "{err}"
    );
    let err = parse("listen_addr: \":8080\"\ntls: {cert_file: a}\n").unwrap_err();
    assert!(
        matches!(
            *err.kind,
            ConfigErrorKind::Missing {
                field: "tls.key_file",
                ..
            }
        ),
        "{err}"
    );
    let err = parse("listen_addr: \":8080\"\nlog_level: loud\ntls: {cert_file: a, key_file: b}\n")
        .unwrap_err();
    assert_eq!(err.line, Some(2));
    let err =
        parse("listen_addr: \":8080\"\nshutdown_timeout: soon\ntls: {cert_file: a, key_file: b}\n")
            .unwrap_err();
    assert!(err.to_string().contains("shutdown_timeout"), "{err}");
}

#[test]
fn round_trip_through_to_yaml() {
    let c = parse(EXAMPLE).unwrap();
    let yaml = c.to_yaml().unwrap();
    // Written config contains no variables and re-parses (with an empty env) to the same value.
    assert!(!yaml.contains("${"), "{yaml}");
    let back = ProxyConfig::from_yaml_str(&yaml, &HashMap::new()).unwrap();
    assert_eq!(back, c, "{yaml}");
    // And the routes are a map of strings, as the Go proxy's map[string]string wants.
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        v["routes"]["docs"].as_str(),
        Some("https://docs-mcp.example.corp:8443")
    );
    assert_eq!(v["shutdown_timeout"].as_str(), Some("30s"));
    assert_eq!(v["listen_addr"].as_str(), Some(":8080"));
    // disable_ip_validation round-trips too.
    let mut d = c.clone();
    d.upstream.allowed_ips.clear();
    d.upstream.disable_ip_validation = true;
    d.shutdown_timeout = Duration::from_millis(1500);
    let back = ProxyConfig::from_yaml_str(&d.to_yaml().unwrap(), &HashMap::new()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn lookup_exact_then_subdomain() {
    let c = parse(EXAMPLE).unwrap();
    let name = |h: &str| c.lookup(h).map(|r| r.name.clone());
    assert_eq!(
        name("echo.abcd1234.tunnel.anthropic.com"),
        Some("echo".into())
    );
    assert_eq!(
        name("ECHO.abcd1234.Tunnel.Anthropic.com."),
        Some("echo".into())
    );
    assert_eq!(
        name("echo.abcd1234.tunnel.anthropic.com:443"),
        Some("echo".into())
    );
    assert_eq!(name("full.host.example"), Some("full.host.example".into()));
    assert_eq!(
        name("FULL.host.example:8443"),
        Some("full.host.example".into())
    );
    assert_eq!(
        name("echo"),
        Some("echo".into()),
        "exact match on a bare key"
    );
    assert_eq!(name("nope.abcd1234.tunnel.anthropic.com"), None);
    assert_eq!(name("abcd1234.tunnel.anthropic.com"), None);
    assert_eq!(name("echo.other.tunnel.anthropic.com"), None);
    assert_eq!(name("echoabcd1234.tunnel.anthropic.com"), None);
    assert_eq!(name(""), None);
    // Without a tunnel domain, only full-host keys match.
    let mut no_domain = c.clone();
    no_domain.tunnel_domain.clear();
    assert!(
        no_domain
            .lookup("echo.abcd1234.tunnel.anthropic.com")
            .is_none()
    );
    assert!(no_domain.lookup("full.host.example").is_some());
}

#[test]
fn env_expansion_follows_go_rules() {
    let env = HashMap::from([
        ("A".to_owned(), "1".to_owned()),
        ("B_2".to_owned(), "two".to_owned()),
    ]);
    let e = expand_env("${A}-$B_2-${MISSING}-$ -${}-x$", &env);
    assert_eq!(e.text, "1-two--$ --x$");
    assert_eq!(e.unset, vec!["MISSING".to_owned()]);
    let e = expand_env("héllo ${A}é", &env);
    assert_eq!(e.text, "héllo 1é");
    // Unset tunnel_domain expands to empty (as the proxy does): subdomain lookup is then off.
    let c = ProxyConfig::from_yaml_str(EXAMPLE, &HashMap::new()).unwrap();
    assert_eq!(c.tunnel_domain, "");
}

#[test]
fn go_durations() {
    for (s, d) in [
        ("30s", Duration::from_secs(30)),
        ("1m30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
        ("300ms", Duration::from_millis(300)),
        ("0", Duration::ZERO),
    ] {
        assert_eq!(parse_go_duration(s), Some(d), "{s}");
        assert_eq!(parse_go_duration(&format_go_duration(d)), Some(d), "{s}");
    }
    assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
    for bad in ["", "30", "-1s", "1x", "s"] {
        assert_eq!(parse_go_duration(bad), None, "{bad}");
    }
}

#[test]
fn warnings_for_likely_mistakes() {
    let c = parse(EXAMPLE).unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = ProxyConfig::from_yaml_str(
        "listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\nroutes:\n  docs: https://docs:8443\nupstream:\n  allowed_ips: [0.0.0.0/0]\n",
        &HashMap::new(),
    )
    .unwrap();
    let w = c.warnings().join("\n");
    assert!(w.contains("\"docs\" is https"), "{w}");
    assert!(w.contains("tunnel_domain is empty"), "{w}");
    assert!(w.contains("catch-all"), "{w}");
    let empty = parse("listen_addr: \":8080\"\ntls: {cert_file: a, key_file: b}\n").unwrap();
    assert!(empty.warnings()[0].contains("no routes"));
}
