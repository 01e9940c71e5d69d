//! Object ids.
//!
//! Trees and commits are named by the SHA-256 of `"<kind> " + len + "\0" + encoding`, the
//! ids `git hash-object` gives in a `--object-format=sha256` repository. New blobs have a
//! Merkle id ([`crate::base::manifest`]); blobs of stores written before chunking keep the
//! Git-style id computed here ([`legacy_blob_id`], [`LegacyBlobHasher`]).

use md5::Md5;
use sha2::{Digest, Sha256};

/// Length of an object id in hex digits.
pub const OBJECT_ID_LEN: usize = 64;

/// A blob whose content did not have the length announced before hashing began.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob length {seen} differs from the announced {expected}")]
pub struct LengthMismatch {
    /// Bytes announced up front.
    pub expected: u64,
    /// Bytes fed.
    pub seen: u64,
}

/// Incremental hasher of a legacy (single-object) blob whose length is known up front: the
/// Git-style SHA-256 id and the MD5.
pub struct LegacyBlobHasher {
    sha: Sha256,
    md5: Md5,
    expected_len: u64,
    seen: u64,
}

impl LegacyBlobHasher {
    /// Starts hashing a blob of `len` bytes.
    pub fn new(len: u64) -> Self {
        let mut sha = Sha256::new();
        sha.update(format!("blob {len}\0").as_bytes());
        LegacyBlobHasher {
            sha,
            md5: Md5::new(),
            expected_len: len,
            seen: 0,
        }
    }

    /// Feeds the next bytes of content.
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.md5.update(data);
        self.seen += data.len() as u64;
    }

    /// Returns `(blob id, hex md5)`, or an error if the content length was not the announced one.
    pub fn finish(self) -> Result<(String, String), LengthMismatch> {
        if self.seen != self.expected_len {
            return Err(LengthMismatch {
                expected: self.expected_len,
                seen: self.seen,
            });
        }
        Ok((
            hex::encode(self.sha.finalize()),
            hex::encode(self.md5.finalize()),
        ))
    }
}

/// The Git-style id of a whole in-memory legacy blob.
pub fn legacy_blob_id(content: &[u8]) -> String {
    object_id("blob", content)
}

/// The id of an object of `kind` ("blob", "tree", "commit") with this encoding.
pub fn object_id(kind: &str, encoded: &[u8]) -> String {
    let mut sha = Sha256::new();
    sha.update(format!("{kind} {}\0", encoded.len()).as_bytes());
    sha.update(encoded);
    hex::encode(sha.finalize())
}

/// Whether `text` has the form of an object id: 64 lowercase hex digits. A ref that passes
/// is a commit id, not a branch name (branch names of that form are refused).
pub fn is_object_id(text: &str) -> bool {
    text.len() == OBJECT_ID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::checksum::md5_hex;

    #[test]
    fn empty_blob_matches_git_sha256() {
        // `git hash-object --object-format=sha256 /dev/null`
        assert_eq!(
            legacy_blob_id(b""),
            "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
        );
    }

    #[test]
    fn hello_matches_git_sha256() {
        // `printf 'hello\n' | git hash-object --object-format=sha256 --stdin`
        assert_eq!(
            legacy_blob_id(b"hello\n"),
            "2cf8d83d9ee29543b34a87727421fdecb7e3f3a183d337639025de576db9ebb4"
        );
    }

    #[test]
    fn incremental_equals_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = LegacyBlobHasher::new(data.len() as u64);
        for part in data.chunks(777) {
            h.update(part);
        }
        let (id, md5) = h.finish().unwrap();
        assert_eq!(id, legacy_blob_id(&data));
        assert_eq!(md5, md5_hex(&data));
        let mut short = LegacyBlobHasher::new(5);
        short.update(b"abc");
        assert_eq!(
            short.finish().unwrap_err(),
            LengthMismatch {
                expected: 5,
                seen: 3
            }
        );
    }

    #[test]
    fn object_ids_are_64_lowercase_hex_digits() {
        assert!(is_object_id(&legacy_blob_id(b"x")));
        assert!(!is_object_id(&legacy_blob_id(b"x").to_uppercase()));
        assert!(!is_object_id("main"));
        assert!(!is_object_id(&"a".repeat(63)));
    }
}
