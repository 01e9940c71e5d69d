//! Tests of the trie layout: the bucket function, the encodings and their checks, lookups
//! and listings, history independence, and a model of random edits.

use std::collections::BTreeMap;

use super::node::{Bucket, Buckets, Node};
use super::*;
use crate::api::EntryType;
use crate::base::modes::MODE_FILE;
use crate::store::objects::{Tree, TreeEntry};
use crate::store::test_support::{blob, commit, delete, put, temp_store};
use crate::store::{Store, StoreError};

fn entry(seed: i64) -> TreeEntry {
    TreeEntry {
        kind: EntryType::File,
        mode: MODE_FILE,
        size: 1,
        mtime: seed,
        hash: "0".repeat(64),
    }
}

fn tree_of(names: impl IntoIterator<Item = String>) -> Tree {
    Tree {
        entries: names.into_iter().map(|n| (n, entry(1))).collect(),
    }
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("f{i:05}")).collect()
}

/// The id and objects of a directory built from scratch.
fn built(tree: &Tree) -> (String, Objects) {
    let mut objects = Vec::new();
    let id = DirView::from_tree(tree.clone()).write(&mut objects);
    (id, objects)
}

#[test]
fn the_bucket_is_a_nibble_of_the_sha256_of_the_name() {
    // sha256("a") = ca978112…afee48bb
    assert_eq!(bucket("a", 0), 0xc);
    assert_eq!(bucket("a", 1), 0xa);
    assert_eq!(bucket("a", 2), 0x9);
    assert_eq!(bucket("a", 3), 0x7);
    assert_eq!(bucket("a", 63), 0xb);
}

#[test]
fn small_directories_stay_flat_and_large_ones_become_bucket_nodes() {
    let flat = tree_of(names(0..FLAT_MAX));
    let (id, objects) = built(&flat);
    assert_eq!(
        objects,
        vec![flat.encode()],
        "256 entries: the flat tree as before"
    );
    assert_eq!(id, flat.encode().0);

    let large = tree_of(names(0..1000));
    let (id, objects) = built(&large);
    let top = &objects.last().unwrap().1;
    assert!(
        top.starts_with(b"{\"level\":0,\"buckets\":{\"0\":{\"tree\":\""),
        "{}",
        String::from_utf8_lossy(top)
    );
    let mut entries = BTreeMap::new();
    for (oid, bytes) in &objects {
        match Node::decode(oid, bytes).unwrap() {
            Node::Leaf(leaf) => {
                assert!(leaf.tree.entries.len() <= FLAT_MAX);
                entries.extend(leaf.tree.entries.clone());
            }
            Node::Buckets(b) => {
                let (again, encoded) = Buckets::encode(b.level, &b.children);
                assert_eq!((&again, &encoded), (oid, bytes), "canonical");
                if *oid == id {
                    assert_eq!((b.level, b.total), (0, 1000));
                }
            }
        }
    }
    assert_eq!(entries, large.entries, "the leaves hold every entry once");
    let (again, _) = built(&tree_of(names(0..1000).into_iter().rev()));
    assert_eq!(again, id);
}

#[tokio::test]
async fn lookups_read_one_path_and_listings_are_whole_and_sorted() {
    let (_dir, store) = temp_store().await;
    let hash = blob(&store, b"x").await;
    let all = names(0..1000);
    let changes = all
        .iter()
        .map(|n| put(&format!("big/{n}"), &hash))
        .collect();
    commit(&store, changes).await;
    store.trees.lock().unwrap().lru.clear();
    store.nodes.lock().unwrap().lru.clear();
    let (_, e) = store.stat("default", None, "big/f00500").await.unwrap();
    assert_eq!(
        (e.name.as_str(), e.hash.as_str()),
        ("f00500", hash.as_str())
    );
    assert!(
        store.stat("default", None, "big/nope").await.is_err(),
        "a missing name"
    );
    assert!(store.trees.lock().unwrap().lru.is_empty(), "not assembled");
    assert!(store.nodes.lock().unwrap().lru.len() <= 8, "one path read");
    let (_, listing) = store.list_dir("default", None, "big").await.unwrap();
    let listed: Vec<String> = listing.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed, all, "every entry, sorted by name");
    assert_eq!(listing[7].path, "big/f00007");
    for name in ["f00000", "f00999", "f00123"] {
        let root = store.resolve("default", None).await.unwrap().tree;
        let found = store.lookup("default", &root, &format!("big/{name}")).await;
        assert_eq!(found.unwrap().unwrap().hash, hash);
    }
}

