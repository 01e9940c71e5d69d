//! The two kinds of tree objects a directory is made of, decoded and checked: flat trees
//! (the leaves, and every small directory) and bucket nodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{name_hash, nibble, Place, FLAT_MAX, NIBBLES};
use crate::base::ids::is_object_id;
use crate::store::objects::{check_id, corrupt, Tree};
use crate::store::Result;

/// How every bucket node's encoding starts (a flat tree's starts with `{"entries":`).
const BUCKETS_PREFIX: &[u8] = b"{\"level\":";

/// A bucket node as stored; the field order is the canonical one.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBuckets {
    level: usize,
    buckets: BTreeMap<String, Bucket>,
}

/// One child of a bucket node: its id and the number of directory entries below it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bucket {
    pub(crate) tree: String,
    pub(crate) count: u64,
}

/// A decoded bucket node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    pub(crate) level: usize,
    /// The non-empty buckets by nibble.
    pub(crate) children: BTreeMap<u8, Bucket>,
    /// The entries below this node (the sum of the children's counts).
    pub(crate) total: u64,
}

/// A decoded flat tree, with what its place is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub(crate) tree: Arc<Tree>,
    /// The name hash of the first entry (`None` when empty, or too large to be a leaf).
    first: Option<[u8; 32]>,
    /// Leading nibbles the hashes of all entries share.
    shared: usize,
}

/// A tree object of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Leaf(Leaf),
    Buckets(Buckets),
}

impl Node {
    /// Decodes a tree object of either kind and checks it against its id; the checks that
    /// need its place come in [`Node::check_place`].
    pub(crate) fn decode(id: &str, bytes: &[u8]) -> Result<Node> {
        if bytes.starts_with(BUCKETS_PREFIX) {
            return Buckets::decode(id, bytes).map(Node::Buckets);
        }
        Ok(Node::Leaf(Leaf::new(Arc::new(Tree::decode(id, bytes)?))))
    }

    /// The directory entries at and below this node.
    pub(crate) fn count(&self) -> u64 {
        match self {
            Node::Leaf(leaf) => leaf.tree.entries.len() as u64,
            Node::Buckets(b) => b.total,
        }
    }

    /// What the node weighs in a cache bounded by entries.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Node::Leaf(leaf) => leaf.tree.entries.len() + 1,
            Node::Buckets(b) => b.children.len() + 1,
        }
    }

    /// Checks that the node may stand at `place`: a top node is a flat tree or a bucket node
    /// of level 0; a child holds the count its parent says, as a flat tree up to
    /// [`FLAT_MAX`] (with every entry in its bucket path) and as a bucket node of its depth
    /// above.
    pub(crate) fn check_place(&self, id: &str, place: &Place) -> Result<()> {
        let depth = place.path.len();
        match (self, place.count) {
            (Node::Leaf(_), None) => Ok(()),
            (Node::Buckets(b), None) if b.level == 0 => Ok(()),
            (Node::Buckets(b), None) => Err(corrupt(
                id,
                format!("a directory's top node has level {}", b.level),
            )),
            (node, Some(n)) if node.count() != n => Err(corrupt(
                id,
                format!("holds {} entries, its parent says {n}", node.count()),
            )),
            (Node::Leaf(_), Some(n)) if n as usize > FLAT_MAX => Err(corrupt(
                id,
                format!("a flat tree of {n} entries under a bucket node"),
            )),
            (Node::Leaf(leaf), Some(_)) if !leaf.is_under(&place.path) => Err(corrupt(
                id,
                format!("holds entries outside its bucket path {}", hex(&place.path)),
            )),
            (Node::Leaf(_), Some(_)) => Ok(()),
            (Node::Buckets(_), Some(n)) if n as usize <= FLAT_MAX => {
                Err(corrupt(id, format!("a bucket node of only {n} entries")))
            }
            (Node::Buckets(b), Some(_)) if b.level != depth => {
                Err(corrupt(id, format!("level {} at depth {depth}", b.level)))
            }
            (Node::Buckets(_), Some(_)) => Ok(()),
        }
    }
}

