//! Where the inner-TLS CA and server certificate live: certificates (public) as files under `AIRLOCK_HOME/pki/<domain>/`,
//! private keys in the keystore (the OS keychain; a 0600 file only where no keychain exists).
//!
//! One CA per tunnel domain, name-constrained to it. Rotation is two-phase, as Anthropic's Console allows two active
//! CAs per tunnel: `rotate` creates the next CA and exports it without using it; `activate` (once the user has uploaded
//! it) makes it the signer and keeps the old one listed as still trusted until the user revokes it in the Console.

use std::fs;
use std::path::{Path, PathBuf};

use airlock_keystore::{Keystore, Secret};
use airlock_pki::{CaCert, CertificateAuthority, PrivateKeyPem, ServerCert};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::config::write_atomic;
use crate::error::AgentError;

/// Validity choices; defaults match Anthropic's setup component.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub ca: Duration,
    pub server: Duration,
    pub renew_before: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            ca: airlock_pki::DEFAULT_CA_VALIDITY,
            server: airlock_pki::DEFAULT_SERVER_VALIDITY,
            renew_before: airlock_pki::RENEW_BEFORE,
        }
    }
}

/// Metadata kept next to `server.pem`, so start-up need not parse X.509 to decide on renewal.
#[derive(Debug, Serialize, Deserialize)]
struct ServerMeta {
    not_after_unix: i64,
    ca_fingerprint: String,
}

/// The CA certificates a user should have registered, for display and export.
#[derive(Debug, Clone, Serialize)]
pub struct CaSummary {
    pub role: &'static str,
    pub fingerprint: String,
    pub not_after: String,
    pub pem: String,
}

pub struct PkiStore<'k> {
    dir: PathBuf,
    domain: String,
    keystore: &'k Keystore,
    validity: Validity,
}

