//! `govcfs fsck [--data DIR | --store URL]`

use std::path::PathBuf;

use clap::Args;

use crate::store::{Backend, Store};

/// Arguments of `govcfs fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Local store directory [default: the server's default].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Store URL (file:///abs/dir).
    #[arg(long, value_name = "URL", conflicts_with = "data")]
    pub store: Option<String>,
}

/// Verifies every ref, commit, tree and blob id; fails when anything is damaged.
pub async fn run(args: FsckArgs) -> anyhow::Result<()> {
    let backend = Backend::from_spec(args.store.as_deref(), args.data.as_deref())?;
    let store = Store::open(backend).await?;
    let report = store.fsck().await?;
    for line in &report.damage {
        println!("damaged: {line}");
    }
    println!(
        "checked {} repositories, {} commits, {} trees, {} blobs ({} bytes): {}",
        report.repos,
        report.commits,
        report.trees,
        report.blobs,
        report.blob_bytes,
        if report.damage.is_empty() {
            "no damage".to_string()
        } else {
            format!("{} problems", report.damage.len())
        }
    );
    if !report.damage.is_empty() {
        anyhow::bail!("the store is damaged");
    }
    Ok(())
}
