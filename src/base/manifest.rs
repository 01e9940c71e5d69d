//! Chunked blobs: a blob is the ordered list of its fixed-size chunks, and its id is the
//! SHA-256 of a small canonical manifest over them (a Merkle id).
//!
//! A chunk is [`CHUNK_SIZE`] bytes (the last one shorter) named by the plain SHA-256 of its
//! bytes. The manifest is this UTF-8 text, every line ending in `\n`:
//!
//! ```text
//! govcfs-blob 1
//! size <decimal length>
//! chunk-size <decimal chunk size>
//! <hex SHA-256 of chunk 0>
//! <hex SHA-256 of chunk 1>
//! …
//! ```
//!
//! An empty blob has no chunk lines. Because the id is a hash over chunk hashes, an append
//! or an edit re-hashes only the chunks it touches, and the same bytes are stored once
//! however many files and versions hold them.

use sha2::{Digest, Sha256};

/// Size of every chunk of a blob but the last.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// The first line of every manifest.
const MAGIC: &str = "govcfs-blob 1";

/// The SHA-256 of one chunk's bytes.
pub type ChunkHash = [u8; 32];

/// A manifest that is not in the canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid blob manifest: {0}")]
pub struct InvalidManifest(pub String);

/// What a blob is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Length of the blob in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u64,
    /// The chunks in order.
    pub chunks: Vec<ChunkHash>,
}

impl Manifest {
    /// The manifest of a blob of `size` bytes made of `chunks` of [`CHUNK_SIZE`].
    pub fn new(size: u64, chunks: Vec<ChunkHash>) -> Self {
        Manifest {
            size,
            chunk_size: CHUNK_SIZE,
            chunks,
        }
    }

    /// The canonical text whose SHA-256 is the blob id.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "{MAGIC}\nsize {}\nchunk-size {}\n",
            self.size, self.chunk_size
        );
        text.reserve(self.chunks.len() * 65);
        for chunk in &self.chunks {
            text.push_str(&hex::encode(chunk));
            text.push('\n');
        }
        text.into_bytes()
    }

    /// The blob id: hex SHA-256 of [`encode`](Self::encode).
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.encode()))
    }

    /// Parses a canonical manifest; anything else (another layout, a chunk count that does
    /// not fit the size, upper-case hex) is refused, so one blob has exactly one encoding.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, InvalidManifest> {
        let bad = |why: &str| InvalidManifest(why.to_string());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let mut lines = body.split('\n');
        if lines.next() != Some(MAGIC) {
            return Err(bad("not a govcfs blob manifest"));
        }
        let size = number_line(lines.next(), "size")?;
        let chunk_size = number_line(lines.next(), "chunk-size")?;
        let chunks = lines.map(parse_chunk_hash).collect::<Result<Vec<_>, _>>()?;
        let manifest = Manifest {
            size,
            chunk_size,
            chunks,
        };
        manifest.check_layout()?;
        if manifest.encode() != bytes {
            return Err(bad("not in canonical form"));
        }
        Ok(manifest)
    }

    /// Whether the chunk count and chunk size fit the size.
    fn check_layout(&self) -> Result<(), InvalidManifest> {
        if self.chunk_size == 0 {
            return Err(InvalidManifest("chunk size 0".into()));
        }
        if self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size) {
            return Err(InvalidManifest(format!(
                "{} chunks for {} bytes in chunks of {}",
                self.chunks.len(),
                self.size,
                self.chunk_size
            )));
        }
        Ok(())
    }

    /// The byte range of chunk `index` within the blob.
    pub fn chunk_range(&self, index: usize) -> std::ops::Range<u64> {
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// The chunks that `range` touches, each with the part of it inside the chunk
    /// (chunk-relative offsets), in order.
    pub fn pieces(&self, range: std::ops::Range<u64>) -> Vec<(usize, std::ops::Range<u64>)> {
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        let mut at = range.start;
        while at < end {
            let index = (at / self.chunk_size) as usize;
            let chunk = self.chunk_range(index);
            let stop = chunk.end.min(end);
            out.push((index, at - chunk.start..stop - chunk.start));
            at = stop;
        }
        out
    }
}

fn number_line(line: Option<&str>, key: &str) -> Result<u64, InvalidManifest> {
    line.and_then(|l| l.strip_prefix(key))
        .and_then(|l| l.strip_prefix(' '))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| InvalidManifest(format!("no {key} line")))
}

/// Parses a lowercase hex chunk hash.
pub fn parse_chunk_hash(text: &str) -> Result<ChunkHash, InvalidManifest> {
    let lower = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut hash = [0u8; 32];
    if !lower || hex::decode_to_slice(text, &mut hash).is_err() {
        return Err(InvalidManifest(format!("bad chunk hash {text:?}")));
    }
    Ok(hash)
}

/// The SHA-256 of one chunk.
pub fn chunk_hash(data: &[u8]) -> ChunkHash {
    Sha256::digest(data).into()
}

/// Computes a blob's manifest while its bytes stream through, in any piece sizes; nothing is
/// buffered and the length need not be known up front.
pub struct BlobHasher {
    current: Sha256,
    in_chunk: u64,
    size: u64,
    chunks: Vec<ChunkHash>,
}

