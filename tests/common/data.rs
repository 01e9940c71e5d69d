//! Test data: deterministic pseudo-random bytes and files, hashes as the server computes
//! them, and byte-exact comparison of buffers and (streamed) files.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// A xorshift64* generator: fast, deterministic, good enough to defeat compression and
/// deduplication.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed` (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    XorShift::new(seed).fill(&mut buf);
    buf
}

/// Writes a file of `len` pseudo-random bytes from `seed`, 1 MiB at a time (memory stays
/// at one buffer whatever the size).
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    const BUF: usize = 1 << 20;
    let mut rng = XorShift::new(seed);
    let mut file = File::create(path)?;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Compares two files in 1 MiB pieces. `Ok(None)` when they are byte-identical, otherwise
/// the offset of the first difference (a length mismatch counts as a difference at the end
/// of the shorter file).
pub fn first_difference(a: &Path, b: &Path) -> std::io::Result<Option<u64>> {
    const BUF: usize = 1 << 20;
    let mut fa = BufReader::with_capacity(BUF, File::open(a)?);
    let mut fb = BufReader::with_capacity(BUF, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .expect("slices differ");
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

/// Panics unless the two files are byte-identical, naming the first differing offset.
pub fn assert_files_equal(a: &Path, b: &Path) {
    match first_difference(a, b) {
        Ok(None) => {}
        Ok(Some(offset)) => panic!(
            "{} and {} differ at byte {offset}",
            a.display(),
            b.display()
        ),
        Err(e) => panic!("cannot compare {} and {}: {e}", a.display(), b.display()),
    }
}

/// Reads until `buf` is full or the end of input.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `len` pseudo-random, incompressible bytes quickly (the debug build generates a few
/// hundred MB/s at most): each MiB is one of 16 random 1 MiB blocks, picked pseudo-randomly,
/// whose first 16 bytes are replaced by the MiB's index and the seed, so no two MiB are equal
/// and a misplaced piece of data is always detected.
pub fn write_fast_random_file(path: &Path, len: u64, seed: u64) {
    const BLOCK: usize = 1 << 20;
    let blocks: Vec<Vec<u8>> = (0..16)
        .map(|i| random_bytes(BLOCK, seed.wrapping_mul(1000).wrapping_add(i + 1)))
        .collect();
    let mut rng = XorShift::new(seed ^ 0x5EED);
    let mut file = File::create(path).expect("create the file");
    let mut buf = vec![0u8; BLOCK];
    let mut index = 0u64;
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        buf[..n].copy_from_slice(&blocks[(rng.next_u64() % 16) as usize][..n]);
        let header = [index.to_le_bytes(), seed.to_le_bytes()].concat();
        let h = n.min(16);
        buf[..h].copy_from_slice(&header[..h]);
        file.write_all(&buf[..n]).expect("write the file");
        index += 1;
        left -= n as u64;
    }
    file.sync_all().expect("sync the file");
}

/// Hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// The store's chunk size (CONTRACT §3).
pub const CHUNK: usize = 4 << 20;

/// The blob id of `data` (CONTRACT §3), written from the contract's text, not the crate's
/// code: SHA-256 of the manifest `"govcfs-blob 1\nsize N\nchunk-size 4194304\n"` followed
/// by the hex SHA-256 of each 4 MiB chunk, one per line.
pub fn blob_id(data: &[u8]) -> String {
    let hashes: Vec<String> = data.chunks(CHUNK).map(sha256_hex).collect();
    manifest_id(data.len() as u64, &hashes)
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// The blob id of a blob of `size` bytes whose chunks have these hashes.
pub fn manifest_id(size: u64, chunk_hashes: &[String]) -> String {
    let mut text = format!("govcfs-blob 1\nsize {size}\nchunk-size {CHUNK}\n");
    for hash in chunk_hashes {
        text.push_str(hash);
        text.push('\n');
    }
    sha256_hex(text.as_bytes())
}

/// The Git-style id of a blob of a store written before chunking (`"blob LEN\0"` + content).
pub fn legacy_blob_id(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// [`blob_id`] of a local file, read a chunk at a time.
pub fn blob_id_of_file(path: &Path) -> String {
    let size = std::fs::metadata(path).expect("stat").len();
    let mut file = File::open(path).expect("open");
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = file.read(&mut buf[filled..]).expect("read");
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        hashes.push(sha256_hex(&buf[..filled]));
    }
    manifest_id(size, &hashes)
}

/// Where two byte strings first differ (`None` if equal; a length mismatch counts as a
/// difference at the end of the shorter one).
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Every path under `dir`, directories included and symlinks listed but not followed. A
/// missing `dir`, or an entry that vanishes while it is walked (a live server renames its
/// temporary files), is skipped; any other error fails the test. Nesting is bounded.
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_paths(dir, 0, &mut out);
    out
}

fn collect_paths(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    assert!(
        depth < 64,
        "{} is nested over 64 levels deep",
        dir.display()
    );
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("entry of {}: {e}", dir.display()));
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_paths(&path, depth + 1, out),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("file type of {}: {e}", path.display()),
        }
        out.push(path);
    }
}

/// The regular files under `dir` (see [`paths_under`]).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    paths_under(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
}
