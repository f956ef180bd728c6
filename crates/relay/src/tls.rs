//! TLS for the tunnel link: the relay's self-signed server certificate (persisted in the state
//! dir), a client-certificate verifier that accepts any self-signed agent key (the token binds
//! to it), and an agent-side verifier that checks the relay by SPKI pin instead of a CA.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::fsutil;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("could not generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "invalid PEM ({what}): {detail}; expected a PEM certificate chain and a PKCS#8/SEC1 private key"
    )]
    Pem { what: &'static str, detail: String },
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The `ring` crypto provider (no aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 over the DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| TlsError::X509(e.to_string()))?;
    Ok(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "certificate",
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "certificate",
                detail: "no CERTIFICATE block found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            detail: e.to_string(),
        })?;
        Ok(Self { chain, key })
    }

    /// SHA-256 of the leaf certificate's SPKI.
    pub fn spki_sha256(&self) -> Result<[u8; 32], TlsError> {
        let leaf = self.chain.first().ok_or_else(|| TlsError::Pem {
            what: "certificate",
            detail: "empty chain".into(),
        })?;
        spki_sha256(leaf)
    }

    /// A fresh self-signed P-256 identity (agent keys, tests).
    pub fn generate_self_signed(names: Vec<String>) -> Result<(Self, String, String), TlsError> {
        let ck = rcgen::generate_simple_self_signed(names)?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.signing_key.serialize_pem();
        Ok((Self::from_pem(&cert_pem, &key_pem)?, cert_pem, key_pem))
    }
}

/// Loads `tunnel-cert.pem` / `tunnel-key.pem` from `state_dir`, creating a self-signed
/// certificate for `names` on first use (key file mode 0600). Blocking: call from
/// `spawn_blocking` or before the runtime serves traffic.
pub fn load_or_create_server_identity(
    state_dir: &Path,
    names: &[String],
) -> Result<Identity, TlsError> {
    let cert_path = state_dir.join("tunnel-cert.pem");
    let key_path = state_dir.join("tunnel-key.pem");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        return Identity::from_pem(&cert, &key);
    }
    let (id, cert_pem, key_pem) = Identity::generate_self_signed(names.to_vec())?;
    fsutil::write_private(&key_path, key_pem.as_bytes()).map_err(io(&key_path))?;
    fsutil::write_private(&cert_path, cert_pem.as_bytes()).map_err(io(&cert_path))?;
    Ok(id)
}

/// Relay tunnel listener: TLS 1.3 only, client certificate required (any self-signed key; the
/// handshake signature proves possession).
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCert {
        algs: provider.signature_verification_algorithms,
    });
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(cfg)
}

/// Agent side: TLS 1.3 only, presents `identity`, verifies the relay by SPKI pin
/// (`None` accepts any relay key: only for first contact / tests, the link is then not
/// authenticated).
pub fn client_config(
    identity: &Identity,
    pin: Option<[u8; 32]>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        pin,
        algs: provider.signature_verification_algorithms,
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(cfg)
}

/// A server name for the TLS client when the relay is addressed by IP or odd names.
pub fn server_name(host: &str) -> ServerName<'static> {
    // The relay is authenticated by its SPKI pin, not by name: any syntactically valid name
    // will do, and an odd one falls back to a loopback IP name.
    ServerName::try_from(host.to_owned()).unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST).into(),
    ))
}

#[derive(Debug)]
struct AnyClientCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Identity = the key (SPKI), bound to a token after the handshake; the certificate
        // only has to parse. Possession of the key is proven by the handshake signature.
        spki_sha256(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug)]
struct PinnedServer {
    pin: Option<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = spki_sha256(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        match self.pin {
            Some(pin) if pin != spki => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