impl Default for BlobHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl BlobHasher {
    /// Starts hashing a blob.
    pub fn new() -> Self {
        BlobHasher {
            current: Sha256::new(),
            in_chunk: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((CHUNK_SIZE - self.in_chunk) as usize).min(data.len());
            self.current.update(&data[..take]);
            self.in_chunk += take as u64;
            self.size += take as u64;
            data = &data[take..];
            if self.in_chunk == CHUNK_SIZE {
                self.chunks.push(self.current.finalize_reset().into());
                self.in_chunk = 0;
            }
        }
    }

    /// Feeds one whole chunk whose hash is already known (it is not hashed again). Only
    /// valid at a chunk boundary, with `len` at most [`CHUNK_SIZE`].
    pub fn push_chunk(&mut self, hash: ChunkHash, len: u64) {
        debug_assert!(self.in_chunk == 0 && len <= CHUNK_SIZE);
        self.chunks.push(hash);
        self.size += len;
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The manifest of everything fed.
    pub fn finish(mut self) -> Manifest {
        if self.in_chunk > 0 {
            self.chunks.push(self.current.finalize().into());
        }
        Manifest::new(self.size, self.chunks)
    }
}

/// The id of a whole in-memory blob.
pub fn blob_id(content: &[u8]) -> String {
    let mut hasher = BlobHasher::new();
    hasher.update(content);
    hasher.finish().id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_blob_has_a_fixed_id() {
        let empty = Manifest::new(0, Vec::new());
        assert_eq!(
            empty.encode(),
            b"govcfs-blob 1\nsize 0\nchunk-size 4194304\n"
        );
        assert_eq!(blob_id(b""), hex::encode(Sha256::digest(empty.encode())));
    }

    #[test]
    fn a_small_blob_is_one_chunk_named_by_its_sha256() {
        let m = {
            let mut h = BlobHasher::new();
            h.update(b"hello\n");
            h.finish()
        };
        assert_eq!(m.size, 6);
        // `printf 'hello\n' | sha256sum`
        assert_eq!(
            hex::encode(m.chunks[0]),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn pieces_incremental_and_pushed_chunks_agree() {
        let data: Vec<u8> = (0..(2 * CHUNK_SIZE as usize + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut a = BlobHasher::new();
        for piece in data.chunks(1_000_003) {
            a.update(piece);
        }
        let mut b = BlobHasher::new();
        for chunk in data.chunks(CHUNK_SIZE as usize) {
            b.push_chunk(chunk_hash(chunk), chunk.len() as u64);
        }
        let (a, b) = (a.finish(), b.finish());
        assert_eq!(a, b);
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(blob_id(&data), a.id());
    }

    #[test]
    fn only_the_canonical_form_decodes() {
        let m = Manifest::new(5, vec![chunk_hash(b"abcde")]);
        let good = m.encode();
        assert!(Manifest::decode(&good).is_ok());
        let upper = String::from_utf8(good.clone()).unwrap().to_uppercase();
        for bad in [
            &good[..good.len() - 1],
            upper.as_bytes(),
            b"govcfs-blob 1\nsize 5\nchunk-size 4194304\n",
            b"govcfs-blob 1\nsize 05\nchunk-size 4194304\n",
            b"govcfs-blob 1\nsize 0\nchunk-size 0\n",
        ] {
            assert!(
                Manifest::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pieces_split_a_range_at_chunk_boundaries() {
        let m = Manifest {
            size: 25,
            chunk_size: 10,
            chunks: vec![[0; 32]; 3],
        };
        assert_eq!(m.pieces(0..25), vec![(0, 0..10), (1, 0..10), (2, 0..5)]);
        assert_eq!(m.pieces(7..13), vec![(0, 7..10), (1, 0..3)]);
        assert_eq!(m.pieces(10..20), vec![(1, 0..10)]);
        assert_eq!(m.pieces(20..40), vec![(2, 0..5)]);
        assert!(m.pieces(5..5).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..Default::default()
        })]

        /// The pieces of any range cover exactly that range, in order, inside their chunks.
        #[test]
        fn pieces_cover_the_range(size in 0u64..200, chunk in 1u64..40, a in 0u64..220, b in 0u64..220) {
            let m = Manifest { size, chunk_size: chunk, chunks: vec![[0; 32]; size.div_ceil(chunk) as usize] };
            let range = a.min(b)..a.max(b);
            let mut at = range.start;
            for (index, piece) in m.pieces(range.clone()) {
                let c = m.chunk_range(index);
                proptest::prop_assert_eq!(c.start + piece.start, at);
                proptest::prop_assert!(c.start + piece.end <= c.end);
                at = c.start + piece.end;
            }
            proptest::prop_assert_eq!(at, range.end.min(size).max(range.start));
        }

        /// Decoding accepts every manifest it encodes and nothing shaped otherwise.
        #[test]
        fn decode_inverts_encode(size in 0u64..(1 << 30), bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let m = Manifest::new(size, vec![[7; 32]; size.div_ceil(CHUNK_SIZE) as usize]);
            proptest::prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
            if let Ok(other) = Manifest::decode(&bytes) {
                proptest::prop_assert_eq!(other.encode(), bytes);
            }
        }
    }
}
