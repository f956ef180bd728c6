//! Tunnel tokens: Ed25519-signed, verified offline by any relay node.
//!
//! Format: `base64url(json payload) "." base64url(signature)` (no padding). The signature is
//! Ed25519 over the ASCII of the first part. Payload: `{v, tunnel_id, name, iat, exp?, jti}`
//! (times in Unix seconds). The tunnel's domain is `<tunnel_id>.<base_domain>`.
//!
//! State dir files (all created with mode 0600 on first use; a relay is a server, keep its state
//! dir private):
//! * `operator-ed25519.pk8`: the operator's signing key (only where tokens are created).
//! * `operator-ed25519.pub`: the public key, base64url (copy it to every relay node).
//! * `revoked-tokens.txt`: revoked `jti`s, one per line (`#` comments); distribute it like
//!   config: nodes reload it when it changes.
//! * `token-bindings.json`: per node, which agent key (SPKI SHA-256) each token was first used
//!   with.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::Rng;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Current payload version.
pub const TOKEN_VERSION: u32 = 1;
/// Longest token accepted (the proto caps HELLO tokens at 4 KiB as well).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Tolerated clock skew for `iat` in the future.
const MAX_SKEW: Duration = Duration::from_secs(300);

const KEY_FILE: &str = "operator-ed25519.pk8";
const PUB_FILE: &str = "operator-ed25519.pub";
const REVOKED_FILE: &str = "revoked-tokens.txt";
const BINDINGS_FILE: &str = "token-bindings.json";

/// The signed payload of a tunnel token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub v: u32,
    pub tunnel_id: String,
    pub name: String,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    pub jti: String,
}

/// Token and key errors. The `Display` text is what a rejected agent sees.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token signature is not valid for this relay's operator key")]
    BadSignature,
    #[error("unsupported token version {0}")]
    UnsupportedVersion(u32),
    #[error("token expired")]
    Expired,
    #[error("token issued in the future (check the clocks)")]
    NotYetValid,
    #[error("token revoked")]
    Revoked,
    #[error("token is bound to another agent key; create a new token for this agent")]
    BoundToOtherKey,
    #[error("this relay node has no operator signing key (only the public key)")]
    NoSigningKey,
    #[error("invalid operator key in {path}: {detail}")]
    BadKey { path: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    }
}

struct Revocations {
    mtime: Option<SystemTime>,
    len: u64,
    set: HashSet<String>,
}

/// Creates, verifies and revokes tunnel tokens. All methods do blocking file I/O: call them
/// from `spawn_blocking` in async code.
pub struct TokenAuthority {
    signer: Option<Ed25519KeyPair>,
    public_key: [u8; 32],
    base_domain: String,
    revoked_path: PathBuf,
    revoked: RwLock<Revocations>,
    bindings_path: PathBuf,
    bindings: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("public_key", &B64.encode(self.public_key))
            .field("base_domain", &self.base_domain)
            .field("can_sign", &self.signer.is_some())
            .finish()
    }
}