impl<'k> PkiStore<'k> {
    pub fn new(
        pki_root: &Path,
        domain: &str,
        keystore: &'k Keystore,
        validity: Validity,
    ) -> Result<Self, AgentError> {
        let domain = airlock_pki::normalize_tunnel_domain(domain)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        Ok(Self {
            dir: pki_root.join(&domain),
            domain,
            keystore,
            validity,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Keystore entry names: one set per tunnel domain.
    fn key_name(&self, role: &str) -> String {
        format!("{role}-key.{}", self.domain)
    }

    async fn load_ca(&self, role: &str) -> Result<Option<CertificateAuthority>, AgentError> {
        let cert_path = self.path(&format!("{role}.pem"));
        let cert_pem = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AgentError::io(&cert_path, e)),
        };
        let key = self
            .keystore
            .get(&self.key_name(role))
            .await
            .map_err(|e| AgentError::Invalid(format!("reading the {role} key from the keystore: {e}")))?
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "{} exists but its private key is not in the keystore ({}); remove {} to start a new CA",
                    cert_path.display(),
                    self.keystore.backend(),
                    self.dir.display()
                ))
            })?;
        let key_pem = key.expose_str().map_err(|_| {
            AgentError::Invalid(format!("the {role} key in the keystore is not PEM"))
        })?;
        CertificateAuthority::from_parts(&cert_pem, key_pem)
            .map(Some)
            .map_err(|e| AgentError::Invalid(format!("{}: {e}", cert_path.display())))
    }

    async fn store_ca(
        &self,
        role: &str,
        cert: &CaCert,
        key: &PrivateKeyPem,
    ) -> Result<(), AgentError> {
        // Key first: a certificate file without its key would be unusable after a crash in between.
        self.keystore
            .set(&self.key_name(role), &Secret::from(key.expose()))
            .await
            .map_err(|e| AgentError::Invalid(format!("storing the {role} key: {e}")))?;
        write_atomic(
            &self.path(&format!("{role}.pem")),
            cert.pem.as_bytes(),
            0o644,
        )
    }

    /// The active CA, created on first use.
    pub async fn ensure_ca(&self, now: OffsetDateTime) -> Result<CertificateAuthority, AgentError> {
        if let Some(ca) = self.load_ca("ca").await? {
            return Ok(ca);
        }
        let (cert, key) = CertificateAuthority::generate(&self.domain, now, self.validity.ca)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.store_ca("ca", &cert, &key).await?;
        tracing::info!(domain = %self.domain, fingerprint = %cert.fingerprint_sha256_hex(), "created a CA for inner TLS");
        CertificateAuthority::from_parts(&cert.pem, key.expose())
            .map_err(|e| AgentError::Invalid(e.to_string()))
    }

    /// Phase one of a rotation: create (or return the already pending) next CA. It signs nothing yet.
    pub async fn rotate(&self, now: OffsetDateTime) -> Result<CaCert, AgentError> {
        self.ensure_ca(now).await?;
        if let Some(next) = self.load_ca("ca-next").await? {
            return Ok(next.cert().clone());
        }
        let (cert, key) = CertificateAuthority::generate(&self.domain, now, self.validity.ca)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.store_ca("ca-next", &cert, &key).await?;
        Ok(cert)
    }

    /// Phase two: the pending CA becomes the signer; the old one stays listed as `previous` (still registered in the
    /// Console until the user revokes it). The server certificate is re-issued by the new CA.
    pub async fn activate(&self, now: OffsetDateTime) -> Result<(CaCert, ServerCert), AgentError> {
        let next = self.load_ca("ca-next").await?.ok_or_else(|| {
            AgentError::Invalid("no rotation is pending; run `airlock ca rotate` first".into())
        })?;
        let current = self.ensure_ca(now).await?;
        let next_key = self
            .keystore
            .get(&self.key_name("ca-next"))
            .await
            .map_err(|e| AgentError::Invalid(e.to_string()))?
            .ok_or_else(|| {
                AgentError::Invalid("the pending CA's key vanished from the keystore".into())
            })?;
        write_atomic(
            &self.path("ca-previous.pem"),
            current.cert().pem.as_bytes(),
            0o644,
        )?;
        self.keystore
            .set(&self.key_name("ca"), &next_key)
            .await
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        write_atomic(&self.path("ca.pem"), next.cert().pem.as_bytes(), 0o644)?;
        let _ = fs::remove_file(self.path("ca-next.pem"));
        let _ = self.keystore.delete(&self.key_name("ca-next")).await;
        let server = self.issue_server(&next, now).await?;
        Ok((next.cert().clone(), server))
    }

    /// The server certificate for the listeners: the stored one while it is valid for more than the renewal margin
    /// and issued by the active CA, else a new one (key into the keystore, certificate to `server.pem`).
    pub async fn server_cert(&self, now: OffsetDateTime) -> Result<ServerCert, AgentError> {
        let ca = self.ensure_ca(now).await?;
        if let Some(cert) = self.load_server(&ca, now).await? {
            return Ok(cert);
        }
        self.issue_server(&ca, now).await
    }

    /// Forces a new server certificate from the active CA.
    pub async fn renew_server(&self, now: OffsetDateTime) -> Result<ServerCert, AgentError> {
        let ca = self.ensure_ca(now).await?;
        self.issue_server(&ca, now).await
    }

    async fn load_server(
        &self,
        ca: &CertificateAuthority,
        now: OffsetDateTime,
    ) -> Result<Option<ServerCert>, AgentError> {
        let Ok(meta) = fs::read_to_string(self.path("server.json")) else {
            return Ok(None);
        };
        let Ok(meta) = serde_json::from_str::<ServerMeta>(&meta) else {
            return Ok(None);
        };
        let Ok(not_after) = OffsetDateTime::from_unix_timestamp(meta.not_after_unix) else {
            return Ok(None);
        };
        if meta.ca_fingerprint != ca.cert().fingerprint_sha256_hex()
            || airlock_pki::needs_renewal(not_after, now, self.validity.renew_before)
        {
            return Ok(None);
        }
        let Ok(chain_pem) = fs::read_to_string(self.path("server.pem")) else {
            return Ok(None);
        };
        let Some(key) = self
            .keystore
            .get(&self.key_name("server"))
            .await
            .map_err(|e| AgentError::Invalid(e.to_string()))?
        else {
            return Ok(None);
        };
        let Ok(key_pem) = key.expose_str() else {
            return Ok(None);
        };
        let cert_pem = chain_pem
            .split_inclusive("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let Some(cert_der) = pem_to_der(&cert_pem) else {
            return Ok(None);
        };
        Ok(Some(ServerCert {
            chain_pem: chain_pem.clone(),
            cert_pem,
            cert_der,
            key_pem: PrivateKeyPem::new(key_pem.to_string()),
            not_before: now,
            not_after,
        }))
    }

    async fn issue_server(
        &self,
        ca: &CertificateAuthority,
        now: OffsetDateTime,
    ) -> Result<ServerCert, AgentError> {
        let cert = ca
            .issue_server(now, self.validity.server)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.keystore
            .set(
                &self.key_name("server"),
                &Secret::from(cert.key_pem.expose()),
            )
            .await
            .map_err(|e| AgentError::Invalid(format!("storing the server key: {e}")))?;
        write_atomic(&self.path("server.pem"), cert.chain_pem.as_bytes(), 0o644)?;
        let meta = ServerMeta {
            not_after_unix: cert.not_after.unix_timestamp(),
            ca_fingerprint: ca.cert().fingerprint_sha256_hex(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| AgentError::Invalid(e.to_string()))?;
        write_atomic(&self.path("server.json"), &meta, 0o644)?;
        tracing::info!(domain = %self.domain, not_after = %cert.not_after, "issued the inner-TLS server certificate");
        Ok(cert)
    }

    /// A certificate for the loopback addresses (`127.0.0.1`, `::1`) from the active CA, for the embedded relay's
    /// `https://127.0.0.1:<port>/…` URLs. The CA's NameConstraints restrict DNS names only, so IP names verify under
    /// it. The key is returned, never stored: the agent issues a new one at every start and before expiry.
    pub async fn issue_loopback(&self, now: OffsetDateTime) -> Result<ServerCert, AgentError> {
        self.ensure_ca(now).await?;
        let cert_path = self.path("ca.pem");
        let ca_pem = fs::read_to_string(&cert_path).map_err(|e| AgentError::io(&cert_path, e))?;
        let ca_der = pem_to_der(&ca_pem).ok_or_else(|| {
            AgentError::Invalid(format!("{} holds no certificate", cert_path.display()))
        })?;
        let key = self
            .keystore
            .get(&self.key_name("ca"))
            .await
            .map_err(|e| AgentError::Invalid(format!("reading the CA key from the keystore: {e}")))?
            .ok_or_else(|| AgentError::Invalid("the CA key is not in the keystore".into()))?;
        let key_pem = key
            .expose_str()
            .map_err(|_| AgentError::Invalid("the CA key in the keystore is not PEM".into()))?;
        let bad =
            |e: rcgen::Error| AgentError::Invalid(format!("issuing the loopback certificate: {e}"));
        let ca_key = rcgen::KeyPair::from_pem(key_pem).map_err(bad)?;
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key).map_err(bad)?;
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(bad)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "::1".to_string()])
                .map_err(bad)?;
        let mut dn = rcgen::DistinguishedName::new();
        // Not a hostname-like CN: OpenSSL checks such a CN against the CA's DNS NameConstraints when no DNS SAN exists.
        dn.push(rcgen::DnType::CommonName, "Airlock loopback");
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let serial: [u8; 16] = rand::random();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial[..]));
        let now = now.replace_nanosecond(0).unwrap_or(now);
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + self.validity.server;
        let cert = params.signed_by(&leaf_key, &issuer).map_err(bad)?;
        let cert_pem = cert.pem();
        let mut chain_pem = cert_pem.clone();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&ca_pem);
        Ok(ServerCert {
            chain_pem,
            cert_pem,
            cert_der: cert.der().to_vec(),
            key_pem: PrivateKeyPem::new(leaf_key.serialize_pem()),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// Where the active CA certificate is (the file a client trusts).
    pub fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Every CA a user should have registered: the active one, a pending next one, and the previous one after an
    /// activation.
    pub fn summaries(&self) -> Vec<CaSummary> {
        ["ca", "ca-next", "ca-previous"]
            .into_iter()
            .filter_map(|role| {
                let pem = fs::read_to_string(self.path(&format!("{role}.pem"))).ok()?;
                let der = pem_to_der(&pem)?;
                Some(CaSummary {
                    role: match role {
                        "ca" => "active",
                        "ca-next" => "pending",
                        _ => "previous",
                    },
                    fingerprint: airlock_pki::fingerprint_sha256_hex(&der),
                    not_after: not_after_of(&der).unwrap_or_default(),
                    pem,
                })
            })
            .collect()
    }
}

/// The DER of the first certificate in a PEM text.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (block.label == "CERTIFICATE").then_some(block.contents)
}

