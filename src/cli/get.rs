//! `govcfs get URL/PATH [-o FILE] [--range START-END]`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::api::stream::StreamProgress;
use crate::api::EntryType;
use crate::client::{CancellationToken, Client, ClientError, DownloadOptions, StreamOptions};

/// Arguments of `govcfs get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// http://HOST:PORT/REPO/PATH
    pub url: String,
    /// Write to FILE (atomically: a partial download never has this name) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only bytes START to END, inclusive (`START-` for the rest).
    #[arg(long, value_name = "START-END")]
    pub range: Option<String>,
    /// Branch or commit to read.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Download through a stream session of the seed API (chunks fetched concurrently, each
    /// MD5-checked) instead of ranged GETs.
    #[arg(long, conflicts_with = "ws")]
    pub stream: bool,
    /// Download over the server's WebSocket.
    #[arg(long)]
    pub ws: bool,
    /// Chunk size of --stream and --ws (the server clamps it to 1K..10M).
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = super::parse_size_arg)]
    pub chunk_size: u64,
    /// Ask for compressed chunks with --stream (zstd) or --ws (gzip).
    #[arg(long)]
    pub compress: bool,
}

/// Which protocol a download uses.
#[derive(Clone, Copy)]
enum Via {
    Ranges,
    Session,
    WebSocket,
}

/// Parses `START-END` (inclusive) or `START-` into an exclusive range clamped to `len`.
pub fn parse_range(text: &str, len: u64) -> anyhow::Result<std::ops::Range<u64>> {
    let (start, end) = text.split_once('-').context("--range must be START-END")?;
    let start: u64 = start.trim().parse().context("invalid range start")?;
    let end: u64 = if end.trim().is_empty() {
        len
    } else {
        end.trim()
            .parse::<u64>()
            .context("invalid range end")?
            .saturating_add(1)
            .min(len)
    };
    if start >= len || start >= end {
        anyhow::bail!("range {text} is outside the file ({len} bytes)");
    }
    Ok(start..end)
}

/// Downloads one file with a progress bar.
pub async fn run(args: GetArgs) -> anyhow::Result<()> {
    let (client, url) = super::client_for(&args.url)?;
    let cancel = CancellationToken::new();
    let entry = client
        .stat(&url.path, args.reference.as_deref(), &cancel)
        .await?;
    if entry.kind == EntryType::Directory {
        anyhow::bail!("{} is a directory", args.url);
    }
    let range = args
        .range
        .as_deref()
        .map(|r| parse_range(r, entry.size))
        .transpose()?;
    let total = range.as_ref().map_or(entry.size, |r| r.end - r.start);
    let bar = super::progress::bar(Some(total));
    let progress_bar = bar.clone();
    cancel_on_ctrl_c(&cancel);
    let download = Download {
        client,
        hash: entry.hash,
        via: Via::of(&args),
        stream_options: stream_options(&args, range.as_ref()),
        options: DownloadOptions {
            range,
            progress: Some(Arc::new(move |done, _| progress_bar.set_position(done))),
        },
        cancel,
    };
    match &args.output {
        Some(path) => download.to_file(path).await?,
        None => {
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::io::stdout());
            download.fetch(&mut out).await?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

impl Via {
    fn of(args: &GetArgs) -> Via {
        if args.stream {
            Via::Session
        } else if args.ws {
            Via::WebSocket
        } else {
            Via::Ranges
        }
    }
}

/// The session options of `--stream` and `--ws` for `range`.
fn stream_options(args: &GetArgs, range: Option<&std::ops::Range<u64>>) -> StreamOptions {
    StreamOptions {
        chunk_size: args.chunk_size,
        start_offset: range.map_or(0, |r| r.start),
        end_offset: range.map(|r| r.end - 1),
        enable_gzip: args.compress && args.ws,
        zstd: args.compress && args.stream,
        ..StreamOptions::default()
    }
}

fn cancel_on_ctrl_c(cancel: &CancellationToken) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
}

/// One blob to download, and how.
struct Download {
    client: Client,
    hash: String,
    via: Via,
    options: DownloadOptions,
    stream_options: StreamOptions,
    cancel: CancellationToken,
}

impl Download {
    /// Downloads into `path` atomically: into a `.govcfs-partial` file that is synced and
    /// renamed over `path` once whole, and removed on failure.
    async fn to_file(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let partial = partial_name(path);
        let file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        if let Err(e) = self.fetch(&mut out).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e.into());
        }
        out.into_inner().sync_all().await?;
        tokio::fs::rename(&partial, path).await?;
        Ok(())
    }

    /// Downloads the blob into `out` the chosen way.
    async fn fetch<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        out: &mut W,
    ) -> Result<(), ClientError> {
        let (client, hash, cancel) = (&self.client, self.hash.as_str(), &self.cancel);
        let progress = self.options.progress.clone();
        match self.via {
            Via::Ranges => client
                .download(hash, out, &self.options, cancel)
                .await
                .map(|_| ()),
            Via::Session => client
                .download_stream(hash, out, &self.stream_options, progress, cancel)
                .await
                .map(|_| ()),
            Via::WebSocket => {
                let mut ws = client.websocket().await?;
                let on_progress = |p: &StreamProgress| {
                    if let Some(f) = &progress {
                        f(p.bytes_streamed, p.total_bytes);
                    }
                };
                let request = self.stream_options.request(hash);
                ws.stream_blob(&request, out, on_progress, cancel).await?;
                ws.close().await
            }
        }
    }
}

fn partial_name(path: &std::path::Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".govcfs-partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0-9", 100).unwrap(), 0..10);
        assert_eq!(parse_range("90-", 100).unwrap(), 90..100);
        assert_eq!(parse_range("90-1000", 100).unwrap(), 90..100);
        assert!(parse_range("100-", 100).is_err());
        assert!(parse_range("5-2", 100).is_err());
        assert!(parse_range("x", 100).is_err());
    }
}
