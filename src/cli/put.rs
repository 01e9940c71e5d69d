//! `govcfs put FILE URL/PATH [-m MESSAGE]`

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::api::{Change, CommitRequest};
use crate::client::{CancellationToken, UploadOptions};

/// Arguments of `govcfs put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Local file to upload (`-` reads stdin).
    pub file: PathBuf,
    /// http://HOST:PORT/REPO/PATH
    pub url: String,
    /// Commit message.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    pub message: Option<String>,
    /// Branch to commit to.
    #[arg(long = "ref", value_name = "BRANCH")]
    pub reference: Option<String>,
    /// Chunk PUTs in flight at once.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
}

/// Streams a file up in chunks, then commits it at the path.
pub async fn run(args: PutArgs) -> anyhow::Result<()> {
    let (client, url) = super::client_for(&args.url)?;
    if url.path.is_empty() {
        anyhow::bail!("{} names no path inside the repository", args.url);
    }
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
    }
    let (mut reader, size, mode): (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Option<u64>,
        u32,
    ) = if args.file.as_os_str() == "-" {
        (Box::new(tokio::io::stdin()), None, 0o644)
    } else {
        let file = tokio::fs::File::open(&args.file)
            .await
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let meta = file.metadata().await?;
        if meta.is_dir() {
            anyhow::bail!("{} is a directory", args.file.display());
        }
        (Box::new(file), Some(meta.len()), meta.permissions().mode())
    };
    let bar = super::progress::bar(size);
    let progress_bar = bar.clone();
    let options = UploadOptions {
        max_concurrent: args.max_concurrent,
        progress: Some(Arc::new(move |done| progress_bar.set_position(done))),
        ..UploadOptions::default()
    };
    let blob = client.upload(&mut reader, &options, &cancel).await?;
    let message = args.message.unwrap_or_else(|| format!("put {}", url.path));
    let request = CommitRequest {
        branch: args.reference,
        message,
        changes: vec![Change::Put {
            path: url.path.clone(),
            hash: blob.hash.clone(),
            mode: Some(mode),
            mtime: None,
            expect: None,
        }],
    };
    let commit = client.commit(&request, &cancel).await?;
    bar.finish_and_clear();
    println!(
        "{} {} bytes -> {} (commit {})",
        blob.hash, blob.size, url.path, commit.commit
    );
    Ok(())
}
