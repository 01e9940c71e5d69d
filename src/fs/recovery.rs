//! Recovery copies: where the bytes of a write that could not be committed are kept.
//!
//! A failed close copies its spool to `<cache-dir>/recovery/` with a [`RecoveryNote`] beside it;
//! a mount that died leaves its spools behind, and the next mount moves them there
//! ([`rescue_orphans`]). `govcfs recover` lists and re-uploads them.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spool::{missing_ranges, try_lock, SpoolNote};

/// The recovery directory under a cache directory.
pub fn recovery_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("recovery")
}

/// What `recovery/<name>.json` says about the copy `recovery/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryNote {
    /// `http://HOST:PORT/REPO` of the mount.
    pub origin: String,
    /// Branch (the default one when absent).
    pub branch: Option<String>,
    /// Path inside the repository.
    pub path: String,
    /// The blob the file had when it was opened (`None`: it did not exist).
    pub expect: Option<String>,
    /// Why the close failed.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
    /// Byte ranges of the copy that were never fetched: their bytes are the same ranges of
    /// blob `fill_from` (the version the file was opened at). `govcfs recover --upload` fetches
    /// them first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<[u64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_from: Option<String>,
}

/// Keeps `source` as a recovery copy with `note`; moves it when `move_source`, else copies.
pub fn keep_for_recovery(
    recovery_dir: &Path,
    source: &Path,
    move_source: bool,
    note: &RecoveryNote,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(recovery_dir)?;
    let name = format!(
        "{}-{}-{}",
        note.time.replace(':', ""),
        &uuid::Uuid::new_v4().to_string()[..8],
        note.path.replace('/', "%2F")
    );
    let dest = recovery_dir.join(&name);
    if move_source {
        std::fs::rename(source, &dest)?;
    } else {
        std::fs::copy(source, &dest)?;
    }
    std::fs::write(
        recovery_dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(note).map_err(std::io::Error::other)?,
    )?;
    Ok(dest)
}

/// The current time as RFC 3339, for notes.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Moves the spools of mounts that died (their spool directory is not locked) into
/// `recovery_dir`. Returns the recovery copies made.
pub fn rescue_orphans(cache_dir: &Path, recovery_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut rescued = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache_dir.join("spool")) else {
        return Ok(rescued);
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(lock) = File::options()
            .read(true)
            .write(true)
            .open(dir.join(".lock"))
        else {
            continue;
        };
        if !try_lock(&lock)? {
            continue; // a live mount
        }
        for spool_entry in std::fs::read_dir(&dir)?.flatten() {
            let note_path = spool_entry.path();
            if note_path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match rescue_one(&note_path, recovery_dir) {
                Ok(Some(copy)) => rescued.push(copy),
                Ok(None) => {}
                Err(e) => log::error!("cannot rescue the spool of {}: {e}", note_path.display()),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("cannot remove the spool directory {}: {e}", dir.display());
        }
    }
    Ok(rescued)
}

fn rescue_one(note_path: &Path, recovery_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let spool = note_path.with_extension("");
    let note: SpoolNote =
        serde_json::from_slice(&std::fs::read(note_path)?).map_err(std::io::Error::other)?;
    let Ok(meta) = std::fs::metadata(&spool) else {
        return Ok(None);
    };
    let mut present = BTreeSet::new();
    let mut base_valid = note.base_valid;
    for line in std::fs::read_to_string(spool.with_extension("log"))
        .unwrap_or_default()
        .lines()
    {
        match line.split_once(' ') {
            Some(("p", i)) => present.extend(i.parse::<u64>().ok()),
            Some(("v", v)) => base_valid = base_valid.min(v.parse().unwrap_or(base_valid)),
            _ => {} // a line cut by the crash
        }
    }
    let missing = match &note.fill_from {
        Some(_) => missing_ranges(&present, base_valid, meta.len(), note.chunk_size),
        None => Vec::new(),
    };
    let recovery = RecoveryNote {
        origin: note.origin,
        branch: note.branch,
        path: note.path,
        expect: note.expect,
        reason: "the mount ended (crashed or was killed) before this file was closed; nothing of this version was committed".into(),
        time: now_rfc3339(),
        fill_from: if missing.is_empty() { None } else { note.fill_from },
        missing: missing.iter().map(|r| [r.start, r.end]).collect(),
    };
    keep_for_recovery(recovery_dir, &spool, true, &recovery).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::spool::{SpoolDir, SpoolJournal};

    #[test]
    fn a_dead_mounts_spool_is_rescued_and_a_live_one_is_left_alone() {
        let cache = tempfile::tempdir().unwrap();
        let recovery = cache.path().join("recovery");
        let live = SpoolDir::claim(cache.path()).unwrap();
        let dead_dir = {
            let dead = SpoolDir::claim(cache.path()).unwrap();
            let spool = dead.path().join("spool-1");
            std::fs::write(&spool, vec![7u8; 30]).unwrap();
            let note = SpoolNote {
                origin: "http://h/r".into(),
                branch: None,
                path: "a/b.txt".into(),
                expect: Some("e".repeat(64)),
                chunk_size: 10,
                fill_from: Some("f".repeat(64)),
                base_valid: 30,
            };
            let mut journal = SpoolJournal::create(&spool, note).unwrap();
            journal.present(0).unwrap();
            journal.present(2).unwrap();
            dead.path().to_path_buf()
        };
        std::fs::write(live.path().join("spool-2"), b"live").unwrap();
        let rescued = rescue_orphans(cache.path(), &recovery).unwrap();
        assert_eq!(rescued.len(), 1);
        assert_eq!(std::fs::read(&rescued[0]).unwrap(), vec![7u8; 30]);
        let note_path = format!("{}.json", rescued[0].display());
        let note: RecoveryNote =
            serde_json::from_slice(&std::fs::read(note_path).unwrap()).unwrap();
        assert_eq!(note.path, "a/b.txt");
        assert_eq!(note.missing, vec![[10, 20]]);
        assert_eq!(note.fill_from, Some("f".repeat(64)));
        assert!(!dead_dir.exists());
        assert!(live.path().join("spool-2").exists());
    }
}
