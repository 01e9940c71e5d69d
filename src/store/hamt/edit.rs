//! The editable view of one directory in a commit. Only the nodes on the way to the entries
//! read or changed are loaded; writing encodes only the changed ones, so one change to a
//! directory of n entries costs O(log n) bytes and CPU, not O(n).
//!
//! The view keeps the layout canonical (see [`super`]): a leaf that grows over
//! [`FLAT_MAX`] is split when written, and a bucket node whose entries fall to [`FLAT_MAX`] or
//! fewer is collapsed into one flat tree at once (that loads its leaves, at most
//! [`FLAT_MAX`] entries).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::edit_node::{gather, EditNode};
use super::node::Node;
use super::{name_hash, nibble, Objects, Place, FLAT_MAX};
use crate::store::objects::{Tree, TreeEntry};
use crate::store::{Result, Store, StoreError};

/// A directory being edited.
pub(crate) struct DirView {
    /// Never [`EditNode::Stored`].
    top: EditNode,
}

impl DirView {
    /// A new, empty directory.
    pub(crate) fn new() -> Self {
        DirView::from_tree(Tree::default())
    }

    /// A directory of the entries of `tree`, not stored yet.
    pub(crate) fn from_tree(tree: Tree) -> Self {
        DirView {
            top: EditNode::Leaf {
                tree: Arc::new(tree),
                id: None,
            },
        }
    }

    /// The stored directory `id` (only its top node is read).
    pub(crate) async fn load(store: &Store, repo: &str, id: &str) -> Result<Self> {
        let node = store.load_node(repo, id, &Place::top()).await?;
        Ok(DirView {
            top: EditNode::loaded(id, &node),
        })
    }

