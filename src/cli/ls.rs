//! `govcfs ls URL[/PATH]`

use clap::Args;

use crate::api::{Entry, EntryType};
use crate::client::CancellationToken;

/// Arguments of `govcfs ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// http://HOST:PORT/REPO[/PATH]
    pub url: String,
    /// Branch or commit to list.
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
}

fn line(e: &Entry) -> String {
    let (kind, suffix) = match e.kind {
        EntryType::Directory => ('d', "/"),
        EntryType::Symlink => ('l', ""),
        EntryType::File => ('-', ""),
    };
    let time = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64),
    );
    format!(
        "{kind} {:>6o} {:>14} {time} {}{suffix}",
        e.mode, e.size, e.name
    )
}

/// Prints one line per entry: type, mode, size, mtime, name.
pub async fn run(args: LsArgs) -> anyhow::Result<()> {
    let (client, url) = super::client_for(&args.url)?;
    let cancel = CancellationToken::new();
    let entry = client
        .stat(&url.path, args.reference.as_deref(), &cancel)
        .await?;
    if entry.kind != EntryType::Directory {
        println!("{}", line(&entry));
        return Ok(());
    }
    let listing = client
        .list_dir(&url.path, args.reference.as_deref(), &cancel)
        .await?;
    for e in &listing.entries {
        println!("{}", line(e));
    }
    Ok(())
}
