//! `govcfs repo create|list`

use clap::Subcommand;

use crate::client::{CancellationToken, Client, ClientOptions, RepoUrl};

/// Repository subcommands.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository: URL = http://HOST:PORT/REPO
    Create { url: String },
    /// List the repositories of a server: http://HOST:PORT
    List { url: String },
}

/// Runs a repository subcommand.
pub async fn run(cmd: RepoCommand) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    match cmd {
        RepoCommand::Create { url } => {
            let (client, parsed) = super::client_for(&url)?;
            let info = client.create_repo(&cancel).await?;
            println!("created {} at {}/{}", info.id, parsed.server, info.id);
        }
        RepoCommand::List { url } => {
            let parsed = RepoUrl::parse(&url)?;
            let options = ClientOptions::from_env();
            let client = Client::new(&parsed.server, "", options)?;
            for repo in client.list_repos(&cancel).await?.repositories {
                println!(
                    "{}\t{}\t{}",
                    repo.id,
                    repo.head.as_deref().unwrap_or("-"),
                    repo.created_at
                );
            }
        }
    }
    Ok(())
}
