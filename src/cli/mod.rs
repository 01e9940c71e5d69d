//! The command line (CONTRACT §1): one file per subcommand. Errors reach `main` as
//! `anyhow::Error` and are printed as one line.

mod get;
mod ls;
pub mod progress;
mod put;
mod repo;
mod serve;

use clap::{Parser, Subcommand};

use crate::client::{Client, ClientOptions, RepoUrl};

/// govcfs: mount a remote streaming repository as an ordinary directory.
#[derive(Debug, Parser)]
#[command(name = "govcfs", version, about)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the repository server.
    Serve(serve::ServeArgs),
    /// Create or list repositories.
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// List a directory of a repository.
    Ls(ls::LsArgs),
    /// Download a file (to stdout, or to -o FILE).
    Get(get::GetArgs),
    /// Upload a file (streamed, chunked, resumable) and commit it.
    Put(put::PutArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Repo(cmd) => runtime()?.block_on(repo::run(cmd)),
        Command::Ls(args) => runtime()?.block_on(ls::run(args)),
        Command::Get(args) => runtime()?.block_on(get::run(args)),
        Command::Put(args) => runtime()?.block_on(put::run(args)),
    }
}

/// A multi-threaded tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Parses a repository URL and makes a client for it (`GOVCFS_TOKEN` is the bearer token).
fn client_for(url: &str) -> anyhow::Result<(Client, RepoUrl)> {
    let parsed = RepoUrl::parse(url)?;
    if parsed.repo.is_empty() {
        anyhow::bail!("{url:?} names no repository: expected http://HOST:PORT/REPO[/PATH]");
    }
    let options = ClientOptions { auth_token: std::env::var("GOVCFS_TOKEN").ok(), ..ClientOptions::default() };
    Ok((Client::from_url(&parsed, options)?, parsed))
}

/// Parses a `--max-upload-size`-style value for clap.
fn parse_size_arg(text: &str) -> Result<u64, String> {
    crate::size::parse_size(text)
}
