//! Unreferenced chunks: what uploads never completed (or aborted, or cut by a crash) leave
//! in `chunks/`. A chunk is kept if a manifest names it or a live upload's record does;
//! anything the sweep cannot read (a manifest or record that does not parse) stops it, so
//! damage never turns into deleting a chunk some blob still needs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::Swept;
use crate::base::manifest::Manifest;

/// Removes the chunks of `repo` (a repository directory) that nothing references.
pub(super) fn sweep_unreferenced_chunks(repo: &Path, swept: &mut Swept) {
    let chunks = repo.join("chunks");
    if !chunks.is_dir() {
        return;
    }
    let live = match referenced_chunks(repo) {
        Ok(live) => live,
        Err(why) => {
            log::warn!("not sweeping chunks of {}: {why}", repo.display());
            return;
        }
    };
    for file in files_under(&chunks) {
        let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let hash = name.strip_suffix(".crc").unwrap_or(name);
        if hash.contains('#') || live.contains(hash) {
            continue;
        }
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&file).is_ok() {
            swept.files += 1;
            swept.bytes += len;
        }
    }
}

/// Every chunk hash (hex) a manifest of `repo` or a record of one of its uploads names.
fn referenced_chunks(repo: &Path) -> Result<HashSet<String>, String> {
    let mut live = HashSet::new();
    for file in files_under(&repo.join("manifests")) {
        if file.to_string_lossy().contains('#') {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let manifest = Manifest::decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        live.extend(manifest.chunks.iter().map(hex::encode));
    }
    for file in files_under(&repo.join("uploads")) {
        if file.extension().is_none_or(|e| e != "ref") {
            continue;
        }
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if bytes.first() == Some(&b'{') {
            // A copy of a blob that is not chunked alike: it names no chunk.
            continue;
        }
        let list: Vec<(String, u64)> =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        live.extend(list.into_iter().map(|(hash, _)| hash));
    }
    Ok(live)
}

/// The regular files under `dir`, two levels deep at most (`<h[0..2]>/<name>`, or
/// `<upload>/<record>`).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let inner = std::fs::read_dir(&path).into_iter().flatten().flatten();
            out.extend(inner.map(|e| e.path()).filter(|p| p.is_file()));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::manifest::chunk_hash;

    #[test]
    fn only_chunks_nothing_names_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path();
        let [kept, pending, orphan] = [b"kept".as_slice(), b"pending", b"orphan"].map(chunk_hash);
        for hash in [kept, pending, orphan] {
            let hex = hex::encode(hash);
            let dir = repo.join(format!("chunks/{}", &hex[..2]));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(&hex), b"data").unwrap();
            std::fs::write(dir.join(format!("{hex}.crc")), b"crc!").unwrap();
        }
        let manifest = Manifest::new(4, vec![kept]);
        let id = manifest.id();
        std::fs::create_dir_all(repo.join(format!("manifests/{}", &id[..2]))).unwrap();
        std::fs::write(
            repo.join(format!("manifests/{}/{id}", &id[..2])),
            manifest.encode(),
        )
        .unwrap();
        std::fs::create_dir_all(repo.join("uploads/u1")).unwrap();
        let record = format!("[[\"{}\",7]]", hex::encode(pending));
        std::fs::write(repo.join("uploads/u1/0000000000.ref"), record).unwrap();

        let mut swept = Swept::default();
        sweep_unreferenced_chunks(repo, &mut swept);
        assert_eq!((swept.files, swept.bytes), (2, 8));
        let exists = |h: [u8; 32]| {
            let hex = hex::encode(h);
            repo.join(format!("chunks/{}/{hex}", &hex[..2])).exists()
        };
        assert!(exists(kept) && exists(pending) && !exists(orphan));

        // A record that does not parse stops the sweep: nothing more is removed.
        std::fs::write(repo.join("uploads/u1/0000000000.ref"), b"garbage").unwrap();
        let mut swept = Swept::default();
        sweep_unreferenced_chunks(repo, &mut swept);
        assert_eq!(swept.files, 0);
        assert!(exists(pending));
    }
}
