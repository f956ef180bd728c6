//! [`IpPolicy`]: which resolved addresses Airlock may dial.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::EgressError;

/// Why Airlock is dialling: decides whether loopback is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A server the user deliberately exposed (a route in the tunnel config, an HTTP MCP
    /// server from their own config). Loopback is allowed.
    UserExposed,
    /// Anything named by outside data (OAuth client-metadata documents, sandbox egress, …).
    /// Loopback is never allowed.
    Fetch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// RFC1918 only (Anthropic's default).
    Private,
    /// Exactly these networks (Anthropic's `upstream.allowed_ips`, which replaces the default).
    Allowed(Vec<IpNet>),
    /// `upstream.disable_ip_validation: true`.
    Disabled,
}

/// The resolved-address rule.
///
/// Anthropic's `mcp-proxy` semantics, plus Airlock's own rules on top; `check` applies, in order:
///
/// 1. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is checked as the IPv4 address.
/// 2. Unspecified (`0.0.0.0`, `::`), multicast and broadcast addresses: never.
/// 3. Link-local / cloud metadata (`169.254.0.0/16`, `fe80::/10`): only when an `allowed_ips`
///    entry that lies *inside* the link-local range covers it (e.g. `169.254.169.254` or
///    `169.254.0.0/16`). A catch-all such as `0.0.0.0/0`, or `disable_ip_validation`, does not
///    unlock it.
/// 4. Loopback (`127.0.0.0/8`, `::1`): allowed for [`Purpose::UserExposed`] whatever the mode,
///    never for [`Purpose::Fetch`] (even if listed).
/// 5. Otherwise: default mode allows RFC1918 (`10/8`, `172.16/12`, `192.168/16`); an
///    `allowed_ips` list replaces that default; disabled validation allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPolicy {
    mode: Mode,
}

impl Default for IpPolicy {
    fn default() -> Self {
        Self::private_only()
    }
}

const RFC1918: [(Ipv4Addr, u8); 3] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

fn link_local_v4() -> Ipv4Net {
    // Infallible: constant prefix length below 32.
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)
}

fn link_local_v6() -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
}

/// Parse one `allowed_ips` entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address
/// (`10.1.2.3`, which becomes `/32`; `::1`, which becomes `/128`). Host bits may be set, as Go's
/// `net.ParseCIDR` accepts; the network is what counts.
pub fn parse_ip_entry(entry: &str) -> Result<IpNet, EgressError> {
    let trimmed = entry.trim();
    if let Ok(net) = trimmed.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(EgressError::InvalidCidr {
        entry: entry.to_owned(),
    })
}

impl IpPolicy {
    /// Anthropic's default: RFC1918 only.
    pub fn private_only() -> Self {
        Self {
            mode: Mode::Private,
        }
    }

    /// Validation off (`upstream.disable_ip_validation: true`). Airlock's link-local, loopback
    /// and unroutable rules still apply.
    pub fn validation_disabled() -> Self {
        Self {
            mode: Mode::Disabled,
        }
    }

    /// Exactly these networks (replaces the RFC1918 default). An empty list means the default,
    /// as in the proxy.
    pub fn allowing(nets: Vec<IpNet>) -> Self {
        if nets.is_empty() {
            Self::private_only()
        } else {
            Self {
                mode: Mode::Allowed(nets.into_iter().map(|n| n.trunc()).collect()),
            }
        }
    }

    /// Build from the proxy's `upstream` settings. `allowed_ips` entries are parsed with
    /// [`parse_ip_entry`]; giving both a non-empty `allowed_ips` and
    /// `disable_ip_validation: true` is an error, as in the proxy.
    pub fn from_config<S: AsRef<str>>(
        allowed_ips: &[S],
        disable_ip_validation: bool,
    ) -> Result<Self, EgressError> {
        if disable_ip_validation && !allowed_ips.is_empty() {
            return Err(EgressError::ConflictingPolicy);
        }
        if disable_ip_validation {
            return Ok(Self::validation_disabled());
        }
        let nets = allowed_ips
            .iter()
            .map(|e| parse_ip_entry(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::allowing(nets))
    }

    /// The explicit `allowed_ips` list, if this policy has one.
    pub fn allowed_ips(&self) -> Option<&[IpNet]> {
        match &self.mode {
            Mode::Allowed(nets) => Some(nets),
            _ => None,
        }
    }

    /// True if validation is disabled.
    pub fn is_validation_disabled(&self) -> bool {
        self.mode == Mode::Disabled
    }

    /// Check one resolved address. See the type docs for the rules.
    pub fn check(&self, ip: IpAddr, purpose: Purpose) -> Result<(), EgressError> {
        let ip = canonical(ip);
        if is_unroutable(ip) {
            return Err(EgressError::Unroutable { ip });
        }
        if is_link_local(ip) {
            return if self.explicitly_lists_link_local(ip) {
                Ok(())
            } else {
                Err(EgressError::LinkLocal { ip })
            };
        }
        if ip.is_loopback() {
            return match purpose {
                Purpose::UserExposed => Ok(()),
                Purpose::Fetch => Err(EgressError::Loopback { ip }),
            };
        }
        let allowed = match &self.mode {
            Mode::Disabled => true,
            Mode::Private => match ip {
                IpAddr::V4(v4) => is_rfc1918(v4),
                IpAddr::V6(_) => false,
            },
            Mode::Allowed(nets) => nets.iter().any(|n| n.contains(&ip)),
        };
        if allowed {
            Ok(())
        } else {
            Err(EgressError::NotAllowed { ip })
        }
    }

    fn explicitly_lists_link_local(&self, ip: IpAddr) -> bool {
        let Mode::Allowed(nets) = &self.mode else {
            return false;
        };
        nets.iter().any(|net| {
            net.contains(&ip)
                && match net {
                    IpNet::V4(n) => link_local_v4().contains(n),
                    IpNet::V6(n) => link_local_v6().contains(n),
                }
        })
    }
}

/// IPv4-mapped IPv6 addresses become IPv4; everything else is unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn is_rfc1918(ip: Ipv4Addr) -> bool {
    RFC1918
        .iter()
        .any(|(net, len)| Ipv4Net::new_assert(*net, *len).contains(&ip))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => link_local_v4().contains(&v4),
        IpAddr::V6(v6) => link_local_v6().contains(&v6),
    }
}

