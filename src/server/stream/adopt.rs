//! Sessions shared by server instances on one bucket: ids signed with a key kept in the
//! bucket, adoption of a session another instance opened, and cancellation markers.
//!
//! See [`super::token`] for why the id carries the session instead of the bucket.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;

use super::range::clamp_chunk_size;
use super::session::Session;
use super::table::Sessions;
use super::token::{self, SessionToken};
use crate::server::AppState;

/// Oldest signed session id another instance still adopts.
const MAX_ADOPTED_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where the key that signs session ids lives in a shared store.
const SESSION_KEY_PATH: &str = "streams/session-key";

impl Sessions {
    /// Signs session ids with `key`, and adopts sessions opened by other instances.
    pub fn shared(mut self, key: Vec<u8>) -> Self {
        self.key = Some(key);
        self
    }

    /// Whether sessions are shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.key.is_some()
    }

    /// A fresh session id: a random nonce, signed with what the session streams when shared.
    pub(super) fn new_id(
        &self,
        repo: &str,
        hash: &str,
        blob_size: u64,
        range: &Range<u64>,
        chunk_size: u64,
        gzip: bool,
    ) -> String {
        let nonce = uuid::Uuid::new_v4().to_string();
        let Some(key) = &self.key else {
            return nonce;
        };
        SessionToken {
            nonce,
            repo: repo.to_string(),
            hash: hash.to_string(),
            blob_size,
            start: range.start,
            end: range.end,
            chunk_size,
            gzip,
            issued: crate::base::time::now_unix(),
        }
        .sign(key)
    }

    /// A session another instance opened, from its signed id.
    pub(super) fn adopt(&self, repo: &str, id: &str) -> Option<Arc<Session>> {
        let token = SessionToken::verify(id, self.key.as_deref()?)?;
        let age = crate::base::time::now_unix().saturating_sub(token.issued);
        if token.repo != repo || age as u64 > MAX_ADOPTED_AGE.as_secs() || token.start > token.end {
            return None;
        }
        let session = Arc::new(Session::new(
            id.to_string(),
            repo,
            &token.hash,
            token.blob_size,
            token.start..token.end,
            clamp_chunk_size(token.chunk_size),
            token.gzip,
            None,
        ));
        let mut live = self.live.lock().expect("sessions lock");
        let session = live.entry(id.to_string()).or_insert(session).clone();
        self.gauge.store(live.len() as i64, Ordering::Relaxed);
        Some(session)
    }
}

/// The key every instance sharing `backend` signs session ids with: the first instance to
/// start writes a random one (a create-only put), the others read it.
pub async fn shared_session_key(backend: &crate::store::Backend) -> crate::store::Result<Vec<u8>> {
    let path = object_store::path::Path::from(SESSION_KEY_PATH);
    let fresh: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|u| u.into_bytes())
        .collect();
    backend.put_if_absent(&path, Bytes::from(fresh)).await?;
    Ok(backend.get(&path).await?.to_vec())
}

/// The marker of a session cancelled on a shared store, which other instances look for.
pub(super) fn cancel_marker(id: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("streams/cancelled/{}", token::nonce_of(id)))
}

/// On a shared store, whether another instance cancelled `session` (looked up at most once
/// a second per session); if so it is cancelled here too.
pub(super) async fn cancelled_elsewhere(state: &AppState, repo: &str, session: &Session) -> bool {
    if !state.streams.is_shared() || !session.cancel_check_due() {
        return false;
    }
    match state
        .store
        .backend()
        .size(&cancel_marker(&session.id))
        .await
    {
        Ok(Some(_)) => {
            let _ = state.streams.cancel(repo, &session.id);
            true
        }
        Ok(None) => false,
        Err(e) => {
            log::warn!(
                "cannot look for the cancellation of stream {}: {e}",
                session.id
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::table;
    use super::super::table::Lookup;
    use std::time::Duration;

    #[test]
    fn instances_sharing_a_key_adopt_each_others_sessions() {
        let a = table(10, Duration::from_secs(60)).shared(b"k".to_vec());
        let b = table(10, Duration::from_secs(60)).shared(b"k".to_vec());
        let other = table(10, Duration::from_secs(60)).shared(b"not k".to_vec());
        let opened = a
            .open(None, "r", "h", 1 << 20, 100..5000, 1024, true)
            .unwrap();
        let adopted = b.get("r", &opened.id).expect("adopted from the signed id");
        assert_eq!(
            (
                adopted.range.clone(),
                adopted.chunk_size,
                adopted.gzip,
                adopted.hash.as_str()
            ),
            (100..5000, 1024, true, "h")
        );
        assert_eq!(b.len(), 1);
        assert!(matches!(
            b.get("other-repo", &opened.id),
            Err(Lookup::Unknown)
        ));
        assert!(
            matches!(other.get("r", &opened.id), Err(Lookup::Unknown)),
            "another key"
        );
        assert!(
            matches!(
                table(10, Duration::from_secs(60)).get("r", &opened.id),
                Err(Lookup::Unknown)
            ),
            "not shared"
        );
        // Cancelled here, it stays cancelled here (the marker tells the other instances).
        b.cancel("r", &opened.id).unwrap();
        assert!(matches!(b.get("r", &opened.id), Err(Lookup::Ended(p)) if p.status == "cancelled"));
        assert!(adopted.cancel_check_due());
        assert!(!adopted.cancel_check_due(), "at most once a second");
    }
}
