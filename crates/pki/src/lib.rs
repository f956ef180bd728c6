//! Private CA and server certificates for Airlock's inner TLS (MCP tunnels).
//!
//! The rules (Anthropic MCP tunnels, "certificate requirements"):
//!
//! * CA: ECDSA P-256 / SHA-256, critical `BasicConstraints CA:TRUE` (path length 0: no
//!   intermediates), `SubjectKeyIdentifier`, critical `KeyUsage keyCertSign, cRLSign`,
//!   critical `NameConstraints` permitting only the tunnel domain (DNS subtree), 5 years.
//! * Server: signed directly by the CA, `AuthorityKeyIdentifier` = the CA's SKI, SAN
//!   `<domain>` and `*.<domain>`, EKU `serverAuth`, ECDSA P-256 / SHA-256, 90 days.
//!
//! All validity math takes an explicit `now`, so callers and tests control the clock.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use zeroize::Zeroizing;

/// Default CA lifetime: five years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::days(5 * 365 + 1);
/// Default server certificate lifetime: 90 days.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::days(90);
/// Renew the server certificate when it expires within this margin.
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// `notBefore` is set this far before `now` to tolerate clock skew between us and the verifier.
pub const BACKDATE: Duration = Duration::minutes(5);
/// Largest CA PEM Anthropic accepts (Console / API `maxLength`).
pub const MAX_CA_PEM_BYTES: usize = 8192;

const CA_COMMON_NAME: &str = "Airlock tunnel CA";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "invalid tunnel domain {domain:?}: {reason} (expected a DNS name like `abc123.tunnels.example.com`)"
    )]
    InvalidDomain {
        domain: String,
        reason: &'static str,
    },
    #[error("invalid validity period: {0}")]
    InvalidValidity(&'static str),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("CA certificate PEM is unusable: {0}")]
    BadCertificate(String),
    #[error("CA private key PEM is unusable: {0}")]
    BadKey(String),
    #[error("the certificate is not an Airlock tunnel CA: {0}")]
    NotACa(String),
    #[error(
        "the CA private key does not belong to the CA certificate; restore the matching key or \
         generate a new CA (and upload it to the tunnel)"
    )]
    KeyMismatch,
    #[error("the CA expired at {not_after}; generate a new CA and upload it to the tunnel")]
    CaExpired { not_after: OffsetDateTime },
}

/// A private key in PEM (PKCS#8). Zeroized on drop; `Debug` never prints it.
#[derive(Clone)]
pub struct PrivateKeyPem(Zeroizing<String>);