impl TokenAuthority {
    /// Opens (or on first use creates) the operator key in `state_dir`.
    pub fn open(state_dir: &Path, base_domain: &str) -> Result<Self, TokenError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let key_path = state_dir.join(KEY_FILE);
        let pkcs8 = match std::fs::read(&key_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TokenError::BadKey {
                    path: key_path.display().to_string(),
                    detail: "key generation failed".into(),
                })?;
                fsutil::write_private(&key_path, doc.as_ref()).map_err(io_err(&key_path))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| TokenError::BadKey {
            path: key_path.display().to_string(),
            detail: format!("{e}; delete it to create a new key (invalidates all tokens)"),
        })?;
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(kp.public_key().as_ref());
        let pub_path = state_dir.join(PUB_FILE);
        fsutil::write_private(&pub_path, B64.encode(public_key).as_bytes())
            .map_err(io_err(&pub_path))?;
        let mut me = Self::with_public_key(public_key, state_dir, base_domain)?;
        me.signer = Some(kp);
        Ok(me)
    }

    /// A verify-only authority for a relay node that has only the operator public key.
    pub fn with_public_key(
        public_key: [u8; 32],
        state_dir: &Path,
        base_domain: &str,
    ) -> Result<Self, TokenError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let bindings_path = state_dir.join(BINDINGS_FILE);
        let bindings = match std::fs::read(&bindings_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| TokenError::Io {
                path: bindings_path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(io_err(&bindings_path)(e)),
        };
        let me = Self {
            signer: None,
            public_key,
            base_domain: base_domain.trim_end_matches('.').to_ascii_lowercase(),
            revoked_path: state_dir.join(REVOKED_FILE),
            revoked: RwLock::new(Revocations {
                mtime: None,
                len: 0,
                set: HashSet::new(),
            }),
            bindings_path,
            bindings: Mutex::new(bindings),
        };
        me.reload_revocations()?;
        Ok(me)
    }

    /// Uses another revocation file (e.g. one distributed by config management).
    pub fn set_revocation_file(&mut self, path: PathBuf) -> Result<(), TokenError> {
        self.revoked_path = path;
        if let Ok(mut r) = self.revoked.write() {
            r.mtime = None;
        }
        self.reload_revocations().map(|_| ())
    }

    /// The operator public key (give it to other relay nodes).
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The base domain tunnels live under.
    pub fn base_domain(&self) -> &str {
        &self.base_domain
    }

    /// `<tunnel_id>.<base_domain>`.
    pub fn tunnel_domain(&self, tunnel_id: &str) -> String {
        format!("{tunnel_id}.{}", self.base_domain)
    }

    /// Creates a token for a new tunnel (random `tunnel_id`) named `name`, valid for `ttl`
    /// (`None` = until revoked).
    pub fn create(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(String, TokenClaims), TokenError> {
        self.create_at(name, None, ttl, SystemTime::now())
    }

    /// Like [`create`](Self::create) with an explicit issue time and optionally an existing
    /// `tunnel_id` (a second token for the same tunnel).
    pub fn create_at(
        &self,
        name: &str,
        tunnel_id: Option<&str>,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<(String, TokenClaims), TokenError> {
        let signer = self.signer.as_ref().ok_or(TokenError::NoSigningKey)?;
        let iat = unix(now);
        let tunnel_id = match tunnel_id {
            Some(t) if is_dns_label(t) => t.to_owned(),
            Some(_) => {
                return Err(TokenError::Malformed(
                    "tunnel_id must be a lowercase DNS label",
                ));
            }
            None => random_tunnel_id(),
        };
        let claims = TokenClaims {
            v: TOKEN_VERSION,
            tunnel_id,
            name: name.to_owned(),
            iat,
            exp: ttl.map(|t| iat.saturating_add(t.as_secs())),
            jti: hex::encode(rand::rng().random::<[u8; 16]>()),
        };
        let json = serde_json::to_vec(&claims)
            .map_err(|_| TokenError::Malformed("payload does not serialise"))?;
        let payload = B64.encode(json);
        let sig = signer.sign(payload.as_bytes());
        let token = format!("{payload}.{}", B64.encode(sig.as_ref()));
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(
                "token longer than 4 KiB (name too long)",
            ));
        }
        Ok((token, claims))
    }

    /// Checks signature, version, expiry and revocation (offline: no shared state).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (payload, sig) = token
            .trim()
            .split_once('.')
            .ok_or(TokenError::Malformed("expected <payload>.<signature>"))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        signature::UnparsedPublicKey::new(&signature::ED25519, self.public_key)
            .verify(payload.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: TokenClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("payload JSON"))?;
        if claims.v != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(claims.v));
        }
        if !is_dns_label(&claims.tunnel_id) {
            return Err(TokenError::Malformed("tunnel_id"));
        }
        let now_s = unix(now);
        if claims.iat > now_s.saturating_add(MAX_SKEW.as_secs()) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(exp) = claims.exp
            && now_s >= exp
        {
            return Err(TokenError::Expired);
        }
        let revoked = self
            .revoked
            .read()
            .map(|r| r.set.contains(&claims.jti))
            .unwrap_or(true);
        if revoked {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Binds the token to the agent key on first use; refuses another key later. Persisted in
    /// this node's state dir.
    pub fn bind(&self, claims: &TokenClaims, spki_sha256: &[u8; 32]) -> Result<(), TokenError> {
        let key = hex::encode(spki_sha256);
        let mut b = self
            .bindings
            .lock()
            .map_err(|_| TokenError::Malformed("bindings lock poisoned"))?;
        match b.get(&claims.jti) {
            Some(k) if *k == key => Ok(()),
            Some(_) => Err(TokenError::BoundToOtherKey),
            None => {
                b.insert(claims.jti.clone(), key);
                let json = serde_json::to_vec_pretty(&*b).unwrap_or_default();
                fsutil::write_private(&self.bindings_path, &json)
                    .map_err(io_err(&self.bindings_path))
            }
        }
    }

    /// `verify` then `bind`.
    pub fn verify_and_bind(
        &self,
        token: &str,
        spki_sha256: &[u8; 32],
        now: SystemTime,
    ) -> Result<TokenClaims, TokenError> {
        // Pick up a revocation file that changed since the last look.
        let _ = self.reload_revocations();
        let claims = self.verify(token, now)?;
        self.bind(&claims, spki_sha256)?;
        Ok(claims)
    }

    /// Whether `jti` is in the currently loaded revocation list.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked
            .read()
            .map(|r| r.set.contains(jti))
            .unwrap_or(true)
    }

    /// Adds `jti` to the revocation file (and takes effect here at once).
    pub fn revoke(&self, jti: &str) -> Result<(), TokenError> {
        let jti = jti.trim();
        if jti.is_empty() || jti.contains(char::is_whitespace) {
            return Err(TokenError::Malformed("jti"));
        }
        let mut text = match std::fs::read_to_string(&self.revoked_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "# Revoked Airlock tunnel token ids (jti), one per line.\n".to_owned()
            }
            Err(e) => return Err(io_err(&self.revoked_path)(e)),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(jti);
        text.push('\n');
        fsutil::write_private(&self.revoked_path, text.as_bytes())
            .map_err(io_err(&self.revoked_path))?;
        if let Ok(mut r) = self.revoked.write() {
            r.set.insert(jti.to_owned());
        }
        Ok(())
    }

    /// Re-reads the revocation file if its mtime or size changed; returns whether it did.
    /// A missing file means "nothing revoked".
    pub fn reload_revocations(&self) -> Result<bool, TokenError> {
        let meta = match std::fs::metadata(&self.revoked_path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&self.revoked_path)(e)),
        };
        let (mtime, len) = match &meta {
            Some(m) => (m.modified().ok(), m.len()),
            None => (None, 0),
        };
        {
            let r = self
                .revoked
                .read()
                .map_err(|_| TokenError::Malformed("revocation lock poisoned"))?;
            if meta.is_some() && r.mtime == mtime && r.len == len {
                return Ok(false);
            }
            if meta.is_none() && r.set.is_empty() {
                return Ok(false);
            }
        }
        let set: HashSet<String> = match meta {
            Some(_) => std::fs::read_to_string(&self.revoked_path)
                .map_err(io_err(&self.revoked_path))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
            None => HashSet::new(),
        };
        let mut r = self
            .revoked
            .write()
            .map_err(|_| TokenError::Malformed("revocation lock poisoned"))?;
        r.mtime = mtime;
        r.len = len;
        r.set = set;
        Ok(true)
    }
}

