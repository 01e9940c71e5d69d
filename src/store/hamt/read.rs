//! Reading directories: one node (cached), one entry (only the nodes on its way) or the
//! whole directory (every leaf, assembled and cached).

use std::sync::Arc;

use super::node::Node;
use super::{name_hash, nibble, Place};
use crate::base::paths::validate_object_id;
use crate::store::objects::{Tree, TreeEntry};
use crate::store::{object_path, Result, Store, StoreError};

impl Store {
    /// Loads a tree object of either kind through the node cache and checks it against the
    /// place it is found at.
    pub(crate) async fn load_node(&self, repo: &str, id: &str, place: &Place) -> Result<Arc<Node>> {
        let node = self.read_node(repo, id).await?;
        node.check_place(id, place)?;
        Ok(node)
    }

    /// Loads a tree object of either kind through the node cache, wherever it stands.
    pub(crate) async fn read_node(&self, repo: &str, id: &str) -> Result<Arc<Node>> {
        let key = (repo.to_string(), id.to_string());
        if let Some(node) = self.nodes.lock().expect("node cache lock").get(&key) {
            return Ok(node);
        }
        validate_object_id(id)?;
        let bytes = self
            .backend
            .get_opt(&object_path(repo, id))
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                id: id.to_string(),
                reason: "missing tree".into(),
            })?;
        let node = Arc::new(Node::decode(id, &bytes)?);
        self.nodes
            .lock()
            .expect("node cache lock")
            .put(key, node.clone());
        Ok(node)
    }

    /// Puts tree objects a commit is about to store into the node cache, so the next commit
    /// of the branch finds the directories it changed without reading them back.
    pub(crate) fn remember_trees(&self, repo: &str, trees: &[(String, Vec<u8>)]) {
        let decoded: Vec<_> = trees
            .iter()
            .filter_map(|(id, bytes)| Some((id.clone(), Arc::new(Node::decode(id, bytes).ok()?))))
            .collect();
        let mut cache = self.nodes.lock().expect("node cache lock");
        for (id, node) in decoded {
            cache.put((repo.to_string(), id), node);
        }
    }

    /// The entry `name` of the directory `dir`, reading only the nodes on its way.
    pub(crate) async fn dir_entry(
        &self,
        repo: &str,
        dir: &str,
        name: &str,
    ) -> Result<Option<TreeEntry>> {
        let hash = name_hash(name);
        let mut id = dir.to_string();
        let mut place = Place::top();
        loop {
            let node = self.load_node(repo, &id, &place).await?;
            let buckets = match &*node {
                Node::Leaf(leaf) => return Ok(leaf.tree.entries.get(name).cloned()),
                Node::Buckets(b) => b,
            };
            let n = nibble(&hash, buckets.level);
            let Some(child) = buckets.children.get(&n) else {
                return Ok(None);
            };
            place = place.child(n, child.count);
            id = child.tree.clone();
        }
    }

    /// The number of entries of the directory `dir` (its top node says).
    pub(crate) async fn dir_len(&self, repo: &str, dir: &str) -> Result<u64> {
        Ok(self.load_node(repo, dir, &Place::top()).await?.count())
    }

    /// The whole directory `dir`: a flat tree as it is, a bucket node with the entries of
    /// all its leaves (cached, as a directory).
    pub(crate) async fn assemble_dir(&self, repo: &str, dir: &str) -> Result<Arc<Tree>> {
        let top = self.load_node(repo, dir, &Place::top()).await?;
        if let Node::Leaf(leaf) = &*top {
            return Ok(leaf.tree.clone());
        }
        let key = (repo.to_string(), dir.to_string());
        if let Some(tree) = self.trees.lock().expect("tree cache lock").get(&key) {
            return Ok(tree);
        }
        let mut tree = Tree::default();
        let mut pending = vec![(dir.to_string(), Place::top())];
        while let Some((id, place)) = pending.pop() {
            match &*self.load_node(repo, &id, &place).await? {
                Node::Leaf(leaf) => tree.entries.extend(
                    leaf.tree
                        .entries
                        .iter()
                        .map(|(name, e)| (name.clone(), e.clone())),
                ),
                Node::Buckets(b) => pending.extend(
                    b.children
                        .iter()
                        .map(|(n, child)| (child.tree.clone(), place.child(*n, child.count))),
                ),
            }
        }
        let tree = Arc::new(tree);
        self.trees
            .lock()
            .expect("tree cache lock")
            .put(key, tree.clone());
        Ok(tree)
    }
}
