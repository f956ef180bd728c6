//! Random secrets, their hashes, and the in-memory index of live access tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::types::{Access, Millis, Rejection, Scopes};

pub(crate) type Hash = [u8; 32];

/// 32 random bytes, base64url, with a prefix (`alk_at_`, `alk_rt_`, …) so leaked tokens are recognisable.
pub(crate) fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random public id (`gr_…`, `tk_…`).
pub(crate) fn id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    format!("{prefix}{}", hex::encode(buf))
}

/// Characters of confirmation codes: digits and capitals without `0`/`O` and `1`/`I` (32 symbols, 5 bits each).
const CODE_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// The 8 symbols of a confirmation code (40 random bits).
pub(crate) fn confirmation_code() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(b & 31)]))
        .collect()
}

/// `ABCD2345` → `ABCD-2345`.
pub(crate) fn format_code(code: &str) -> String {
    let mid = code.len() / 2;
    format!("{}-{}", &code[..mid], &code[mid..])
}

/// What a person typed, compared form: dashes and whitespace dropped, upper case.
pub(crate) fn normalize_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

pub(crate) fn hash(secret: &str) -> Hash {
    Sha256::digest(secret.as_bytes()).into()
}

/// PKCE S256: `BASE64URL(SHA256(verifier))`.
pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// One live access token.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub token_id: String,
    pub grant_id: String,
    pub client_id: String,
    pub client_name: String,
    pub server_id: String,
    pub scopes: Scopes,
    pub tools: Option<Vec<String>>,
    pub expires_ms: Millis,
    pub last_used_ms: AtomicI64,
    /// Last value written to the database.
    pub flushed_ms: AtomicI64,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<Hash, Arc<AccessEntry>>,
    /// Revoked token hashes → their original expiry (so `verify` can say "revoked" until then).
    revoked: HashMap<Hash, Millis>,
}

/// Access tokens by hash.
#[derive(Debug, Default)]
pub(crate) struct AccessIndex {
    inner: RwLock<Inner>,
}

const MAX_REVOKED_REMEMBERED: usize = 10_000;

impl AccessIndex {
    pub fn insert(&self, hash: Hash, entry: AccessEntry) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.live.insert(hash, Arc::new(entry));
    }

    pub fn verify(&self, server_id: &str, token: &str, now: Millis) -> Result<Access, Rejection> {
        let h = hash(token);
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = inner.live.get(&h) else {
            return Err(if inner.revoked.contains_key(&h) {
                Rejection::Revoked
            } else {
                Rejection::Invalid
            });
        };
        if entry.server_id != server_id {
            return Err(Rejection::WrongResource);
        }
        if now >= entry.expires_ms {
            return Err(Rejection::Expired);
        }
        entry.last_used_ms.fetch_max(now, Ordering::Relaxed);
        Ok(Access {
            grant_id: entry.grant_id.clone(),
            client_id: entry.client_id.clone(),
            client_name: entry.client_name.clone(),
            scopes: entry.scopes,
            tools: entry.tools.clone(),
        })
    }

    /// Removes every token matching `pred`, remembering them as revoked. Returns their token ids.
    pub fn revoke_where(&self, pred: impl Fn(&AccessEntry) -> bool) -> Vec<String> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let hashes: Vec<Hash> = inner
            .live
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(h, _)| *h)
            .collect();
        let mut ids = Vec::with_capacity(hashes.len());
        for h in hashes {
            if let Some(e) = inner.live.remove(&h) {
                ids.push(e.token_id.clone());
                if inner.revoked.len() < MAX_REVOKED_REMEMBERED {
                    inner.revoked.insert(h, e.expires_ms);
                }
            }
        }
        ids
    }

    /// Drops expired entries (live and remembered revocations).
    pub fn sweep(&self, now: Millis) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        // Keep expired live tokens for a day so `verify` says "expired" rather than "invalid".
        let keep = now - 24 * 3600 * 1000;
        inner.live.retain(|_, e| e.expires_ms > keep);
        inner.revoked.retain(|_, exp| *exp > now);
    }

    /// `(token_id, grant_id, last_used)` of tokens used since the last flush.
    pub fn take_last_use(&self) -> Vec<(String, String, Millis)> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner
            .live
            .values()
            .filter_map(|e| {
                let used = e.last_used_ms.load(Ordering::Relaxed);
                let flushed = e.flushed_ms.swap(used, Ordering::Relaxed);
                (used > flushed).then(|| (e.token_id.clone(), e.grant_id.clone(), used))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_base64url_sha256() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mJ92IfZ1aTpORhT8KIzx8U4EA2qzL4"),
            // Computed independently: base64.urlsafe_b64encode(hashlib.sha256(v).digest()) without padding.
            "Y7SObejurz9qZtjzE9R6z0yaLjc1J_9LP7sLEV0LhWY"
        );
    }

    #[test]
    fn secrets_are_distinct_and_prefixed() {
        let a = secret("alk_at_");
        let b = secret("alk_at_");
        assert_ne!(a, b);
        assert!(a.starts_with("alk_at_"));
        assert_eq!(a.len(), "alk_at_".len() + 43);
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn confirmation_codes_are_unambiguous_and_forgiving_to_type() {
        let codes: std::collections::HashSet<String> =
            (0..200).map(|_| confirmation_code()).collect();
        assert!(codes.len() > 190, "codes repeat: {}", codes.len());
        for c in &codes {
            assert_eq!(c.len(), 8);
            assert!(
                c.bytes().all(|b| CODE_ALPHABET.contains(&b)),
                "{c} has a character outside the alphabet"
            );
            assert!(!c.contains(['0', 'O', '1', 'I']), "{c}");
        }
        // Every symbol shows up (the mask draws all 32).
        let seen: std::collections::HashSet<u8> = codes.iter().flat_map(|c| c.bytes()).collect();
        assert_eq!(seen.len(), 32);
        assert_eq!(format_code("ABCD2345"), "ABCD-2345");
        assert_eq!(normalize_code(" abcd-2345\n"), "ABCD2345");
        assert_eq!(normalize_code("ab cd 23 45"), "ABCD2345");
        assert_ne!(normalize_code("ABCD-2346"), "ABCD2345");
    }

    #[test]
    fn index_verifies_by_server_expiry_and_revocation() {
        let idx = AccessIndex::default();
        let entry = |tid: &str| AccessEntry {
            token_id: tid.into(),
            grant_id: "gr_1".into(),
            client_id: "c".into(),
            client_name: "C".into(),
            server_id: "srv_a".into(),
            scopes: Scopes::ALL,
            tools: None,
            expires_ms: 1000,
            last_used_ms: AtomicI64::new(0),
            flushed_ms: AtomicI64::new(0),
        };
        idx.insert(hash("tok"), entry("tk_1"));
        assert!(idx.verify("srv_a", "tok", 10).is_ok());
        assert_eq!(
            idx.verify("srv_b", "tok", 10),
            Err(Rejection::WrongResource)
        );
        assert_eq!(idx.verify("srv_a", "tok", 1000), Err(Rejection::Expired));
        assert_eq!(idx.verify("srv_a", "other", 10), Err(Rejection::Invalid));
        assert_eq!(
            idx.take_last_use(),
            vec![("tk_1".into(), "gr_1".into(), 10)]
        );
        assert!(idx.take_last_use().is_empty());
        assert_eq!(idx.revoke_where(|e| e.grant_id == "gr_1"), vec!["tk_1"]);
        assert_eq!(idx.verify("srv_a", "tok", 10), Err(Rejection::Revoked));
    }
}
