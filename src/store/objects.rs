//! Tree and commit objects: canonical JSON, named like Git objects with the `tree` and
//! `commit` headers ([`crate::base::ids::object_id`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Result, StoreError};
use crate::api::EntryType;
use crate::base::ids::object_id;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ids::blob_id;
    use crate::base::modes::MODE_FILE;

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