#[tokio::test]
async fn the_same_entries_have_the_same_id_however_they_were_committed() {
    let all = names(0..1000);
    let mut roots = Vec::new();
    for batch in [1000, 50, 40] {
        let (_dir, store) = temp_store().await;
        let hash = blob(&store, b"same").await;
        let mut order = all.clone();
        if batch == 40 {
            order.reverse();
        }
        let mut root = String::new();
        for chunk in order.chunks(batch) {
            root = commit(&store, chunk.iter().map(|n| put(n, &hash)).collect()).await;
        }
        // Down to 300 entries: still bucket nodes, as if built so.
        let gone = all[300..].iter().map(|n| delete(n)).collect();
        let at_300 = commit(&store, gone).await;
        let mut expected = store.load_tree("default", &at_300).await.unwrap();
        assert_eq!(expected.entries.len(), 300);
        assert_eq!(at_300, built(&expected).0);
        // Down to 256 in two steps: one flat tree, the one of today's layout.
        commit(&store, all[256..280].iter().map(|n| delete(n)).collect()).await;
        let flat = commit(&store, all[280..300].iter().map(|n| delete(n)).collect()).await;
        std::sync::Arc::make_mut(&mut expected)
            .entries
            .retain(|name, _| name.as_str() < "f00256");
        assert_eq!(flat, expected.encode().0);
        roots.push(root);
    }
    assert_eq!(roots[0], roots[1]);
    assert_eq!(roots[0], roots[2]);
}

/// Stores `objects` and returns what loading the directory `id` says.
async fn load(store: &Store, id: &str, objects: Objects) -> Result<usize, String> {
    store.write_objects("default", objects).await.unwrap();
    let listed = store.load_tree("default", id).await;
    let looked_up = store.dir_entry("default", id, "f00001").await;
    match (listed, looked_up) {
        (Ok(tree), Ok(_)) => Ok(tree.entries.len()),
        (Err(StoreError::Corrupt { reason, .. }), _)
        | (_, Err(StoreError::Corrupt { reason, .. })) => Err(reason),
        (Err(e), _) | (_, Err(e)) => panic!("not a corrupt object: {e}"),
    }
}

/// The children of the top node of a 1,000-entry directory, and its objects.
fn children_of_1000() -> (BTreeMap<u8, Bucket>, Objects) {
    let (id, objects) = built(&tree_of(names(0..1000)));
    let top = objects.iter().find(|(oid, _)| *oid == id).unwrap();
    match Node::decode(&id, &top.1).unwrap() {
        Node::Buckets(b) => (b.children, objects),
        Node::Leaf(_) => unreachable!(),
    }
}

