//! Large directories as a hash-array-mapped trie (HAMT), so that changing one entry of a
//! directory of n entries rewrites O(log n) bytes, not O(n).
//!
//! The rules:
//!
//! - A directory with at most [`FLAT_MAX`] = 256 entries is stored exactly as before: one
//!   flat tree object, canonical JSON `{"entries":{...}}` ([`Tree`](super::Tree)). Every
//!   tree written before this layout keeps its id and bytes.
//! - A directory with more entries is stored as a *bucket node*: canonical JSON
//!   `{"level":L,"buckets":{"<hex nibble>":{"tree":"<id>","count":N},...}}` with only the
//!   non-empty buckets, keys `"0"`..`"f"` in that order, where `count` (at least 1) is the
//!   number of directory entries below that child. Canonical means byte for byte: compact,
//!   these fields in this order, nothing else. It is named like a flat tree:
//!   `object_id("tree", bytes)`.
//! - An entry named `name` goes to the bucket given by nibble L of `sha256(name)` (nibble 0
//!   is the high 4 bits of byte 0, nibble 1 the low 4 bits of byte 0, and so on).
//! - Each child of a level-L node is, by the same rule applied to the entries it holds, a
//!   flat tree (at most 256 entries) or a bucket node of level L+1. The top node of a
//!   directory has level 0.
//! - The directory's id (the `hash` of its entry in the parent, and a commit's `tree`) is
//!   the id of its top node.
//!
//! So the layout depends only on the set of entries: the same directory content always has
//! the same id however it was built, and deleting entries collapses a node back into a flat
//! tree when its subtree falls to 256 entries or fewer.
//!
//! Decoding checks a node against the place it is found at: a bucket node's level is its
//! depth and its total count is over 256; the count a parent gives a child is the number of
//! entries the child holds (a flat tree for counts up to 256, a bucket node above); every
//! entry of a flat tree under the bucket path P hashes into P; entry names are checked as in
//! any tree. A node that breaks a rule is
//! [`StoreError::Corrupt`](super::StoreError::Corrupt).
//! A flat top-level tree of more than 256 entries (written before this layout) still reads;
//! the next commit that changes it stores it in this layout.
//!
//! Code: `hamt/node.rs` (the node encodings and their checks), `hamt/read.rs` (loading
//! nodes, looking up one entry, assembling a whole directory), `hamt/edit.rs` (the editable
//! view of a directory a commit changes) and `hamt/edit_node.rs` (its nodes, built
//! canonically and written back).

mod edit;
mod edit_node;
mod node;
mod read;
#[cfg(test)]
mod tests;

pub(crate) use edit::DirView;
pub(crate) use node::Node;

use sha2::{Digest, Sha256};

/// Most entries a directory (or a subtree of a bucket node) stored as one flat tree holds.
pub const FLAT_MAX: usize = 256;

/// Encoded tree objects to store, as `(id, bytes)`.
pub(crate) type Objects = Vec<(String, Vec<u8>)>;

/// Nibbles of a SHA-256: the deepest a node can be is level `NIBBLES - 1`.
const NIBBLES: usize = 64;

/// The SHA-256 of an entry name, which places it in the trie.
pub(crate) fn name_hash(name: &str) -> [u8; 32] {
    Sha256::digest(name.as_bytes()).into()
}

/// Nibble `level` of `hash`: the bucket an entry goes to in a node of that level.
pub(crate) fn nibble(hash: &[u8; 32], level: usize) -> u8 {
    let byte = hash[level / 2];
    if level.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// The bucket of the entry `name` in a node of level `level`.
pub fn bucket(name: &str, level: usize) -> u8 {
    nibble(&name_hash(name), level)
}

/// Where a node is found: the bucket nibbles from the top node of its directory down to it,
/// and the entry count its parent gives it (`None` for the top node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) path: Vec<u8>,
    pub(crate) count: Option<u64>,
}

impl Place {
    /// The top node of a directory.
    pub(crate) fn top() -> Self {
        Place::default()
    }

    /// The child in bucket `nibble` of the node at `self`, said to hold `count` entries.
    pub(crate) fn child(&self, nibble: u8, count: u64) -> Self {
        let mut path = self.path.clone();
        path.push(nibble);
        Place {
            path,
            count: Some(count),
        }
    }

    /// The place of the node at depth `depth` on the way to an entry of hash `hash`.
    pub(crate) fn on_path(hash: &[u8; 32], depth: usize, count: u64) -> Self {
        Place {
            path: (0..depth).map(|level| nibble(hash, level)).collect(),
            count: Some(count),
        }
    }
}
