//! Stream session ids that carry their session, for servers sharing one bucket.
//!
//! Behind a load balancer, the chunk requests of one session reach several instances. Rather
//! than keep session state in the bucket (a read per chunk), the id itself says what the
//! session streams, signed with HMAC-SHA256 under a key all instances read from the bucket.
//! An instance that gets a chunk request for a session it never saw verifies the id and
//! adopts the session. Ids cannot be forged: a client cannot widen its range or name another
//! repository's blob.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signature bytes kept in the id (128 bits).
const SIGNATURE_LEN: usize = 16;

/// What a session streams, as carried in its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionToken {
    /// Unique part of the id (also names the session's cancellation marker).
    pub nonce: String,
    pub repo: String,
    pub hash: String,
    pub blob_size: u64,
    pub start: u64,
    pub end: u64,
    pub chunk_size: u64,
    pub gzip: bool,
    /// When it was issued, seconds since the Unix epoch.
    pub issued: i64,
}

impl SessionToken {
    /// The signed id: `NONCE.PAYLOAD.SIGNATURE`, URL-safe.
    pub fn sign(&self, key: &[u8]) -> String {
        let payload = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.issued,
            self.repo,
            self.hash,
            self.blob_size,
            self.start,
            self.end,
            self.chunk_size,
            self.gzip as u8
        );
        let unsigned = format!("{}.{}", self.nonce, URL_SAFE_NO_PAD.encode(payload));
        format!(
            "{unsigned}.{}",
            URL_SAFE_NO_PAD.encode(signature(key, &unsigned))
        )
    }

    /// Checks and decodes a signed id; `None` if it was not signed with `key`.
    pub fn verify(id: &str, key: &[u8]) -> Option<SessionToken> {
        let (unsigned, sig) = id.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if sig.len() != SIGNATURE_LEN {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(unsigned.as_bytes());
        mac.verify_truncated_left(&sig).ok()?;
        let (nonce, payload) = unsigned.split_once('.')?;
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let fields: Vec<&str> = payload.split('\n').collect();
        let [issued, repo, hash, blob_size, start, end, chunk_size, gzip] = fields[..] else {
            return None;
        };
        Some(SessionToken {
            nonce: nonce.to_string(),
            repo: repo.to_string(),
            hash: hash.to_string(),
            blob_size: blob_size.parse().ok()?,
            start: start.parse().ok()?,
            end: end.parse().ok()?,
            chunk_size: chunk_size.parse().ok()?,
            gzip: gzip == "1",
            issued: issued.parse().ok()?,
        })
    }
}

fn signature(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes()[..SIGNATURE_LEN].to_vec()
}

/// The nonce of a session id (the whole id when it is not signed).
pub fn nonce_of(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> SessionToken {
        SessionToken {
            nonce: "n1".into(),
            repo: "default".into(),
            hash: "ab".repeat(32),
            blob_size: 1000,
            start: 10,
            end: 900,
            chunk_size: 1024,
            gzip: true,
            issued: 1_700_000_000,
        }
    }

    #[test]
    fn a_signed_id_round_trips_and_only_under_its_key() {
        let id = token().sign(b"key one");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{id}"
        );
        assert_eq!(SessionToken::verify(&id, b"key one"), Some(token()));
        assert_eq!(SessionToken::verify(&id, b"key two"), None);
        assert_eq!(nonce_of(&id), "n1");
    }

    #[test]
    fn a_changed_payload_is_refused() {
        let id = token().sign(b"k");
        let mut wider = token();
        wider.end = 1000;
        let forged = format!(
            "{}.{}",
            wider.sign(b"other").rsplit_once('.').unwrap().0,
            id.rsplit_once('.').unwrap().1
        );
        assert_eq!(SessionToken::verify(&forged, b"k"), None);
        // A shortened signature is refused too.
        let (unsigned, sig) = id.rsplit_once('.').unwrap();
        assert_eq!(
            SessionToken::verify(&format!("{unsigned}.{}", &sig[..4]), b"k"),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_ids_never_verify_or_panic(id in "[A-Za-z0-9._-]{0,200}") {
            prop_assert!(SessionToken::verify(&id, b"k").is_none());
        }
    }
}
