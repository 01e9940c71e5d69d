//! What one change to a large directory costs: the tree bytes a commit writes.

use std::collections::HashMap;

use super::editor::TreeEditor;
use crate::api::Change;
use crate::store::test_support::{blob, commit, delete, put, temp_store};
use crate::store::Store;

/// Most tree bytes one change to a directory of any size may write.
const ONE_CHANGE_MAX: usize = 64 << 10;

/// The tree bytes one commit of `change` on top of `root` would write.
async fn tree_bytes(
    store: &Store,
    root: &str,
    change: Change,
    sizes: &HashMap<String, u64>,
) -> usize {
    let mut editor = TreeEditor::new(store, "default", root.to_string(), 2);
    editor.apply(&change, sizes).await.unwrap();
    let (_, objects) = editor.write();
    objects.iter().map(|(_, bytes)| bytes.len()).sum()
}

/// Builds `d/big/` with `n` files in one commit and measures the tree bytes of adding,
/// changing and removing one entry there.
async fn measure(n: usize) -> [usize; 3] {
    let (_dir, store) = temp_store().await;
    let hash = blob(&store, b"x").await;
    let other = blob(&store, b"y").await;
    let changes = (0..n)
        .map(|i| put(&format!("d/big/f{i:06}"), &hash))
        .collect();
    let root = commit(&store, changes).await;
    let sizes = HashMap::from([(hash.clone(), 1), (other.clone(), 1)]);
    let added = tree_bytes(&store, &root, put("d/big/new", &hash), &sizes).await;
    let changed = tree_bytes(&store, &root, put("d/big/f000007", &other), &sizes).await;
    let removed = tree_bytes(&store, &root, delete("d/big/f000007"), &sizes).await;
    eprintln!(
        "{n} entries: tree bytes of one added entry {added}, changed {changed}, removed {removed}"
    );
    [added, changed, removed]
}

#[tokio::test]
async fn one_change_in_a_directory_of_20_000_writes_little() {
    for bytes in measure(20_000).await {
        assert!(bytes < ONE_CHANGE_MAX, "{bytes} bytes");
    }
}

#[tokio::test]
async fn one_change_in_a_directory_of_100_000_writes_little() {
    for bytes in measure(100_000).await {
        assert!(bytes < ONE_CHANGE_MAX, "{bytes} bytes");
    }
}

#[tokio::test]
async fn moves_deletes_and_expects_work_in_a_large_directory() {
    let (_dir, store) = temp_store().await;
    let hash = blob(&store, b"x").await;
    let mut changes: Vec<Change> = (0..300)
        .map(|i| put(&format!("big/f{i:03}"), &hash))
        .collect();
    changes.push(put("big/sub/deep/x", &hash));
    commit(&store, changes).await;
    let wrong = Change::Put {
        path: "big/f007".into(),
        hash: hash.clone(),
        mode: None,
        mtime: None,
        expect: Some(Some("0".repeat(64))),
    };
    let request = crate::api::CommitRequest {
        branch: None,
        message: "m".into(),
        changes: vec![wrong],
    };
    let refused = store.commit("default", &request).await;
    assert!(matches!(
        refused,
        Err(crate::store::StoreError::Conflict { .. })
    ));
    // 301 entries less the moved directory and 44 files: 256, one flat tree again.
    let mut changes = vec![
        Change::Mkdir {
            path: "big/sub/deep".into(),
        },
        put("big/sub/deep/y", &hash),
        Change::Move {
            from: "big/sub".into(),
            to: "moved".into(),
        },
    ];
    changes.extend((0..44).map(|i| delete(&format!("big/f{i:03}"))));
    let root = commit(&store, changes).await;
    let big = store
        .lookup("default", &root, "big")
        .await
        .unwrap()
        .unwrap();
    let tree = store.load_tree("default", &big.hash).await.unwrap();
    assert_eq!(tree.entries.len(), 256);
    assert_eq!(tree.encode().0, big.hash, "flat");
    assert!(tree.entries.keys().all(|n| n.as_str() >= "f044"));
    let (_, moved) = store.list_dir("default", None, "moved/deep").await.unwrap();
    let names: Vec<&str> = moved.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["x", "y"]);
    // Back over 256, and the directory's mtime follows its changes.
    let root = commit(&store, vec![put("big/new", &hash)]).await;
    let again = store
        .lookup("default", &root, "big")
        .await
        .unwrap()
        .unwrap();
    assert!(again.mtime >= big.mtime && again.hash != big.hash);
    assert_eq!(
        store
            .load_tree("default", &again.hash)
            .await
            .unwrap()
            .entries
            .len(),
        257
    );
    assert!(store
        .lookup("default", &root, "big/sub")
        .await
        .unwrap()
        .is_none());
}