impl PrivateKeyPem {
    /// Wraps a PEM read back from the keystore.
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text. Keep the borrow short; store it in the keystore, not in logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hand the PEM over without leaving an unzeroized copy behind.
    pub fn into_zeroizing(self) -> Zeroizing<String> {
        self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// The CA certificate (public part; this is what gets uploaded to the tunnel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    pub pem: String,
    pub der: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CaCert {
    /// Lowercase hex SHA-256 of the DER, as Anthropic's Console shows it.
    pub fn fingerprint_sha256_hex(&self) -> String {
        fingerprint_sha256_hex(&self.der)
    }
}

/// A freshly issued server certificate and its key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Server certificate PEM followed by the CA certificate PEM (what a TLS server presents).
    pub chain_pem: String,
    /// The server certificate alone, PEM.
    pub cert_pem: String,
    /// The server certificate alone, DER.
    pub cert_der: Vec<u8>,
    /// The server's private key (PKCS#8 PEM).
    pub key_pem: PrivateKeyPem,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// A loaded CA that can issue server certificates.
pub struct CertificateAuthority {
    cert: CaCert,
    tunnel_domain: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("tunnel_domain", &self.tunnel_domain)
            .field("not_after", &self.cert.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Generate a new CA for `tunnel_domain`, valid from `now - BACKDATE` to `now + validity`.
    /// Returns the certificate and its private key (store the key in the keystore).
    pub fn generate(
        tunnel_domain: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(CaCert, PrivateKeyPem), PkiError> {
        let domain = normalize_tunnel_domain(tunnel_domain)?;
        let now = whole_seconds_utc(now);
        if validity <= Duration::ZERO {
            return Err(PkiError::InvalidValidity("CA validity must be positive"));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A random suffix keeps subjects distinct, so two CAs active on one tunnel during a
        // rotation are never confused by name during path building.
        dn.push(
            DnType::CommonName,
            format!("{CA_COMMON_NAME} {:08x}", rand::random::<u32>()),
        );
        dn.push(DnType::OrganizationName, "Airlock");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(domain)],
            excluded_subtrees: Vec::new(),
        });
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;

        let cert = params.self_signed(&key)?;
        let ca = CaCert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            not_before: params.not_before,
            not_after: params.not_after,
        };
        Ok((ca, PrivateKeyPem::new(key.serialize_pem())))
    }

    /// Load a CA from its certificate PEM and private key PEM, checking that the certificate is a
    /// CA constrained to one tunnel domain and that the key belongs to it.
    pub fn from_parts(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = single_certificate_der(cert_pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::BadCertificate(format!("not a valid X.509 certificate: {e}")))?;

        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(PkiError::NotACa(
                    "BasicConstraints CA:TRUE is missing".to_string(),
                ));
            }
        }
        let has_ski = x509.extensions().iter().any(|ext| {
            matches!(
                ext.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        if !has_ski {
            return Err(PkiError::NotACa(
                "SubjectKeyIdentifier is missing".to_string(),
            ));
        }
        let tunnel_domain = permitted_dns_domain(&x509)?;

        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadKey(format!("cannot parse the private key: {e}")))?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }

        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| PkiError::BadCertificate(format!("cannot use as issuer: {e}")))?;
        Ok(Self {
            cert: CaCert {
                pem: cert_pem.trim().to_string() + "\n",
                der,
                not_before,
                not_after,
            },
            tunnel_domain,
            issuer,
        })
    }

    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// The domain the CA is constrained to (from its NameConstraints).
    pub fn tunnel_domain(&self) -> &str {
        &self.tunnel_domain
    }

    /// Issue a server certificate for `<domain>` and `*.<domain>` with a fresh P-256 key,
    /// valid from `now - BACKDATE` to `now + validity` (capped at the CA's own expiry).
    pub fn issue_server(
        &self,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<ServerCert, PkiError> {
        if validity <= Duration::ZERO {
            return Err(PkiError::InvalidValidity(
                "server certificate validity must be positive",
            ));
        }
        let now = whole_seconds_utc(now);
        if now >= self.cert.not_after {
            return Err(PkiError::CaExpired {
                not_after: self.cert.not_after,
            });
        }
        let domain = &self.tunnel_domain;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![domain.clone(), format!("*.{domain}")])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, domain.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = std::cmp::min(now + validity, self.cert.not_after);

        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        let mut chain_pem = cert_pem.clone();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.cert.pem);
        Ok(ServerCert {
            chain_pem,
            cert_pem,
            cert_der: cert.der().to_vec(),
            key_pem: PrivateKeyPem::new(key.serialize_pem()),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}

/// Lowercase hex SHA-256 of a certificate's DER encoding (Anthropic's `fingerprint`).
pub fn fingerprint_sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// True when a certificate expiring at `not_after` should be renewed at `now`, i.e. when it
/// expires within `margin` (use [`RENEW_BEFORE`]) or has already expired.
pub fn needs_renewal(not_after: OffsetDateTime, now: OffsetDateTime, margin: Duration) -> bool {
    now + margin >= not_after
}

/// Lowercase, strip one trailing dot, and check the tunnel domain is a plain DNS name with at
/// least two labels (no wildcards, no IP addresses).
pub fn normalize_tunnel_domain(domain: &str) -> Result<String, PkiError> {
    let invalid = |reason| PkiError::InvalidDomain {
        domain: domain.to_string(),
        reason,
    };
    let d = domain.trim();
    let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
    if d.is_empty() {
        return Err(invalid("it is empty"));
    }
    if d.len() > 253 {
        return Err(invalid("it is longer than 253 characters"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("it needs at least two labels"));
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("every label must be 1-63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label cannot start or end with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("it looks like an IP address"));
    }
    Ok(d)
}

/// Certificates encode whole seconds in UTC; do the math the same way so the returned
/// `not_before`/`not_after` equal what is inside the certificate.
fn whole_seconds_utc(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // non-zero and full length
    SerialNumber::from_slice(&bytes)
}

fn single_certificate_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let blocks = cert_pem.matches("-----BEGIN ").count();
    if blocks != 1 {
        return Err(PkiError::BadCertificate(format!(
            "expected exactly one PEM block, found {blocks}"
        )));
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::BadCertificate(format!("not PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(PkiError::BadCertificate(format!(
            "expected a CERTIFICATE block, found {}",
            pem.label
        )));
    }
    Ok(pem.contents)
}

fn permitted_dns_domain(
    x509: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<String, PkiError> {
    let nc = x509
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::NameConstraints(nc) => Some(nc),
            _ => None,
        })
        .ok_or_else(|| PkiError::NotACa("NameConstraints are missing".to_string()))?;
    let permitted = nc.permitted_subtrees.as_deref().unwrap_or(&[]);
    match permitted {
        [only] => match &only.base {
            GeneralName::DNSName(d) => normalize_tunnel_domain(d),
            _ => Err(PkiError::NotACa(
                "the permitted NameConstraints subtree is not a DNS name".to_string(),
            )),
        },
        _ => Err(PkiError::NotACa(format!(
            "expected exactly one permitted DNS subtree, found {}",
            permitted.len()
        ))),
    }
}
