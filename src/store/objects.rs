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

pub(crate) fn check_id(kind: &str, id: &str, bytes: &[u8]) -> Result<()> {
    let actual = object_id(kind, bytes);
    if actual != id {
        return Err(corrupt(id, format!("content hashes to {actual}")));
    }
    Ok(())
}

pub(crate) fn corrupt(id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::manifest::blob_id;
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

    // Fuzzing of the decoders (moved from tests/hostile_input.rs, same case counts): valid
    // objects round-trip canonically; damaged or random bytes never decode into a tree with an
    // unsafe entry name, and what decodes re-encodes to itself.

    use crate::api::EntryType;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    fn fuzz_config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..ProptestConfig::default()
        }
    }

    fn entry_type() -> impl Strategy<Value = EntryType> {
        prop_oneof![
            Just(EntryType::File),
            Just(EntryType::Directory),
            Just(EntryType::Symlink)
        ]
    }

    fn tree_entry() -> impl Strategy<Value = TreeEntry> {
        (
            entry_type(),
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            "[0-9a-f]{64}",
        )
            .prop_map(|(kind, mode, size, mtime, hash)| TreeEntry {
                kind,
                mode,
                size,
                mtime,
                hash,
            })
    }

    fn valid_name() -> impl Strategy<Value = String> {
        "[^/\\x00]{1,24}".prop_filter("not a dot segment", |n| n != "." && n != "..")
    }

    fn valid_tree() -> impl Strategy<Value = Tree> {
        prop::collection::btree_map(valid_name(), tree_entry(), 0..12)
            .prop_map(|entries| Tree { entries })
    }

    fn valid_commit() -> impl Strategy<Value = Commit> {
        (
            "[0-9a-f]{64}",
            prop::option::of("[0-9a-f]{64}"),
            "\\PC{0,80}|[\\x00-\\x7f]{0,40}",
            any::<i64>(),
        )
            .prop_map(|(tree, parent, message, timestamp)| Commit {
                tree,
                parent,
                message,
                timestamp,
            })
    }

    /// Ways to damage an encoding: flip, insert, delete, truncate, duplicate.
    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
        Splice(usize, usize),
    }

    fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
        let json_byte = prop_oneof![
            Just(b'"'),
            Just(b'{'),
            Just(b'}'),
            Just(b','),
            Just(b'\\'),
            Just(b'/'),
            Just(0u8),
            Just(b'-'),
            any::<u8>()
        ];
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
                (any::<usize>(), json_byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
                any::<usize>().prop_map(Mutation::Delete),
                any::<usize>().prop_map(Mutation::Truncate),
                (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Splice(a, b)),
            ],
            1..5,
        )
    }

    fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
        for m in ms {
            let n = bytes.len().max(1);
            match *m {
                Mutation::Flip(i, b) if !bytes.is_empty() => bytes[i % n] ^= b.max(1),
                Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Mutation::Delete(i) if !bytes.is_empty() => {
                    bytes.remove(i % n);
                }
                Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
                Mutation::Splice(a, b) if !bytes.is_empty() => {
                    let (a, b) = (a % n, b % n);
                    let piece = bytes[a.min(b)..a.max(b)].to_vec();
                    let at = b.min(bytes.len());
                    bytes.splice(at..at, piece);
                }
                _ => {}
            }
        }
        bytes
    }

    fn assert_tree_names_valid(tree: &Tree) -> Result<(), TestCaseError> {
        for name in tree.entries.keys() {
            prop_assert!(
                !name.is_empty()
                    && !name.contains('/')
                    && !name.contains('\0')
                    && name != "."
                    && name != "..",
                "decoded a tree with the entry name {:?}",
                name
            );
        }
        Ok(())
    }

    fn hostile_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(""),
            Just("."),
            Just(".."),
            Just("a/b"),
            Just("/"),
            Just("a\0"),
            Just("../x"),
            Just("x/..")
        ]
        .prop_map(str::to_string)
    }

    proptest! {
        #![proptest_config(fuzz_config(800))]

        #[test]
        fn fuzz_tree_round_trip(tree in valid_tree()) {
            let (id, bytes) = tree.encode();
            let decoded = Tree::decode(&id, &bytes)
                .map_err(|e| TestCaseError::fail(format!("a valid tree does not decode: {e}")))?;
            prop_assert_eq!(&decoded, &tree);
            prop_assert_eq!(
                decoded.encode(),
                (id.clone(), bytes.clone()),
                "the encoding is canonical"
            );
            let other = object_id("tree", b"another tree");
            prop_assert!(
                matches!(Tree::decode(&other, &bytes), Err(StoreError::Corrupt { .. })),
                "decoded under the wrong id"
            );
            prop_assert!(
                Tree::decode(&id, &[bytes.as_slice(), b" "].concat()).is_err(),
                "decoded bytes that are not the id's"
            );
        }

        #[test]
        fn fuzz_commit_mutations(commit in valid_commit(), ms in mutations()) {
            let (_, bytes) = commit.encode();
            let damaged = mutate(bytes, &ms);
            let id = object_id("commit", &damaged);
            if let Ok(c) = Commit::decode(&id, &damaged) {
                let (id2, bytes2) = c.encode();
                prop_assert_eq!(Commit::decode(&id2, &bytes2).ok(), Some(c));
            }
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(1200))]

        #[test]
        fn fuzz_tree_mutations(tree in valid_tree(), ms in mutations()) {
            let (_, bytes) = tree.encode();
            let damaged = mutate(bytes, &ms);
            let id = object_id("tree", &damaged);
            if let Ok(t) = Tree::decode(&id, &damaged) {
                assert_tree_names_valid(&t)?;
                let (id2, bytes2) = t.encode();
                prop_assert_eq!(Tree::decode(&id2, &bytes2).ok(), Some(t));
            }
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(500))]

        #[test]
        fn fuzz_tree_random_bytes(bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            "\\PC{0,200}".prop_map(String::into_bytes)
        ]) {
            let id = object_id("tree", &bytes);
            if let Ok(t) = Tree::decode(&id, &bytes) {
                assert_tree_names_valid(&t)?;
            }
        }

        #[test]
        fn fuzz_commit_round_trip(commit in valid_commit()) {
            let (id, bytes) = commit.encode();
            let decoded = Commit::decode(&id, &bytes)
                .map_err(|e| TestCaseError::fail(format!("a valid commit does not decode: {e}")))?;
            prop_assert_eq!(&decoded, &commit);
            prop_assert_eq!(decoded.encode(), (id.clone(), bytes.clone()));
            prop_assert!(
                Commit::decode(&object_id("commit", b"x"), &bytes).is_err(),
                "decoded under the wrong id"
            );
            prop_assert!(
                Commit::decode(&object_id("tree", &bytes), &bytes).is_err(),
                "a commit's bytes under their tree id"
            );
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(300))]

        #[test]
        fn fuzz_tree_hostile_names(name in hostile_name(), entry in tree_entry(), tree in valid_tree()) {
            let mut tree = tree;
            tree.entries.insert(name.clone(), entry);
            let (id, bytes) = tree.encode();
            prop_assert!(
                matches!(Tree::decode(&id, &bytes), Err(StoreError::Corrupt { .. })),
                "decoded a tree with the entry name {:?}",
                name
            );
        }

        #[test]
        fn fuzz_commit_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let id = object_id("commit", &bytes);
            let _ = Commit::decode(&id, &bytes);
            let _ = Commit::decode("not an id", &bytes);
        }
    }
}
