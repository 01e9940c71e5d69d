//! `govcfs hash FILE…`: the blob id of local files, computed without a server, so a
//! download can be checked (the id a tree entry shows is the one this prints).

use std::io::Read;
use std::path::PathBuf;

use crate::base::manifest::{BlobHasher, CHUNK_SIZE};

/// `govcfs hash` arguments.
#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// The files to hash ("-" reads standard input).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Prints `<blob id>  <file>` for each file, like `sha256sum`.
pub fn run(args: HashArgs) -> anyhow::Result<()> {
    for file in &args.files {
        let id = if file.as_os_str() == "-" {
            hash_reader(std::io::stdin().lock())?
        } else {
            let opened = std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            hash_reader(opened)?
        };
        println!("{id}  {}", file.display());
    }
    Ok(())
}

/// The blob id of everything `reader` yields, read a chunk at a time.
fn hash_reader(mut reader: impl Read) -> anyhow::Result<String> {
    let mut hasher = BlobHasher::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish().id())
}
