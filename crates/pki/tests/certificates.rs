//! Every certificate rule checked on the produced DER with x509-parser, plus an end-to-end
//! rustls (webpki, `ring` provider) handshake that trusts only the generated CA.

use airlock_pki::{
    BACKDATE, CaCert, CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_SERVER_VALIDITY,
    MAX_CA_PEM_BYTES, PkiError, RENEW_BEFORE, ServerCert, fingerprint_sha256_hex, needs_renewal,
    normalize_tunnel_domain,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS,
};

const DOMAIN: &str = "abc123.tunnels.example.com";

/// A fixed instant (2026-01-15T12:00:00Z); no wall-clock reads in these tests.
fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_768_478_400)
        .unwrap_or_else(|e| panic!("fixed timestamp: {e}"))
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).unwrap_or_else(|e| panic!("parse DER: {e}"));
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

fn ext_critical(cert: &X509Certificate<'_>, oid: &x509_parser::der_parser::oid::Oid<'_>) -> bool {
    cert.extensions()
        .iter()
        .find(|e| &e.oid == oid)
        .unwrap_or_else(|| panic!("extension {oid} missing"))
        .critical
}

fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn assert_ecdsa_p256_sha256(cert: &X509Certificate<'_>) {
    assert_eq!(
        cert.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    assert_eq!(
        cert.tbs_certificate.signature.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .unwrap_or_else(|| panic!("EC key without a named curve"));
    assert_eq!(curve, OID_EC_P256);
}

fn new_ca() -> (CaCert, CertificateAuthority) {
    let (cert, key) = CertificateAuthority::generate(DOMAIN, now(), DEFAULT_CA_VALIDITY)
        .unwrap_or_else(|e| panic!("generate CA: {e}"));
    let ca = CertificateAuthority::from_parts(&cert.pem, key.expose())
        .unwrap_or_else(|e| panic!("load CA: {e}"));
    (cert, ca)
}

fn new_server(ca: &CertificateAuthority) -> ServerCert {
    ca.issue_server(now(), DEFAULT_SERVER_VALIDITY)
        .unwrap_or_else(|e| panic!("issue server cert: {e}"))
}

#[test]
fn ca_meets_every_rule() {
    let (ca_cert, ca) = new_ca();
    assert_eq!(ca.tunnel_domain(), DOMAIN);
    assert!(ca_cert.pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        ca_cert.pem.matches("-----BEGIN").count(),
        1,
        "single PEM block"
    );
    assert!(ca_cert.pem.len() <= MAX_CA_PEM_BYTES);
    let cert = parse(&ca_cert.der);
    assert_eq!(cert.version().0, 2, "X.509 v3");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_else(|| panic!("CA without CN"));
    assert!(cn.starts_with("Airlock tunnel CA "), "{cn}");
    // Two CAs (e.g. during a rotation) never share a subject.
    let (other, _) = new_ca();
    assert_ne!(parse(&other.der).subject(), cert.subject());

    // BasicConstraints: critical, CA:TRUE, path length 0 (no intermediates).
    let bc = cert
        .basic_constraints()
        .unwrap_or_else(|e| panic!("basicConstraints: {e}"))
        .unwrap_or_else(|| panic!("basicConstraints missing"));
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert!(ext_critical(&cert, &OID_X509_EXT_BASIC_CONSTRAINTS));

    // SubjectKeyIdentifier present and non-empty.
    let ski = ski(&cert).unwrap_or_else(|| panic!("SKI missing"));
    assert!(!ski.is_empty());

    // KeyUsage: critical keyCertSign + cRLSign.
    let ku = cert
        .key_usage()
        .unwrap_or_else(|e| panic!("keyUsage: {e}"))
        .unwrap_or_else(|| panic!("keyUsage missing"));
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign());
    assert!(ku.value.crl_sign());
    assert!(ext_critical(&cert, &OID_X509_EXT_KEY_USAGE));

    // NameConstraints: critical, permitted = exactly the tunnel domain, nothing excluded.
    let nc = cert
        .name_constraints()
        .unwrap_or_else(|e| panic!("nameConstraints: {e}"))
        .unwrap_or_else(|| panic!("nameConstraints missing"));
    assert!(nc.critical);
    assert!(ext_critical(&cert, &OID_X509_EXT_NAME_CONSTRAINTS));
    let permitted: Vec<String> = nc
        .value
        .permitted_subtrees
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|s| match &s.base {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("non-DNS permitted subtree {other:?}"),
        })
        .collect();
    assert_eq!(permitted, vec![DOMAIN.to_string()]);
    assert!(nc.value.excluded_subtrees.is_none());

    assert_ecdsa_p256_sha256(&cert);

    // Validity: now - BACKDATE .. now + 5 years.
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    assert_eq!(nb, now() - BACKDATE);
    assert_eq!(na, now() + DEFAULT_CA_VALIDITY);
    assert!(na - now() >= Duration::days(5 * 365));
    assert_eq!(ca_cert.not_after, na);
    assert_eq!(ca_cert.not_before, nb);
}

