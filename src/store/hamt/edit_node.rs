//! One node of the editable view of a directory ([`super::DirView`]): loaded from its
//! stored form, built canonically from a set of entries, and written back.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::node::{Bucket, Buckets, Node};
use super::{name_hash, nibble, Objects, Place, FLAT_MAX, NIBBLES};
use crate::store::objects::{Tree, TreeEntry};

/// One node of the view.
pub(super) enum EditNode {
    /// A child not read yet: its id and count, as its parent gives them.
    Stored { id: String, count: u64 },
    /// A flat tree; `id` is `None` once edited (it may then hold more than [`FLAT_MAX`]
    /// entries until written).
    Leaf { tree: Arc<Tree>, id: Option<String> },
    /// A bucket node; `id` is `None` once anything below it was edited.
    Buckets {
        children: BTreeMap<u8, EditNode>,
        count: u64,
        id: Option<String>,
    },
}

impl EditNode {
    pub(super) fn loaded(id: &str, node: &Node) -> EditNode {
        match node {
            Node::Leaf(leaf) => EditNode::Leaf {
                tree: leaf.tree.clone(),
                id: Some(id.to_string()),
            },
            Node::Buckets(b) => EditNode::Buckets {
                children: b
                    .children
                    .iter()
                    .map(|(n, child)| {
                        let stored = EditNode::Stored {
                            id: child.tree.clone(),
                            count: child.count,
                        };
                        (*n, stored)
                    })
                    .collect(),
                count: b.total,
                id: Some(id.to_string()),
            },
        }
    }

    pub(super) fn count(&self) -> u64 {
        match self {
            EditNode::Stored { count, .. } | EditNode::Buckets { count, .. } => *count,
            EditNode::Leaf { tree, .. } => tree.entries.len() as u64,
        }
    }

    /// The canonical form of `entries` in a node of `level`.
    pub(super) fn build(entries: BTreeMap<String, TreeEntry>, level: usize) -> EditNode {
        if entries.len() <= FLAT_MAX || level >= NIBBLES {
            return EditNode::Leaf {
                tree: Arc::new(Tree { entries }),
                id: None,
            };
        }
        let count = entries.len() as u64;
        let mut groups: BTreeMap<u8, BTreeMap<String, TreeEntry>> = BTreeMap::new();
        for (name, entry) in entries {
            let n = nibble(&name_hash(&name), level);
            groups.entry(n).or_default().insert(name, entry);
        }
        EditNode::Buckets {
            children: groups
                .into_iter()
                .map(|(n, group)| (n, EditNode::build(group, level + 1)))
                .collect(),
            count,
            id: None,
        }
    }

    /// The loaded child on the way to `hash` below this node of depth `depth`, if any.
    pub(super) fn step(&self, hash: &[u8; 32], depth: usize) -> Option<&EditNode> {
        match self {
            EditNode::Buckets { children, .. } => children.get(&nibble(hash, depth)),
            _ => None,
        }
    }

    /// Encodes this node and the changed ones below it (into `out`) and returns its id.
    pub(super) fn write(&mut self, depth: usize, out: &mut Objects) -> String {
        match self {
            EditNode::Stored { id, .. }
            | EditNode::Leaf { id: Some(id), .. }
            | EditNode::Buckets { id: Some(id), .. } => id.clone(),
            EditNode::Leaf { tree, id } if tree.entries.len() <= FLAT_MAX || depth >= NIBBLES => {
                let (new, bytes) = tree.encode();
                out.push((new.clone(), bytes));
                *id = Some(new.clone());
                new
            }
            EditNode::Leaf { tree, .. } => {
                let entries = std::mem::take(&mut Arc::make_mut(tree).entries);
                *self = EditNode::build(entries, depth);
                self.write(depth, out)
            }
            EditNode::Buckets {
                children,
                count,
                id,
            } => {
                // Removals collapse a bucket node as soon as it is small enough.
                debug_assert!(*count as usize > FLAT_MAX, "a small bucket node");
                children.retain(|_, child| child.count() > 0);
                let mut buckets = BTreeMap::new();
                for (n, child) in children.iter_mut() {
                    let tree = child.write(depth + 1, out);
                    let count = child.count();
                    buckets.insert(*n, Bucket { tree, count });
                }
                let (new, bytes) = Buckets::encode(depth, &buckets);
                out.push((new.clone(), bytes));
                *id = Some(new.clone());
                new
            }
        }
    }
}

/// The entries of the loaded leaves at and below `node` (at bucket path `path`), and the
/// children not loaded yet with their places.
pub(super) fn gather(
    node: &EditNode,
    path: Vec<u8>,
    entries: &mut BTreeMap<String, TreeEntry>,
    stored: &mut Vec<(String, Place)>,
) {
    match node {
        EditNode::Stored { id, count } => stored.push((
            id.clone(),
            Place {
                path,
                count: Some(*count),
            },
        )),
        EditNode::Leaf { tree, .. } => entries.extend(
            tree.entries
                .iter()
                .map(|(name, e)| (name.clone(), e.clone())),
        ),
        EditNode::Buckets { children, .. } => {
            for (n, child) in children {
                let mut below = path.clone();
                below.push(*n);
                gather(child, below, entries, stored);
            }
        }
    }
}