    /// The number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.top.count()
    }

    /// Loads the nodes on the way to the entry of name hash `hash`.
    async fn load_path(&mut self, store: &Store, repo: &str, hash: &[u8; 32]) -> Result<()> {
        let mut node = &mut self.top;
        let mut depth = 0;
        loop {
            if let EditNode::Stored { id, count } = node {
                let place = Place::on_path(hash, depth, *count);
                let id = id.clone();
                let loaded = store.load_node(repo, &id, &place).await?;
                *node = EditNode::loaded(&id, &loaded);
            }
            match node {
                EditNode::Buckets { children, .. } => {
                    match children.get_mut(&nibble(hash, depth)) {
                        Some(child) => {
                            node = child;
                            depth += 1;
                        }
                        None => return Ok(()),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The entry `name` of a loaded path.
    fn find(&self, name: &str, hash: &[u8; 32]) -> Option<&TreeEntry> {
        let mut node = &self.top;
        let mut depth = 0;
        loop {
            match node {
                EditNode::Leaf { tree, .. } => return tree.entries.get(name),
                EditNode::Stored { .. } => return None,
                EditNode::Buckets { .. } => node = node.step(hash, depth)?,
            }
            depth += 1;
        }
    }

    /// The entry `name`, if there is one.
    pub(crate) async fn get(
        &mut self,
        store: &Store,
        repo: &str,
        name: &str,
    ) -> Result<Option<TreeEntry>> {
        let hash = name_hash(name);
        self.load_path(store, repo, &hash).await?;
        Ok(self.find(name, &hash).cloned())
    }

    /// The leaf of a loaded path to `hash`, created if missing, with every node on the way
    /// marked changed and `added` (0 or 1) more entries counted.
    fn leaf_mut(&mut self, hash: &[u8; 32], added: u64) -> &mut Tree {
        let mut node = &mut self.top;
        let mut depth = 0;
        loop {
            match node {
                EditNode::Leaf { tree, id } => {
                    *id = None;
                    return Arc::make_mut(tree);
                }
                EditNode::Stored { .. } => unreachable!("an edit of a path not loaded"),
                EditNode::Buckets {
                    children,
                    count,
                    id,
                } => {
                    *id = None;
                    *count += added;
                    node = children
                        .entry(nibble(hash, depth))
                        .or_insert_with(|| EditNode::Leaf {
                            tree: Arc::new(Tree::default()),
                            id: None,
                        });
                    depth += 1;
                }
            }
        }
    }

    /// Puts `entry` under `name`, replacing any entry of that name.
    pub(crate) async fn insert(
        &mut self,
        store: &Store,
        repo: &str,
        name: &str,
        entry: TreeEntry,
    ) -> Result<()> {
        let hash = name_hash(name);
        self.load_path(store, repo, &hash).await?;
        let added = u64::from(self.find(name, &hash).is_none());
        self.leaf_mut(&hash, added)
            .entries
            .insert(name.to_string(), entry);
        Ok(())
    }

    /// Changes the entry `name` of a loaded path in place (after [`DirView::get`] found it);
    /// `false` if it is not there.
    pub(crate) fn update_loaded(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut TreeEntry),
    ) -> bool {
        let hash = name_hash(name);
        if self.find(name, &hash).is_none() {
            return false;
        }
        match self.leaf_mut(&hash, 0).entries.get_mut(name) {
            Some(entry) => {
                change(entry);
                true
            }
            None => false,
        }
    }

    /// Removes the entry `name` and returns it, collapsing a bucket node that then holds
    /// [`FLAT_MAX`] entries or fewer.
    pub(crate) async fn remove(
        &mut self,
        store: &Store,
        repo: &str,
        name: &str,
    ) -> Result<Option<TreeEntry>> {
        let hash = name_hash(name);
        self.load_path(store, repo, &hash).await?;
        if self.find(name, &hash).is_none() {
            return Ok(None);
        }
        let removed = self.leaf_mut(&hash, 0).entries.remove(name);
        self.uncount(&hash);
        self.collapse(store, repo, &hash).await?;
        Ok(removed)
    }

    /// Counts one entry less on the bucket nodes on the way to `hash`.
    fn uncount(&mut self, hash: &[u8; 32]) {
        let mut node = &mut self.top;
        let mut depth = 0;
        while let EditNode::Buckets {
            children, count, ..
        } = node
        {
            *count -= 1;
            match children.get_mut(&nibble(hash, depth)) {
                Some(child) => node = child,
                None => return,
            }
            depth += 1;
        }
    }

    /// Turns the highest bucket node on the way to `hash` that holds [`FLAT_MAX`] entries or
    /// fewer into one flat tree.
    async fn collapse(&mut self, store: &Store, repo: &str, hash: &[u8; 32]) -> Result<()> {
        let mut depth = 0;
        let mut node = &self.top;
        loop {
            match node {
                EditNode::Buckets { count, .. } if *count as usize <= FLAT_MAX => break,
                EditNode::Buckets { .. } => match node.step(hash, depth) {
                    Some(child) => node = child,
                    None => return Ok(()),
                },
                _ => return Ok(()),
            }
            depth += 1;
        }
        let mut entries = BTreeMap::new();
        let mut stored = Vec::new();
        let path = (0..depth).map(|level| nibble(hash, level)).collect();
        gather(node, path, &mut entries, &mut stored);
        for (id, place) in stored {
            match &*store.load_node(repo, &id, &place).await? {
                Node::Leaf(leaf) => entries.extend(
                    leaf.tree
                        .entries
                        .iter()
                        .map(|(name, e)| (name.clone(), e.clone())),
                ),
                // A child of at most FLAT_MAX entries is a leaf (load_node checked it).
                Node::Buckets(_) => {
                    return Err(StoreError::Corrupt {
                        id,
                        reason: "a small bucket node".into(),
                    })
                }
            }
        }
        *self.node_mut(hash, depth) = EditNode::Leaf {
            tree: Arc::new(Tree { entries }),
            id: None,
        };
        Ok(())
    }

    /// The loaded node at `depth` on the way to `hash`.
    fn node_mut(&mut self, hash: &[u8; 32], depth: usize) -> &mut EditNode {
        let mut node = &mut self.top;
        for level in 0..depth {
            let EditNode::Buckets { children, .. } = node else {
                unreachable!("a path not loaded");
            };
            node = children
                .get_mut(&nibble(hash, level))
                .expect("a path not loaded");
        }
        node
    }

    /// Encodes the changed nodes (into `out`, children before parents) and returns the
    /// directory's id.
    pub(crate) fn write(&mut self, out: &mut Objects) -> String {
        self.top.write(0, out)
    }
}
