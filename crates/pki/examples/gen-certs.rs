//! Write a CA and a server certificate for a tunnel domain into a directory, e.g. to inspect
//! them with OpenSSL:
//! `cargo run -p airlock-pki --example gen-certs -- abc.tunnels.example.com /tmp/certs`
//! Files: ca.pem, ca.key (0600), server-chain.pem, server.pem, server.key (0600).

use std::path::PathBuf;

use airlock_pki::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_SERVER_VALIDITY};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(domain), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: gen-certs <tunnel-domain> <output-dir>".into());
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let now = time::OffsetDateTime::now_utc();
    let (ca_cert, ca_key) = CertificateAuthority::generate(&domain, now, DEFAULT_CA_VALIDITY)?;
    let ca = CertificateAuthority::from_parts(&ca_cert.pem, ca_key.expose())?;
    let server = ca.issue_server(now, DEFAULT_SERVER_VALIDITY)?;
    write(&dir.join("ca.pem"), ca_cert.pem.as_bytes(), false)?;
    write(&dir.join("ca.key"), ca_key.expose().as_bytes(), true)?;
    write(
        &dir.join("server-chain.pem"),
        server.chain_pem.as_bytes(),
        false,
    )?;
    write(&dir.join("server.pem"), server.cert_pem.as_bytes(), false)?;
    write(
        &dir.join("server.key"),
        server.key_pem.expose().as_bytes(),
        true,
    )?;
    println!(
        "CA fingerprint (SHA-256): {}",
        ca_cert.fingerprint_sha256_hex()
    );
    println!("server certificate valid until {}", server.not_after);
    Ok(())
}

fn write(path: &std::path::Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    std::io::Write::write_all(&mut opts.open(path)?, bytes)
}