#[tokio::test]
async fn damaged_nodes_are_corrupt() {
    let (_dir, store) = temp_store().await;
    let (children, objects) = children_of_1000();
    let (good, bytes) = Buckets::encode(0, &children);
    assert_eq!(load(&store, &good, objects).await, Ok(1000));

    let (id, bytes1) = Buckets::encode(1, &children);
    let reason = load(&store, &id, vec![(id.clone(), bytes1)])
        .await
        .unwrap_err();
    assert!(reason.contains("top node has level 1"), "{reason}");

    let mut wrong_count = children.clone();
    wrong_count.values_mut().next().unwrap().count += 1;
    let (id, b) = Buckets::encode(0, &wrong_count);
    let reason = load(&store, &id, vec![(id.clone(), b)]).await.unwrap_err();
    assert!(reason.contains("its parent says"), "{reason}");

    // Two leaves swapped between buckets (counts fixed up): entries outside their path.
    let mut swapped = children.clone();
    let (a, b) = (swapped[&0].clone(), swapped[&1].clone());
    swapped.insert(0, b);
    swapped.insert(1, a);
    let (id, b) = Buckets::encode(0, &swapped);
    let reason = load(&store, &id, vec![(id.clone(), b)]).await.unwrap_err();
    assert!(reason.contains("outside its bucket path"), "{reason}");

    let few: BTreeMap<u8, Bucket> = children
        .iter()
        .take(2)
        .map(|(n, b)| (*n, b.clone()))
        .collect();
    let (id, b) = Buckets::encode(0, &few);
    let reason = load(&store, &id, vec![(id.clone(), b)]).await.unwrap_err();
    assert!(reason.contains("only"), "{reason}");

    let text = String::from_utf8(bytes).unwrap();
    for damaged in [
        text.replace("\"0\":", "\"g\":"),
        text.replace(",\"buckets\"", ", \"buckets\""),
        text.replace("}}}", "}},\"x\":1}"),
        text.replace(":{\"tree\":\"", ":{\"tree\":\"zz"),
    ] {
        let id = crate::base::ids::object_id("tree", damaged.as_bytes());
        let reason = load(&store, &id, vec![(id.clone(), damaged.into_bytes())]).await;
        assert!(reason.is_err(), "decoded");
    }
}

#[tokio::test]
async fn fsck_counts_every_node_and_reports_a_damaged_leaf() {
    let (dir, store) = temp_store().await;
    let hash = blob(&store, b"x").await;
    let all = names(0..1000);
    commit(
        &store,
        all.iter()
            .map(|n| put(&format!("big/{n}"), &hash))
            .collect(),
    )
    .await;
    let root = store.resolve("default", None).await.unwrap().tree;
    let big = store
        .lookup("default", &root, "big")
        .await
        .unwrap()
        .unwrap();
    let (_, objects) = built(&store.load_tree("default", &big.hash).await.unwrap());
    let report = store.fsck().await.unwrap();
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    // The two roots (the empty first one and this one) and every node of big/.
    assert_eq!(report.trees, 2 + objects.len());
    let (leaf, _) = objects.first().unwrap();
    let file = dir
        .path()
        .join(format!("repos/default/objects/{}/{leaf}", &leaf[..2]));
    std::fs::write(&file, b"{\"entries\":{}}").unwrap();
    store.nodes.lock().unwrap().lru.clear();
    let report = store.fsck().await.unwrap();
    assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
    assert!(
        report.damage[0].contains(leaf) && report.damage[0].contains("(big/)"),
        "{:?}",
        report.damage
    );
}

mod model {
    //! Random puts and deletes on one directory, against a `BTreeMap`.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Names drawn from this many, so that sizes cross 256 both ways.
    const POOL: u16 = 600;

    /// Batches that took the directory over 256 entries, and back.
    static CROSSED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    /// Edits of one commit, most of them growing the directory, or most shrinking it. An
    /// op `(kind, i)` of kind 0..8 goes that way (a put of a name from the pool, or a delete
    /// of the i-th entry), 8 the other way, 9 deletes a name of the pool (maybe absent).
    #[derive(Debug, Clone)]
    struct Batch {
        grow: bool,
        ops: Vec<(u8, u16)>,
    }

    impl Batch {
        fn is_put(&self, (kind, _): &(u8, u16)) -> bool {
            match kind {
                0..8 => self.grow,
                8 => !self.grow,
                _ => false,
            }
        }

