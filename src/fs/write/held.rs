//! Sending a chunk the repository already holds by name instead of by bytes.
//!
//! Asking costs a SHA-256 of the chunk and a round trip, and pays back only when the server
//! has the chunk: a file copied in again, rsync's rewrite of a file beside its old version,
//! a file copied from elsewhere in the repository. So a handle asks for every chunk while the
//! answers are "held", and after each "not held" skips 1, 2, 4 … up to [`MAX_SKIP`] chunks
//! before asking again: a GiB of new data is asked about for about one chunk in sixteen.

use bytes::Bytes;

use crate::base::manifest::{chunk_hash, ChunkHash, CHUNK_SIZE};
use crate::fs::error::{FsError, Result};
use crate::fs::remote::Remote;

/// The most chunks skipped between two questions.
const MAX_SKIP: u64 = 16;

/// When a write handle asks whether the server holds a chunk before sending it.
#[derive(Debug, Clone)]
pub(super) struct HeldProbe {
    /// Chunks still to send without asking.
    skip_left: u64,
    /// Chunks to skip after the next "not held".
    next_skip: u64,
}

impl Default for HeldProbe {
    fn default() -> Self {
        HeldProbe {
            skip_left: 0,
            next_skip: 1,
        }
    }
}

impl HeldProbe {
    /// Whether to ask about the next chunk.
    pub(super) fn should_ask(&mut self) -> bool {
        if self.skip_left > 0 {
            self.skip_left -= 1;
            return false;
        }
        true
    }

    /// Takes in an answer: held chunks keep the questions coming, others space them out.
    pub(super) fn answered(&mut self, held: bool) {
        if held {
            *self = HeldProbe::default();
        } else {
            self.skip_left = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        }
    }
}

/// Sends chunk `index` of an upload (whose chunk size is a multiple of [`CHUNK_SIZE`]) by
/// name if the repository holds all its store chunks, else its bytes. Says whether it was
/// held.
pub(super) async fn send_unless_held<R: Remote>(
    remote: &R,
    upload_id: &str,
    index: u64,
    data: Bytes,
) -> Result<bool> {
    let hashes = hash_store_chunks(data.clone()).await?;
    if remote.missing_chunks(&hashes).await?.is_empty() {
        match remote.reference_chunks(upload_id, index, &hashes).await {
            Ok(len) if len == data.len() as u64 => return Ok(true),
            Ok(len) => {
                return Err(FsError::Remote(format!(
                    "the server made chunk {index} {len} bytes long, not {}",
                    data.len()
                )))
            }
            // Swept in between: send the bytes after all.
            Err(FsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    remote.put_chunk(upload_id, index, data).await?;
    Ok(false)
}

/// The SHA-256 of each store chunk of `data`, on a blocking thread.
async fn hash_store_chunks(data: Bytes) -> Result<Vec<ChunkHash>> {
    tokio::task::spawn_blocking(move || data.chunks(CHUNK_SIZE as usize).map(chunk_hash).collect())
        .await
        .map_err(|e| FsError::Local(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Asks of the probe over `answers` (one per chunk; only asked chunks get an answer).
    fn asked(answers: &[bool]) -> Vec<usize> {
        let mut probe = HeldProbe::default();
        let mut asked = Vec::new();
        for (i, held) in answers.iter().enumerate() {
            if probe.should_ask() {
                asked.push(i);
                probe.answered(*held);
            }
        }
        asked
    }

    #[test]
    fn every_chunk_is_asked_about_while_the_server_holds_them() {
        assert_eq!(asked(&[true; 50]), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn new_data_is_asked_about_for_few_chunks() {
        let asked = asked(&[false; 256]);
        assert_eq!(&asked[..5], &[0, 2, 5, 10, 19]);
        assert!(asked.len() <= 256 / MAX_SKIP as usize + 5, "{asked:?}");
    }

    proptest! {
        /// Whatever the answers, the gap between two questions is at most `MAX_SKIP`
        /// chunks, and a "held" answer is followed by a question about the next chunk.
        #[test]
        fn gaps_are_bounded_and_a_hit_asks_again_at_once(
            answers in proptest::collection::vec(any::<bool>(), 1..400)
        ) {
            let asked = asked(&answers);
            prop_assert_eq!(asked[0], 0);
            for pair in asked.windows(2) {
                prop_assert!(pair[1] - pair[0] <= MAX_SKIP as usize + 1);
                if answers[pair[0]] {
                    prop_assert_eq!(pair[1], pair[0] + 1);
                }
            }
        }
    }
}