/// Parses a base64url operator public key (the content of `operator-ed25519.pub`).
pub fn parse_public_key(s: &str) -> Result<[u8; 32], TokenError> {
    let b = B64
        .decode(s.trim())
        .map_err(|_| TokenError::Malformed("public key is not base64url"))?;
    b.try_into()
        .map_err(|_| TokenError::Malformed("public key must be 32 bytes"))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_tunnel_id() -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(16);
    s.push(ALPHA[rng.random_range(0..ALPHA.len())] as char);
    for _ in 0..15 {
        s.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
    }
    s
}

/// A lowercase DNS label: 1..=63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke_bind() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::open(dir.path(), "relay.test").unwrap();
        let (tok, claims) = auth.create("laptop", None).unwrap();
        assert!(is_dns_label(&claims.tunnel_id));
        assert_eq!(auth.verify(&tok, SystemTime::now()).unwrap(), claims);

        // Another node with only the public key verifies offline.
        let dir2 = tempfile::tempdir().unwrap();
        let node2 =
            TokenAuthority::with_public_key(auth.public_key(), dir2.path(), "relay.test").unwrap();
        assert_eq!(node2.verify(&tok, SystemTime::now()).unwrap(), claims);
        assert!(matches!(
            node2.create("x", None),
            Err(TokenError::NoSigningKey)
        ));

        // Tampering breaks the signature.
        let (p, s) = tok.split_once('.').unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&B64.decode(p).unwrap()).unwrap();
        json["tunnel_id"] = "evil".into();
        let forged = format!("{}.{s}", B64.encode(serde_json::to_vec(&json).unwrap()));
        assert!(matches!(
            auth.verify(&forged, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(
            auth.verify("garbage", SystemTime::now()),
            Err(TokenError::Malformed(_))
        ));

        // Binding: first key wins.
        auth.bind(&claims, &[1; 32]).unwrap();
        auth.bind(&claims, &[1; 32]).unwrap();
        assert!(matches!(
            auth.bind(&claims, &[2; 32]),
            Err(TokenError::BoundToOtherKey)
        ));
        // ...and survives a restart.
        let reopened = TokenAuthority::open(dir.path(), "relay.test").unwrap();
        assert!(matches!(
            reopened.bind(&claims, &[2; 32]),
            Err(TokenError::BoundToOtherKey)
        ));
        assert_eq!(reopened.public_key(), auth.public_key());

        // Revocation file written on one node, copied to another, picked up on reload.
        auth.revoke(&claims.jti).unwrap();
        assert!(matches!(
            auth.verify(&tok, SystemTime::now()),
            Err(TokenError::Revoked)
        ));
        std::fs::copy(
            dir.path().join(REVOKED_FILE),
            dir2.path().join(REVOKED_FILE),
        )
        .unwrap();
        assert!(node2.reload_revocations().unwrap());
        assert!(matches!(
            node2.verify(&tok, SystemTime::now()),
            Err(TokenError::Revoked)
        ));
    }

    #[test]
    fn expiry_and_key_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let auth = TokenAuthority::open(dir.path(), "relay.test").unwrap();
        let past = SystemTime::now() - Duration::from_secs(7200);
        let (tok, _) = auth
            .create_at("old", None, Some(Duration::from_secs(60)), past)
            .unwrap();
        assert!(matches!(
            auth.verify(&tok, SystemTime::now()),
            Err(TokenError::Expired)
        ));
        assert!(auth.verify(&tok, past + Duration::from_secs(30)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
