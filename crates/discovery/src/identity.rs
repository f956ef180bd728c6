//! Server identity (normalized launch), stable ids, and merging of sources.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::clients::{Found, resolve_path};
use crate::model::{DiscoveredServer, Scope, Source, TransportSpec};

/// Commands that look like paths (contain a separator or start with `~`/`.`) become absolute,
/// resolved against `base`; bare program names stay as written (trimmed).
pub(crate) fn normalize_command(command: &str, base: &Path, home: &Path) -> String {
    let c = command.trim();
    let looks_like_path = c.contains('/') || c.contains('\\') || c.starts_with('~');
    if !looks_like_path {
        return c.to_string();
    }
    // Windows-style absolute paths are kept as written (we may be computing for another OS).
    let bytes = c.as_bytes();
    if bytes.len() >= 3 && bytes[1] == b':' && (bytes[2] == b'\\' || bytes[2] == b'/') {
        return c.to_string();
    }
    if c.starts_with("\\\\") {
        return c.to_string();
    }
    resolve_path(c, base, home).to_string_lossy().into_owned()
}

/// Lowercase scheme and host, drop the default port and a trailing slash. Userinfo, path case,
/// query and fragment are kept.
pub(crate) fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.trim_end_matches('/').to_string();
    };
    let scheme = scheme.to_ascii_lowercase();
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut hostport = hostport.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(":80"),
        "https" | "wss" => Some(":443"),
        _ => None,
    };
    if let Some(dp) = default_port
        && hostport.ends_with(dp)
    {
        hostport.truncate(hostport.len() - dp.len());
    }
    let (path, query) = match tail.find(['?', '#']) {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let path = path.trim_end_matches('/');
    let mut out = format!("{scheme}://");
    if let Some(u) = userinfo {
        out.push_str(u);
        out.push('@');
    }
    out.push_str(&hostport);
    out.push_str(path);
    out.push_str(query);
    out
}