impl Leaf {
    /// A flat tree, with the hash prefix its entries share.
    pub(crate) fn new(tree: Arc<Tree>) -> Self {
        let mut names = tree.entries.keys();
        let first = match names.next() {
            // A tree that large can only stand at the top, where no prefix is checked.
            Some(name) if tree.entries.len() <= FLAT_MAX => name_hash(name),
            _ => {
                return Leaf {
                    shared: if tree.entries.is_empty() { NIBBLES } else { 0 },
                    first: None,
                    tree,
                }
            }
        };
        let shared = names
            .map(|name| shared_nibbles(&first, &name_hash(name)))
            .min()
            .unwrap_or(NIBBLES);
        Leaf {
            tree,
            first: Some(first),
            shared,
        }
    }

    /// Whether every entry hashes into the bucket path `path`.
    fn is_under(&self, path: &[u8]) -> bool {
        match &self.first {
            None => self.tree.entries.is_empty(),
            Some(first) => {
                path.len() <= self.shared
                    && path
                        .iter()
                        .enumerate()
                        .all(|(level, n)| nibble(first, level) == *n)
            }
        }
    }
}

impl Buckets {
    /// Decodes a bucket node: canonical, of a possible level, with non-empty buckets named
    /// by one hex nibble, valid child ids and more than [`FLAT_MAX`] entries in all.
    fn decode(id: &str, bytes: &[u8]) -> Result<Buckets> {
        check_id("tree", id, bytes)?;
        let wire: WireBuckets = serde_json::from_slice(bytes).map_err(|e| corrupt(id, e))?;
        if serde_json::to_vec(&wire).expect("serializes") != bytes {
            return Err(corrupt(id, "a bucket node not in canonical form"));
        }
        if wire.level >= NIBBLES {
            return Err(corrupt(id, format!("level {} is too deep", wire.level)));
        }
        let mut children = BTreeMap::new();
        let mut total = 0u64;
        for (key, bucket) in wire.buckets {
            let nibble = parse_nibble(&key)
                .ok_or_else(|| corrupt(id, format!("bad bucket name {key:?}")))?;
            if bucket.count == 0 || !is_object_id(&bucket.tree) {
                return Err(corrupt(id, format!("bad bucket {key:?}")));
            }
            total = total
                .checked_add(bucket.count)
                .ok_or_else(|| corrupt(id, "the counts overflow"))?;
            children.insert(nibble, bucket);
        }
        if total as usize <= FLAT_MAX {
            return Err(corrupt(
                id,
                format!("a bucket node of only {total} entries"),
            ));
        }
        Ok(Buckets {
            level: wire.level,
            children,
            total,
        })
    }

    /// The canonical encoding and id of a bucket node of `level` over `children`
    /// (nibble, child id, count; the empty ones left out by the caller).
    pub(crate) fn encode(level: usize, children: &BTreeMap<u8, Bucket>) -> (String, Vec<u8>) {
        let wire = WireBuckets {
            level,
            buckets: children
                .iter()
                .map(|(n, b)| (format!("{n:x}"), b.clone()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&wire).expect("bucket node serializes");
        (crate::base::ids::object_id("tree", &bytes), bytes)
    }
}

/// A bucket name: one lowercase hex digit.
fn parse_nibble(key: &str) -> Option<u8> {
    match key.as_bytes() {
        [c @ b'0'..=b'9'] => Some(c - b'0'),
        [c @ b'a'..=b'f'] => Some(c - b'a' + 10),
        _ => None,
    }
}

/// How many leading nibbles two hashes share.
fn shared_nibbles(a: &[u8; 32], b: &[u8; 32]) -> usize {
    (0..NIBBLES)
        .find(|&level| nibble(a, level) != nibble(b, level))
        .unwrap_or(NIBBLES)
}

/// A bucket path as hex digits (`"-"` for the top).
fn hex(path: &[u8]) -> String {
    if path.is_empty() {
        return "-".into();
    }
    path.iter().map(|n| format!("{n:x}")).collect()
}