#[test]
fn server_certificate_meets_every_rule() {
    let (ca_cert, ca) = new_ca();
    let server = new_server(&ca);
    let ca_x = parse(&ca_cert.der);
    let cert = parse(&server.cert_der);

    // Signed directly by the CA: issuer = CA subject, AKI = CA SKI.
    assert_eq!(cert.issuer(), ca_x.subject());
    let ca_ski = ski(&ca_x).unwrap_or_else(|| panic!("CA SKI missing"));
    assert_eq!(aki(&cert), Some(ca_ski));

    // SAN: exactly <domain> and *.<domain>.
    let san = cert
        .subject_alternative_name()
        .unwrap_or_else(|e| panic!("SAN: {e}"))
        .unwrap_or_else(|| panic!("SAN missing"));
    let mut names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            other => panic!("non-DNS SAN {other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(names, vec![format!("*.{DOMAIN}"), DOMAIN.to_string()]);

    // EKU serverAuth.
    let eku = cert
        .extended_key_usage()
        .unwrap_or_else(|e| panic!("EKU: {e}"))
        .unwrap_or_else(|| panic!("EKU missing"));
    assert!(eku.value.server_auth);

    // Not a CA.
    let bc = cert
        .basic_constraints()
        .unwrap_or_else(|e| panic!("basicConstraints: {e}"));
    assert!(bc.is_none_or(|bc| !bc.value.ca));

    assert_ecdsa_p256_sha256(&cert);

    // 90 days from now, backdated by BACKDATE.
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    assert_eq!(nb, now() - BACKDATE);
    assert_eq!(na, now() + Duration::days(90));
    assert_eq!(server.not_after, na);
    assert_eq!(server.not_before, nb);

    // chain_pem = server cert then CA cert; key is a PKCS#8 PEM and never in Debug.
    assert!(server.chain_pem.starts_with(&server.cert_pem));
    assert!(server.chain_pem.ends_with(&ca_cert.pem));
    assert_eq!(
        server
            .chain_pem
            .matches("-----BEGIN CERTIFICATE-----")
            .count(),
        2
    );
    assert!(
        server
            .key_pem
            .expose()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(!format!("{server:?}").contains("PRIVATE KEY"));

    // Each issue uses a fresh key and serial.
    let again = new_server(&ca);
    assert_ne!(again.key_pem.expose(), server.key_pem.expose());
    assert_ne!(parse(&again.cert_der).raw_serial(), cert.raw_serial());
}

#[test]
fn server_validity_is_capped_at_ca_expiry_and_expired_ca_refuses() {
    let (cert, key) = CertificateAuthority::generate(DOMAIN, now(), Duration::days(10))
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let ca = CertificateAuthority::from_parts(&cert.pem, key.expose())
        .unwrap_or_else(|e| panic!("load: {e}"));
    let server = ca
        .issue_server(now(), DEFAULT_SERVER_VALIDITY)
        .unwrap_or_else(|e| panic!("issue: {e}"));
    assert_eq!(server.not_after, cert.not_after);
    let later = now() + Duration::days(11);
    assert!(matches!(
        ca.issue_server(later, DEFAULT_SERVER_VALIDITY),
        Err(PkiError::CaExpired { .. })
    ));
    assert!(matches!(
        ca.issue_server(now(), Duration::ZERO),
        Err(PkiError::InvalidValidity(_))
    ));
}

#[test]
fn returned_validity_matches_the_encoded_certificate_for_any_now() {
    // Sub-second and non-UTC `now` values: the certificate stores whole UTC seconds.
    let offset = time::UtcOffset::from_hms(2, 0, 0).unwrap_or_else(|e| panic!("offset: {e}"));
    let odd_now = (now() + Duration::nanoseconds(123_456_789)).to_offset(offset);
    let (cert, key) = CertificateAuthority::generate(DOMAIN, odd_now, DEFAULT_CA_VALIDITY)
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let parsed = parse(&cert.der);
    assert_eq!(cert.not_after, parsed.validity().not_after.to_datetime());
    assert_eq!(cert.not_before, parsed.validity().not_before.to_datetime());
    assert_eq!(cert.not_before, now() - BACKDATE);
    let ca = CertificateAuthority::from_parts(&cert.pem, key.expose())
        .unwrap_or_else(|e| panic!("load: {e}"));
    let server = ca
        .issue_server(odd_now, DEFAULT_SERVER_VALIDITY)
        .unwrap_or_else(|e| panic!("issue: {e}"));
    let parsed = parse(&server.cert_der);
    assert_eq!(server.not_after, parsed.validity().not_after.to_datetime());
    assert_eq!(server.not_after, now() + DEFAULT_SERVER_VALIDITY);
}

#[test]
fn fingerprint_is_lowercase_hex_sha256_of_der() {
    // Known vector: SHA-256 of the empty input.
    assert_eq!(
        fingerprint_sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let (ca_cert, _) = new_ca();
    let fp = ca_cert.fingerprint_sha256_hex();
    assert_eq!(fp.len(), 64);
    assert!(
        fp.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(fp, fingerprint_sha256_hex(&ca_cert.der));
    // The DER inside the PEM is the DER we fingerprint.
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_cert.pem.as_bytes())
        .unwrap_or_else(|e| panic!("pem: {e}"));
    assert_eq!(pem.contents, ca_cert.der);
}

#[test]
fn renewal_window() {
    let expiry = now() + Duration::days(90);
    assert!(!needs_renewal(expiry, now(), RENEW_BEFORE));
    assert!(!needs_renewal(
        expiry,
        expiry - Duration::days(31),
        RENEW_BEFORE
    ));
    assert!(needs_renewal(
        expiry,
        expiry - Duration::days(30),
        RENEW_BEFORE
    ));
    assert!(needs_renewal(
        expiry,
        expiry - Duration::days(1),
        RENEW_BEFORE
    ));
    assert!(needs_renewal(
        expiry,
        expiry + Duration::days(1),
        RENEW_BEFORE
    ));
}

#[test]
fn from_parts_rejects_wrong_inputs() {
    let (cert_a, key_a) = CertificateAuthority::generate(DOMAIN, now(), DEFAULT_CA_VALIDITY)
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let (_, key_b) = CertificateAuthority::generate(DOMAIN, now(), DEFAULT_CA_VALIDITY)
        .unwrap_or_else(|e| panic!("generate: {e}"));
    assert!(matches!(
        CertificateAuthority::from_parts(&cert_a.pem, key_b.expose()),
        Err(PkiError::KeyMismatch)
    ));
    assert!(matches!(
        CertificateAuthority::from_parts(&cert_a.pem, "not a key"),
        Err(PkiError::BadKey(_))
    ));
    assert!(matches!(
        CertificateAuthority::from_parts("garbage", key_a.expose()),
        Err(PkiError::BadCertificate(_))
    ));
    // A server certificate is not a CA.
    let ca = CertificateAuthority::from_parts(&cert_a.pem, key_a.expose())
        .unwrap_or_else(|e| panic!("load: {e}"));
    let server = new_server(&ca);
    assert!(matches!(
        CertificateAuthority::from_parts(&server.cert_pem, server.key_pem.expose()),
        Err(PkiError::NotACa(_))
    ));
    // Two certificates where one is expected.
    assert!(matches!(
        CertificateAuthority::from_parts(&server.chain_pem, key_a.expose()),
        Err(PkiError::BadCertificate(_))
    ));
    // The key PEM is never in Debug output.
    assert!(!format!("{key_a:?}").contains("PRIVATE"));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn tunnel_domain_is_normalised_and_validated() {
    assert_eq!(
        normalize_tunnel_domain(" ABC.Example.COM. ")
            .ok()
            .as_deref(),
        Some("abc.example.com")
    );
    for bad in [
        "",
        "localhost",
        "*.example.com",
        "a..b.com",
        "-a.example.com",
        "a_b.example.com",
        "10.0.0.1",
        "exa mple.com",
    ] {
        assert!(
            matches!(
                normalize_tunnel_domain(bad),
                Err(PkiError::InvalidDomain { .. })
            ),
            "{bad:?} accepted"
        );
    }
    let long = format!("{}.com", "a".repeat(64));
    assert!(normalize_tunnel_domain(&long).is_err());
    assert!(CertificateAuthority::generate("*.example.com", now(), DEFAULT_CA_VALIDITY).is_err());
}

/// rustls + webpki (`ring` provider) against the generated chain, with a fixed clock.
mod tls {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::crypto::ring::default_provider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::time_provider::TimeProvider;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    #[derive(Debug)]
    struct FixedTime(UnixTime);
    impl TimeProvider for FixedTime {
        fn current_time(&self) -> Option<UnixTime> {
            Some(self.0)
        }
    }

    fn unix(t: OffsetDateTime) -> UnixTime {
        let secs = u64::try_from(t.unix_timestamp()).unwrap_or_else(|e| panic!("time: {e}"));
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    fn roots(ca_der: &[u8]) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .unwrap_or_else(|e| panic!("add root: {e}"));
        roots
    }

    /// Full in-memory TLS handshake; returns the client's error if it rejects the server.
    fn handshake(
        ca_der: &[u8],
        chain_pem: &str,
        key_pem: &str,
        host: &str,
        at: OffsetDateTime,
    ) -> Result<(), rustls::Error> {
        let provider = Arc::new(default_provider());
        let time: Arc<dyn TimeProvider> = Arc::new(FixedTime(unix(at)));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("chain PEM: {e}"));
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("key PEM: {e}"));
        let server_cfg = ServerConfig::builder_with_details(provider.clone(), time.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let client_cfg = ClientConfig::builder_with_details(provider, time)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca_der))
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|e| panic!("server name {host}: {e}"));
        let mut client = ClientConnection::new(Arc::new(client_cfg), name)?;
        let mut server = ServerConnection::new(Arc::new(server_cfg))?;
        for _ in 0..32 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client
                    .write_tls(&mut buf)
                    .unwrap_or_else(|e| panic!("client write: {e}"));
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                server
                    .read_tls(&mut rd)
                    .unwrap_or_else(|e| panic!("server read: {e}"));
            }
            if let Err(e) = server.process_new_packets() {
                // Deliver the server's alert, then report the client's view if it has one.
                let mut alert = Vec::new();
                let _ = server.write_tls(&mut alert);
                return Err(e);
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server
                    .write_tls(&mut buf)
                    .unwrap_or_else(|e| panic!("server write: {e}"));
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                client
                    .read_tls(&mut rd)
                    .unwrap_or_else(|e| panic!("client read: {e}"));
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish in 32 rounds");
    }

    #[test]
    fn client_trusting_only_the_ca_accepts_route_under_the_domain() {
        let (ca_cert, ca) = new_ca();
        let server = new_server(&ca);
        for host in [format!("foo.{DOMAIN}"), DOMAIN.to_string()] {
            handshake(
                &ca_cert.der,
                &server.chain_pem,
                server.key_pem.expose(),
                &host,
                now(),
            )
            .unwrap_or_else(|e| panic!("handshake for {host} failed: {e}"));
        }
        // The leaf alone (no CA in the chain) verifies too: no intermediates are needed.
        handshake(
            &ca_cert.der,
            &server.cert_pem,
            server.key_pem.expose(),
            &format!("bar.{DOMAIN}"),
            now(),
        )
        .unwrap_or_else(|e| panic!("leaf-only handshake failed: {e}"));
    }

    #[test]
    fn client_rejects_other_names_expiry_and_foreign_cas() {
        let (ca_cert, ca) = new_ca();
        let server = new_server(&ca);
        let err = handshake(
            &ca_cert.der,
            &server.chain_pem,
            server.key_pem.expose(),
            "foo.other.example",
            now(),
        );
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                        | rustls::CertificateError::NotValidForName
                ))
            ),
            "{err:?}"
        );
        // Two levels below the domain is not covered by the wildcard.
        assert!(
            handshake(
                &ca_cert.der,
                &server.chain_pem,
                server.key_pem.expose(),
                &format!("a.b.{DOMAIN}"),
                now(),
            )
            .is_err()
        );
        // After expiry.
        let err = handshake(
            &ca_cert.der,
            &server.chain_pem,
            server.key_pem.expose(),
            &format!("foo.{DOMAIN}"),
            now() + Duration::days(91),
        );
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ExpiredContext { .. }
                        | rustls::CertificateError::Expired
                ))
            ),
            "{err:?}"
        );
        // A client trusting a different CA.
        let (other_ca, _) = new_ca();
        let err = handshake(
            &other_ca.der,
            &server.chain_pem,
            server.key_pem.expose(),
            &format!("foo.{DOMAIN}"),
            now(),
        );
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err:?}"
        );
    }

    /// Sign a leaf for `san` with the CA's key directly through rcgen, bypassing `issue_server`.
    fn rogue_leaf(ca_pem: &str, ca_key_pem: &str, san: &str) -> (Vec<u8>, String, String) {
        let key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap_or_else(|e| panic!("key: {e}"));
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(ca_pem, key).unwrap_or_else(|e| panic!("issuer: {e}"));
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap_or_else(|e| panic!("leaf key: {e}"));
        let mut params = rcgen::CertificateParams::new(vec![san.to_string()])
            .unwrap_or_else(|e| panic!("params: {e}"));
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::days(30);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        (cert.der().to_vec(), cert.pem(), leaf_key.serialize_pem())
    }

    /// A leaf for `foo.other.example` signed with the CA's own key is refused because of the
    /// CA's NameConstraints (not merely because of a SAN mismatch): the same leaf from an
    /// unconstrained CA is accepted.
    #[test]
    fn name_constraints_are_honoured_end_to_end() {
        let (ca_cert, ca_key) = CertificateAuthority::generate(DOMAIN, now(), DEFAULT_CA_VALIDITY)
            .unwrap_or_else(|e| panic!("generate: {e}"));
        let (_, leaf_pem, leaf_key) =
            rogue_leaf(&ca_cert.pem, ca_key.expose(), "foo.other.example");
        let err = handshake(
            &ca_cert.der,
            &leaf_pem,
            &leaf_key,
            "foo.other.example",
            now(),
        );
        let text = format!("{err:?}");
        assert!(
            matches!(err, Err(rustls::Error::InvalidCertificate(_)))
                && text.contains("NameConstraintViolation"),
            "expected a NameConstraintViolation, got {text}"
        );

        // Control: an otherwise identical CA without NameConstraints accepts that leaf.
        let ca_key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap_or_else(|e| panic!("key: {e}"));
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::days(365);
        let open_ca = params
            .self_signed(&ca_key_pair)
            .unwrap_or_else(|e| panic!("open CA: {e}"));
        let (_, leaf_pem, leaf_key) = rogue_leaf(
            &open_ca.pem(),
            &ca_key_pair.serialize_pem(),
            "foo.other.example",
        );
        handshake(
            open_ca.der(),
            &leaf_pem,
            &leaf_key,
            "foo.other.example",
            now(),
        )
        .unwrap_or_else(|e| panic!("control handshake failed: {e}"));
    }

    /// The webpki verifier rustls uses, called directly (what an Anthropic-side check does).
    #[test]
    fn webpki_verifier_accepts_the_server_cert_directly() {
        let (ca_cert, ca) = new_ca();
        let server = new_server(&ca);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(&ca_cert.der)),
            Arc::new(default_provider()),
        )
        .build()
        .unwrap_or_else(|e| panic!("verifier: {e}"));
        let leaf = CertificateDer::from(server.cert_der.clone());
        let name =
            ServerName::try_from(format!("route.{DOMAIN}")).unwrap_or_else(|e| panic!("name: {e}"));
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], unix(now()))
            .unwrap_or_else(|e| panic!("verify: {e}"));
        let other = ServerName::try_from("route.other.example".to_string())
            .unwrap_or_else(|e| panic!("name: {e}"));
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], unix(now()))
                .is_err()
        );
    }
}