        fn name(&self, op: &(u8, u16), model: &Tree) -> String {
            let (kind, i) = *op;
            if kind == 9 || self.is_put(op) || model.entries.is_empty() {
                return name(i);
            }
            let at = usize::from(i) % model.entries.len();
            model.entries.keys().nth(at).unwrap().clone()
        }
    }

    type Ops = Vec<Batch>;

    fn name(i: u16) -> String {
        format!("n{i}")
    }

    async fn check(
        store: &Store,
        initial: std::collections::BTreeSet<u16>,
        batches: Ops,
    ) -> Result<(), TestCaseError> {
        let mut model = tree_of(initial.into_iter().map(name));
        let (mut id, objects) = built(&model);
        store.write_objects("default", objects).await.unwrap();
        for (step, batch) in batches.into_iter().enumerate() {
            let mut view = DirView::load(store, "default", &id).await.unwrap();
            let was_large = view.len() as usize > FLAT_MAX;
            let mut touched = Vec::new();
            for op in &batch.ops {
                let n = batch.name(op, &model);
                let before = view.get(store, "default", &n).await.unwrap();
                prop_assert_eq!(before.as_ref(), model.entries.get(&n));
                if batch.is_put(op) {
                    let e = entry(step as i64);
                    view.insert(store, "default", &n, e.clone()).await.unwrap();
                    model.entries.insert(n.clone(), e);
                } else {
                    let removed = view.remove(store, "default", &n).await.unwrap();
                    prop_assert_eq!(removed, model.entries.remove(&n));
                }
                touched.push(n);
            }
            prop_assert_eq!(view.len(), model.entries.len() as u64);
            if was_large != (model.entries.len() > FLAT_MAX) {
                CROSSED[usize::from(was_large)].fetch_add(1, Ordering::Relaxed);
            }
            let mut objects = Vec::new();
            id = view.write(&mut objects);
            store.write_objects("default", objects).await.unwrap();
            prop_assert_eq!(&id, &built(&model).0, "the id of building it from scratch");
            let listed = store.load_tree("default", &id).await.unwrap();
            prop_assert_eq!(&*listed, &model);
            for n in touched {
                let found = store.dir_entry("default", &id, &n).await.unwrap();
                prop_assert_eq!(found.as_ref(), model.entries.get(&n));
            }
        }
        Ok(())
    }

    fn batches() -> impl Strategy<Value = Ops> {
        let ops = prop::collection::vec((0..10u8, 0..POOL), 1..150);
        let batch = (any::<bool>(), ops).prop_map(|(grow, ops)| Batch { grow, ops });
        prop::collection::vec(batch, 2..6)
    }

    #[test]
    fn a_directory_behaves_like_its_model() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_dir, store) = rt.block_on(temp_store());
        let config = Config {
            cases: 32,
            failure_persistence: None,
            ..Config::default()
        };
        let initial = prop::collection::btree_set(0..POOL, 180..340);
        // A fixed seed: the crossing counts asserted below do not depend on luck.
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        TestRunner::new_with_rng(config, rng)
            .run(&(initial, batches()), |(initial, ops)| {
                rt.block_on(check(&store, initial, ops))
            })
            .unwrap();
        let crossed = CROSSED.each_ref().map(|c| c.load(Ordering::Relaxed));
        assert!(
            crossed[0] > 0 && crossed[1] > 0,
            "crossed 256 {crossed:?} times"
        );
    }
}

#[tokio::test]
async fn a_bucket_node_is_not_a_blob() {
    let (_dir, store) = temp_store().await;
    let (id, objects) = built(&tree_of(names(0..300)));
    store.write_objects("default", objects).await.unwrap();
    let request = crate::api::CommitRequest {
        branch: None,
        message: "m".into(),
        changes: vec![put("f", &id)],
    };
    let refused = store.commit("default", &request).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidInput(_))),
        "{refused:?}"
    );
}