fn not_after_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let t = cert.validity().not_after.to_datetime();
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + Duration::days(days)
    }

    async fn file_keystore(dir: &Path) -> Keystore {
        Keystore::File(
            airlock_keystore::FileStore::open(&dir.join("secrets"))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn ca_is_created_once_and_server_cert_reused_until_renewal_window() {
        let dir = tempfile::tempdir().unwrap();
        let ks = file_keystore(dir.path()).await;
        let store = PkiStore::new(
            &dir.path().join("pki"),
            "Abc.Tunnel.Example.",
            &ks,
            Validity::default(),
        )
        .unwrap();
        assert_eq!(store.domain(), "abc.tunnel.example");
        let ca1 = store.ensure_ca(at(0)).await.unwrap();
        let ca2 = store.ensure_ca(at(1)).await.unwrap();
        assert_eq!(ca1.cert().der, ca2.cert().der, "the CA must persist");
        let s1 = store.server_cert(at(0)).await.unwrap();
        let s2 = store.server_cert(at(59)).await.unwrap();
        assert_eq!(s1.cert_der, s2.cert_der, "reused while > 30 days remain");
        let s3 = store.server_cert(at(61)).await.unwrap();
        assert_ne!(s1.cert_der, s3.cert_der, "renewed inside the 30-day window");
        // Nothing secret is written next to the certificates.
        for entry in fs::read_dir(dir.path().join("pki/abc.tunnel.example")).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains("PRIVATE KEY"));
        }
    }

    #[tokio::test]
    async fn rotation_is_two_phase() {
        let dir = tempfile::tempdir().unwrap();
        let ks = file_keystore(dir.path()).await;
        let store = PkiStore::new(
            &dir.path().join("pki"),
            "t.example",
            &ks,
            Validity::default(),
        )
        .unwrap();
        let old = store.ensure_ca(at(0)).await.unwrap().cert().clone();
        let before = store.server_cert(at(0)).await.unwrap();
        let next = store.rotate(at(1)).await.unwrap();
        assert_ne!(next.der, old.der);
        // Pending: still signing with the old CA; rotate again returns the same pending CA.
        assert_eq!(store.rotate(at(2)).await.unwrap().der, next.der);
        assert_eq!(
            store.server_cert(at(2)).await.unwrap().cert_der,
            before.cert_der
        );
        let roles: Vec<_> = store.summaries().iter().map(|s| s.role).collect();
        assert_eq!(roles, ["active", "pending"]);
        let (active, server) = store.activate(at(3)).await.unwrap();
        assert_eq!(active.der, next.der);
        assert!(server.chain_pem.contains(next.pem.trim()));
        assert_eq!(store.ensure_ca(at(3)).await.unwrap().cert().der, next.der);
        let summaries = store.summaries();
        let roles: Vec<_> = summaries.iter().map(|s| s.role).collect();
        assert_eq!(roles, ["active", "previous"]);
        assert_eq!(summaries[1].fingerprint, old.fingerprint_sha256_hex());
        assert!(
            store.activate(at(4)).await.is_err(),
            "nothing pending any more"
        );
    }
}