fn is_unroutable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn default_is_rfc1918_only() {
        let p = IpPolicy::default();
        for ok in ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1"] {
            assert!(p.check(ip(ok), Purpose::Fetch).is_ok(), "{ok}");
        }
        for bad in [
            "172.32.0.1",
            "8.8.8.8",
            "100.64.0.1",
            "fd00::1",
            "2001:db8::1",
        ] {
            let err = p.check(ip(bad), Purpose::Fetch).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("IP validation failed: {bad} is not a private address")
            );
        }
    }

    #[test]
    fn mapped_v6_is_checked_as_v4() {
        let p = IpPolicy::default();
        assert!(p.check(ip("::ffff:10.0.0.1"), Purpose::Fetch).is_ok());
        assert!(matches!(
            p.check(ip("::ffff:169.254.169.254"), Purpose::UserExposed),
            Err(EgressError::LinkLocal { .. })
        ));
        assert!(matches!(
            p.check(ip("::ffff:127.0.0.1"), Purpose::Fetch),
            Err(EgressError::Loopback { .. })
        ));
    }

    #[test]
    fn link_local_needs_an_explicit_entry() {
        let catch_all = IpPolicy::from_config(&["0.0.0.0/0", "::/0"], false).unwrap();
        assert!(matches!(
            catch_all.check(ip("169.254.169.254"), Purpose::UserExposed),
            Err(EgressError::LinkLocal { .. })
        ));
        assert!(matches!(
            catch_all.check(ip("fe80::1"), Purpose::UserExposed),
            Err(EgressError::LinkLocal { .. })
        ));
        assert!(matches!(
            IpPolicy::validation_disabled().check(ip("169.254.169.254"), Purpose::UserExposed),
            Err(EgressError::LinkLocal { .. })
        ));
        let listed = IpPolicy::from_config(&["169.254.169.254"], false).unwrap();
        assert!(listed.check(ip("169.254.169.254"), Purpose::Fetch).is_ok());
        assert!(listed.check(ip("169.254.169.253"), Purpose::Fetch).is_err());
    }

    #[test]
    fn loopback_only_for_user_exposed() {
        for p in [
            IpPolicy::default(),
            IpPolicy::validation_disabled(),
            IpPolicy::from_config(&["127.0.0.0/8", "::1"], false).unwrap(),
        ] {
            assert!(p.check(ip("127.0.0.1"), Purpose::UserExposed).is_ok());
            assert!(p.check(ip("::1"), Purpose::UserExposed).is_ok());
            assert!(matches!(
                p.check(ip("127.0.0.1"), Purpose::Fetch),
                Err(EgressError::Loopback { .. })
            ));
            assert!(matches!(
                p.check(ip("::1"), Purpose::Fetch),
                Err(EgressError::Loopback { .. })
            ));
        }
    }

    #[test]
    fn unroutable_never() {
        let p = IpPolicy::validation_disabled();
        for bad in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"] {
            assert!(
                matches!(
                    p.check(ip(bad), Purpose::UserExposed),
                    Err(EgressError::Unroutable { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn allowed_ips_replace_default_and_conflict_with_disable() {
        let p = IpPolicy::from_config(&["203.0.113.0/24", "10.9.9.9"], false).unwrap();
        assert!(p.check(ip("203.0.113.7"), Purpose::Fetch).is_ok());
        assert!(p.check(ip("10.9.9.9"), Purpose::Fetch).is_ok());
        assert!(p.check(ip("10.9.9.8"), Purpose::Fetch).is_err());
        assert!(p.check(ip("192.168.1.1"), Purpose::Fetch).is_err());
        assert!(matches!(
            IpPolicy::from_config(&["10.0.0.0/8"], true),
            Err(EgressError::ConflictingPolicy)
        ));
        let err = IpPolicy::from_config(&["10.0.0.0/33"], false).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
        assert!(
            IpPolicy::from_config::<&str>(&[], true)
                .unwrap()
                .is_validation_disabled()
        );
        assert!(
            IpPolicy::validation_disabled()
                .check(ip("8.8.8.8"), Purpose::Fetch)
                .is_ok()
        );
    }
}
