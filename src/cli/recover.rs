//! `govcfs recover [--cache-dir DIR] [--upload]`: writes kept after a failed close.
//!
//! A kept copy goes back to its path only if the server still has the version the writer
//! started from; otherwise it goes beside it as `PATH.recovered-TIME`, so recovering never
//! overwrites someone else's newer version.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::api::{Change, CommitRequest};
use crate::client::{CancellationToken, Client, ClientOptions, RepoUrl, UploadOptions};
use crate::fs::recovery::RecoveryNote;
use crate::fs::recovery_dir;

/// Arguments of `govcfs recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The mount's cache directory [default: $XDG_CACHE_HOME/govcfs or ~/.cache/govcfs].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Upload every kept copy and commit it, then delete it locally.
    #[arg(long)]
    pub upload: bool,
}

/// Lists (and with `--upload`, restores) the kept copies.
pub async fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let dir = recovery_dir(
        &args
            .cache_dir
            .unwrap_or_else(super::mount::default_cache_dir),
    );
    let mut notes = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(copy) = path.to_str().and_then(|p| p.strip_suffix(".json")) {
                let note: RecoveryNote = serde_json::from_slice(&std::fs::read(&path)?)
                    .with_context(|| format!("bad note {}", path.display()))?;
                notes.push((PathBuf::from(copy), path.clone(), note));
            }
        }
    }
    notes.sort_by(|a, b| a.2.time.cmp(&b.2.time));
    if notes.is_empty() {
        println!("nothing to recover in {}", dir.display());
        return Ok(());
    }
    for (copy, note_path, note) in notes {
        let size = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}  {}/{} ({} bytes) at {}: {}",
            copy.display(),
            note.origin,
            note.path,
            size,
            note.time,
            note.reason
        );
        if let Some(blob) = &note.fill_from {
            let bytes: u64 = note.missing.iter().map(|[a, b]| b - a).sum();
            println!("  {bytes} bytes the writer never changed are still only in blob {blob}; --upload fetches them first");
        }
        if args.upload {
            let target = restore(&copy, &note)
                .await
                .with_context(|| format!("cannot recover {}", copy.display()))?;
            std::fs::remove_file(&copy)?;
            std::fs::remove_file(&note_path)?;
            println!("  -> uploaded to {}/{}", note.origin, target);
        }
    }
    Ok(())
}

/// Writes the `missing` ranges of blob `blob` into the copy, so it holds the whole file.
async fn fill_missing(
    client: &Client,
    copy: &std::path::Path,
    blob: &str,
    missing: &[[u64; 2]],
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(copy)?;
    for [start, end] in missing {
        let data = client
            .read_range(blob, *start..*end, cancel)
            .await
            .with_context(|| format!("cannot fetch bytes {start}..{end} of blob {blob}"))?;
        anyhow::ensure!(
            data.len() as u64 == end - start,
            "blob {blob} is shorter than the copy expects"
        );
        file.write_all_at(&data, *start)?;
    }
    file.sync_all()?;
    Ok(())
}

async fn restore(copy: &std::path::Path, note: &RecoveryNote) -> anyhow::Result<String> {
    let url = RepoUrl::parse(&note.origin)?;
    let options = ClientOptions::from_env();
    let client = Client::from_url(&url, options)?;
    let cancel = CancellationToken::new();
    let current = match client
        .stat(&note.path, note.branch.as_deref(), &cancel)
        .await
    {
        Ok(entry) => Some(entry.hash),
        Err(e) if e.status() == Some(404) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(blob) = &note.fill_from {
        fill_missing(&client, copy, blob, &note.missing, &cancel).await?;
    }
    let target = if current == note.expect {
        note.path.clone()
    } else {
        format!("{}.recovered-{}", note.path, note.time.replace(':', ""))
    };
    let mut file = tokio::fs::File::open(copy).await?;
    let blob = client
        .upload(&mut file, &UploadOptions::default(), &cancel)
        .await?;
    let expect = if target == note.path {
        Some(current)
    } else {
        Some(None)
    };
    let request = CommitRequest {
        branch: note.branch.clone(),
        message: format!("recover {}", note.path),
        changes: vec![Change::Put {
            path: target.clone(),
            hash: blob.hash,
            mode: None,
            mtime: None,
            expect,
        }],
    };
    client.commit(&request, &cancel).await?;
    Ok(target)
}
