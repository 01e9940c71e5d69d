//! Object encodings and ids.
//!
//! A blob id is the SHA-256 of `"blob " + len + "\0" + content`, the id `git hash-object`
//! gives in a `--object-format=sha256` repository. Trees and commits are canonical JSON,
//! named the same way with the `tree` and `commit` headers.

use std::collections::BTreeMap;

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Result, StoreError};
use crate::api::EntryType;

/// Git mode of a regular file.
pub const MODE_FILE: u32 = 0o100644;
/// Git mode of an executable file.
pub const MODE_EXECUTABLE: u32 = 0o100755;
/// Git mode of a directory.
pub const MODE_DIR: u32 = 0o040000;
/// Git mode of a symbolic link.
pub const MODE_SYMLINK: u32 = 0o120000;

/// Incremental hasher of a blob whose length is known up front: the SHA-256 id and the MD5.
pub struct BlobHasher {
    sha: Sha256,
    md5: Md5,
    expected_len: u64,
    seen: u64,
}

impl BlobHasher {
    /// Starts hashing a blob of `len` bytes.
    pub fn new(len: u64) -> Self {
        let mut sha = Sha256::new();
        sha.update(format!("blob {len}\0").as_bytes());
        BlobHasher {
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
    pub fn finish(self) -> Result<(String, String)> {
        if self.seen != self.expected_len {
            return Err(StoreError::InvalidInput(format!(
                "blob length {} differs from the announced {}",
                self.seen, self.expected_len
            )));
        }
        Ok((
            hex::encode(self.sha.finalize()),
            hex::encode(self.md5.finalize()),
        ))
    }
}

/// The id of a whole in-memory blob.
pub fn blob_id(content: &[u8]) -> String {
    object_id("blob", content)
}

/// The id of an object of `kind` ("blob", "tree", "commit") with this encoding.
pub fn object_id(kind: &str, encoded: &[u8]) -> String {
    let mut sha = Sha256::new();
    sha.update(format!("{kind} {}\0", encoded.len()).as_bytes());
    sha.update(encoded);
    hex::encode(sha.finalize())
}

/// Hex MD5 of some bytes.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// One entry of a tree: a file, a symlink or a subdirectory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeEntry {
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub hash: String,
}

/// One directory: entries by name, sorted (a `BTreeMap`, so the encoding is canonical).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, TreeEntry>,
}

impl Tree {
    /// Canonical encoding and id.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let bytes = serde_json::to_vec(self).expect("tree serializes");
        (object_id("tree", &bytes), bytes)
    }

    /// Decodes a tree and checks it against its id.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Self> {
        check_id("tree", id, bytes)?;
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| corrupt(id, e))?;
        for name in tree.entries.keys() {
            if name.is_empty()
                || name.contains('/')
                || name.contains('\0')
                || name == "."
                || name == ".."
            {
                return Err(corrupt(id, format!("bad entry name {name:?}")));
            }
        }
        Ok(tree)
    }
}

/// A commit: a root tree, its parent and a message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Commit {
    pub tree: String,
    pub parent: Option<String>,
    pub message: String,
    pub timestamp: i64,
}

impl Commit {
    /// Canonical encoding and id.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let bytes = serde_json::to_vec(self).expect("commit serializes");
        (object_id("commit", &bytes), bytes)
    }

    /// Decodes a commit and checks it against its id.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<Self> {
        check_id("commit", id, bytes)?;
        serde_json::from_slice(bytes).map_err(|e| corrupt(id, e))
    }
}

fn check_id(kind: &str, id: &str, bytes: &[u8]) -> Result<()> {
    let actual = object_id(kind, bytes);
    if actual != id {
        return Err(corrupt(id, format!("content hashes to {actual}")));
    }
    Ok(())
}

fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

/// Normalises a requested mode to the git modes the store keeps.
pub fn normalize_file_mode(mode: Option<u32>) -> (EntryType, u32) {
    match mode {
        Some(m) if m & 0o170000 == MODE_SYMLINK => (EntryType::Symlink, MODE_SYMLINK),
        Some(m) if m & 0o111 != 0 => (EntryType::File, MODE_EXECUTABLE),
        _ => (EntryType::File, MODE_FILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blob_matches_git_sha256() {
        // `git hash-object --object-format=sha256 /dev/null`
        assert_eq!(
            blob_id(b""),
            "473a0f4c3be8a93681a267e3b1e9a7dcda1185436fe141f7749120a303721813"
        );
    }

    #[test]
    fn hello_matches_git_sha256() {
        // `printf 'hello\n' | git hash-object --object-format=sha256 --stdin`
        assert_eq!(
            blob_id(b"hello\n"),
            "2cf8d83d9ee29543b34a87727421fdecb7e3f3a183d337639025de576db9ebb4"
        );
    }

    #[test]
    fn incremental_equals_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = BlobHasher::new(data.len() as u64);
        for part in data.chunks(777) {
            h.update(part);
        }
        let (id, md5) = h.finish().unwrap();
        assert_eq!(id, blob_id(&data));
        assert_eq!(md5, md5_hex(&data));
        let mut short = BlobHasher::new(5);
        short.update(b"abc");
        assert!(short.finish().is_err());
    }

    #[test]
    fn tree_round_trip_and_tamper_detection() {
        let mut tree = Tree::default();
        tree.entries.insert(
            "a".into(),
            TreeEntry {
                kind: EntryType::File,
                mode: MODE_FILE,
                size: 1,
                mtime: 2,
                hash: blob_id(b"x"),
            },
        );
        let (id, bytes) = tree.encode();
        assert_eq!(Tree::decode(&id, &bytes).unwrap(), tree);
        let mut tampered = bytes.clone();
        tampered[5] ^= 1;
        assert!(Tree::decode(&id, &tampered).is_err());
    }
}
