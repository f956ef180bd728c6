//! The inner-TLS server configuration with a hot-swappable certificate.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate chain PEM holds no certificate")]
    NoCertificate,
    #[error("cannot parse the certificate chain PEM: {0}")]
    BadChain(String),
    #[error("cannot parse the private key PEM: {0}")]
    BadKey(String),
    #[error("the private key cannot sign (unsupported algorithm?): {0}")]
    Unusable(String),
}

/// Hands every new handshake the current certificate.
#[derive(Debug)]
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The inner-TLS server side. Cheap to clone; all clones see certificate replacements.
#[derive(Clone, Debug)]
pub struct InnerTls {
    current: Arc<SwappableCert>,
    config: Arc<ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadChain(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::BadKey(e.to_string()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Unusable(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

impl InnerTls {
    /// A TLS server for `chain_pem` (leaf first) and `key_pem`, offering h2 and HTTP/1.1 by ALPN.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let current = Arc::new(SwappableCert(RwLock::new(certified_key(
            chain_pem, key_pem,
        )?)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unusable(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // 0-RTT data could be replayed by whoever carries the bytes: never accept it.
        config.max_early_data_size = 0;
        config.send_half_rtt_data = false;
        Ok(Self {
            current,
            config: Arc::new(config),
        })
    }

    /// Replaces the certificate for all future handshakes; established connections are untouched.
    pub fn set_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(chain_pem, key_pem)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The DER of the leaf certificate now served.
    pub fn current_leaf_der(&self) -> Vec<u8> {
        let key = self
            .current
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        key.cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn early_data_is_never_accepted_and_alpn_offers_h2_then_http1() {
        let (chain, key) = cert();
        let tls = InnerTls::new(&chain, &key).unwrap();
        let config = tls.server_config();
        assert_eq!(
            config.max_early_data_size, 0,
            "0-RTT data could be replayed by the transport"
        );
        assert!(!config.send_half_rtt_data);
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_pem_is_a_clear_error_and_replacement_changes_the_leaf() {
        let (chain, key) = cert();
        assert!(matches!(
            InnerTls::new("", &key),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            InnerTls::new(&chain, "nope"),
            Err(TlsError::BadKey(_))
        ));
        let tls = InnerTls::new(&chain, &key).unwrap();
        let before = tls.current_leaf_der();
        let (chain2, key2) = cert();
        tls.set_certificate(&chain2, &key2).unwrap();
        assert_ne!(tls.current_leaf_der(), before);
        assert!(tls.set_certificate(&chain2, "garbage").is_err());
    }
}
