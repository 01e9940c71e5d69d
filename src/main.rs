//! The `govcfs` binary: parses arguments and dispatches to [`govcfs::cli`].

use clap::Parser;

fn main() {
    govcfs::cli::tune_allocator();
    let cli = govcfs::cli::Cli::parse_from(govcfs::cli::args());
    let default_level = cli.log_level.clone().unwrap_or_else(|| "warn".to_string());
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    if let Err(e) = govcfs::cli::run(cli) {
        eprintln!("govcfs: {e:#}");
        std::process::exit(1);
    }
}
