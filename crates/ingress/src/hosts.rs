//! Hostname → route lookup with the semantics of Anthropic's proxy: an exact match on the full hostname first, then
//! the tunnel domain suffix stripped and the remaining subdomain matched.

use std::collections::HashMap;

/// Maps hostnames to gateway route ids. Built by the agent from what is exposed; replaced wholesale on change.
#[derive(Debug, Clone, Default)]
pub struct HostTable {
    tunnel_domain: String,
    /// Full hostnames (lowercase, no trailing dot).
    exact: HashMap<String, String>,
    /// Subdomains of the tunnel domain (single labels or dotted prefixes).
    sub: HashMap<String, String>,
}

/// Lowercases, drops a `:port` and a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl HostTable {
    pub fn new(tunnel_domain: &str) -> Self {
        Self {
            tunnel_domain: normalize_host(tunnel_domain),
            ..Self::default()
        }
    }

    pub fn tunnel_domain(&self) -> &str {
        &self.tunnel_domain
    }

    /// Adds a route under `key`: a full hostname when it contains the tunnel domain or a dot, else a subdomain.
    pub fn insert(&mut self, key: &str, route_id: &str) {
        let key = normalize_host(key);
        if let Some(sub) = self.strip_domain(&key) {
            self.sub.insert(sub.to_string(), route_id.to_string());
        } else if key.contains('.') {
            self.exact.insert(key, route_id.to_string());
        } else {
            self.sub.insert(key, route_id.to_string());
        }
    }

    fn strip_domain<'h>(&self, host: &'h str) -> Option<&'h str> {
        if self.tunnel_domain.is_empty() {
            return None;
        }
        host.strip_suffix(self.tunnel_domain.as_str())?
            .strip_suffix('.')
            .filter(|s| !s.is_empty())
    }

    /// The route id for a `Host` header or SNI value.
    pub fn lookup(&self, host: &str) -> Option<&str> {
        let host = normalize_host(host);
        if let Some(id) = self.exact.get(&host) {
            return Some(id);
        }
        let sub = self.strip_domain(&host)?;
        self.sub.get(sub).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.sub.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_first_then_subdomain() {
        let mut t = HostTable::new("abcd.tunnel.example");
        t.insert("echo", "r-echo");
        t.insert("docs.internal.example", "r-docs");
        t.insert("time.abcd.tunnel.example", "r-time");
        assert_eq!(t.lookup("echo.abcd.tunnel.example"), Some("r-echo"));
        assert_eq!(t.lookup("ECHO.abcd.tunnel.example.:443"), Some("r-echo"));
        assert_eq!(t.lookup("time.abcd.tunnel.example"), Some("r-time"));
        assert_eq!(t.lookup("docs.internal.example"), Some("r-docs"));
        assert_eq!(
            t.lookup("echo"),
            None,
            "a bare label is not a tunnel hostname"
        );
        assert_eq!(t.lookup("echo.other.example"), None);
        assert_eq!(t.lookup("abcd.tunnel.example"), None);
        assert_eq!(t.lookup("x.echo.abcd.tunnel.example"), None);
    }

    #[test]
    fn exact_match_wins_over_subdomain() {
        let mut t = HostTable::new("d.example");
        t.insert("a", "by-sub");
        // A full-host key equal to the subdomain form is stored as a subdomain: the later insert wins.
        t.insert("a.d.example", "by-host");
        assert_eq!(t.lookup("a.d.example"), Some("by-host"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("A.B:8443"), "a.b");
        assert_eq!(normalize_host("a.b."), "a.b");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }
}