/// Canonical serialisation of a transport's identity (env and headers excluded; HTTP and SSE
/// with the same URL are the same server).
pub(crate) fn canonical_identity(t: &TransportSpec) -> String {
    // Assembled by hand in a fixed key order so the id cannot change with serde_json features.
    fn js(s: &str) -> String {
        serde_json::Value::String(s.to_string()).to_string()
    }
    match t {
        TransportSpec::Stdio {
            command, args, cwd, ..
        } => {
            let args: Vec<String> = args.iter().map(|a| js(a)).collect();
            let cwd = match cwd {
                Some(p) => js(&p.to_string_lossy()),
                None => "null".to_string(),
            };
            format!(
                r#"{{"kind":"stdio","command":{},"args":[{}],"cwd":{}}}"#,
                js(command),
                args.join(","),
                cwd
            )
        }
        TransportSpec::StreamableHttp { url, .. } | TransportSpec::Sse { url, .. } => {
            format!(r#"{{"kind":"http","url":{}}}"#, js(url))
        }
    }
}

/// First 12 lowercase hex chars of SHA-256 of the canonical identity.
pub fn server_id(t: &TransportSpec) -> String {
    let digest = Sha256::digest(canonical_identity(t).as_bytes());
    let mut h = hex::encode(digest);
    h.truncate(12);
    h
}

/// Group found entries by identity into servers; sort sources and servers.
pub(crate) fn merge(found: Vec<Found>) -> Vec<DiscoveredServer> {
    let mut groups: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for f in found {
        groups.entry(server_id(&f.transport)).or_default().push(f);
    }
    let mut servers: Vec<DiscoveredServer> = groups
        .into_iter()
        .filter_map(|(id, mut fs)| {
            fs.sort_by(|a, b| {
                (a.client.priority(), &a.path, a.scope, &a.name).cmp(&(
                    b.client.priority(),
                    &b.path,
                    b.scope,
                    &b.name,
                ))
            });
            fs.dedup_by(|a, b| {
                a.client == b.client && a.path == b.path && a.name == b.name && a.scope == b.scope
            });
            // Prefer an enabled source for the name/transport, then priority order.
            let primary = fs.iter().find(|f| !f.disabled).or(fs.first())?.clone();
            let primary_name = fs.first().map(|f| f.name.clone()).unwrap_or_default();
            let sources = fs
                .into_iter()
                .map(|f| Source {
                    client: f.client,
                    path: f.path,
                    name: f.name,
                    scope: f.scope,
                    disabled: f.disabled,
                })
                .collect();
            Some(DiscoveredServer {
                id,
                name: primary_name,
                transport: primary.transport,
                sources,
            })
        })
        .collect();
    servers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    servers
}

/// Merge server lists from several scans/probes (e.g. [`crate::scan`] and
/// [`crate::probe_running`]): servers with the same id become one, with the union of their
/// sources; name and transport come from the highest-priority source. Sorted like a snapshot.
pub fn merge_servers(servers: impl IntoIterator<Item = DiscoveredServer>) -> Vec<DiscoveredServer> {
    fn key(s: &Source) -> (usize, &std::path::Path, Scope, &str) {
        (s.client.priority(), &s.path, s.scope, &s.name)
    }
    let mut groups: BTreeMap<String, Vec<DiscoveredServer>> = BTreeMap::new();
    for s in servers {
        groups.entry(s.id.clone()).or_default().push(s);
    }
    let mut out: Vec<DiscoveredServer> = groups
        .into_values()
        .filter_map(|mut group| {
            group.sort_by(|a, b| {
                a.sources
                    .iter()
                    .map(key)
                    .min()
                    .cmp(&b.sources.iter().map(key).min())
            });
            let mut sources: Vec<Source> = group.iter().flat_map(|s| s.sources.clone()).collect();
            sources.sort_by(|a, b| key(a).cmp(&key(b)));
            sources.dedup();
            let mut primary = group.into_iter().next()?;
            primary.name = sources
                .first()
                .map(|s| s.name.clone())
                .unwrap_or(primary.name);
            primary.sources = sources;
            Some(primary)
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("HTTPS://API.Example.COM:443/MCP/"),
            "https://api.example.com/MCP"
        );
        assert_eq!(normalize_url("http://h:80"), "http://h");
        assert_eq!(normalize_url("http://h/"), "http://h");
        assert_eq!(normalize_url("http://h:8080/x/?q=1"), "http://h:8080/x?q=1");
        assert_eq!(normalize_url("http://[::1]:80/mcp"), "http://[::1]/mcp");
        assert_eq!(normalize_url("https://u:P@H.com/a"), "https://u:P@h.com/a");
    }

    #[test]
    fn commands() {
        let base = Path::new("/proj");
        let home = Path::new("/home/me");
        assert_eq!(normalize_command(" npx ", base, home), "npx");
        assert_eq!(normalize_command("./bin/s", base, home), "/proj/bin/s");
        assert_eq!(normalize_command("~/s.sh", base, home), "/home/me/s.sh");
        assert_eq!(
            normalize_command("/usr/bin/../bin/x", base, home),
            "/usr/bin/x"
        );
        assert_eq!(
            normalize_command("C:\\x\\y.exe", base, home),
            "C:\\x\\y.exe"
        );
    }

    #[test]
    fn ids_are_stable_and_ignore_env() {
        let a = TransportSpec::Stdio {
            command: "npx".into(),
            args: vec!["-y".into(), "x".into()],
            env: BTreeMap::from([("K".into(), "1".into())]),
            cwd: None,
        };
        let b = TransportSpec::Stdio {
            command: "npx".into(),
            args: vec!["-y".into(), "x".into()],
            env: BTreeMap::new(),
            cwd: None,
        };
        assert_eq!(server_id(&a), server_id(&b));
        assert_eq!(server_id(&a).len(), 12);
        // Stable across runs and machines: pinned value of the canonical form.
        assert_eq!(
            canonical_identity(&a),
            r#"{"kind":"stdio","command":"npx","args":["-y","x"],"cwd":null}"#
        );
        let c = TransportSpec::Sse {
            url: "http://h/mcp".into(),
            headers: BTreeMap::new(),
        };
        let d = TransportSpec::StreamableHttp {
            url: "http://h/mcp".into(),
            headers: BTreeMap::new(),
        };
        assert_eq!(server_id(&c), server_id(&d));
        assert_ne!(server_id(&a), server_id(&c));
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use crate::model::ClientKind;
    use std::path::PathBuf;

    fn server(client: ClientKind, name: &str, url: &str) -> DiscoveredServer {
        let transport = TransportSpec::StreamableHttp {
            url: url.into(),
            headers: BTreeMap::new(),
        };
        DiscoveredServer {
            id: server_id(&transport),
            name: name.into(),
            transport,
            sources: vec![Source {
                client,
                path: PathBuf::from(format!("/{name}")),
                name: name.into(),
                scope: if client == ClientKind::Running {
                    Scope::Running
                } else {
                    Scope::User
                },
                disabled: false,
            }],
        }
    }

    #[test]
    fn merges_probe_results_into_configured_servers() {
        let url = "http://127.0.0.1:3001/mcp";
        let merged = merge_servers([
            server(ClientKind::Running, "probe-name", url),
            server(ClientKind::Cursor, "configured", url),
            server(ClientKind::Running, "other", "http://127.0.0.1:3002/mcp"),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].name, "configured");
        let clients: Vec<ClientKind> = merged[0].sources.iter().map(|s| s.client).collect();
        assert_eq!(clients, vec![ClientKind::Cursor, ClientKind::Running]);
        assert_eq!(merged[1].name, "other");
    }
}
