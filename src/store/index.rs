//! Block checksums: what the server knows of every aligned 1 MiB block of a blob without
//! hashing it again. A chunked blob has the CRC32C of each block beside each chunk
//! (`store/chunks.rs`). A legacy blob has an index beside it with the MD5, SHA-256 and
//! CRC32C of every block (`<id>.idx2`, 52 bytes per block; the oldest stores have `<id>.idx`,
//! 48 bytes per block, without CRC32C); [`BlockIndexer`] is how they were written.
//!
//! The mount reads aligned 1 MiB chunks. With the index, the server answers such a request
//! with its checksums without hashing the bytes again, and the client verifies the CRC32C,
//! which runs at memory speed (SSE4.2/PCLMUL): SHA-256 cost the mount 40% of its CPU on a
//! sequential read. CRC32C is what S3 and mountpoint-s3 check data with; it detects every
//! burst error up to 32 bits and misses a random corruption with probability 2^-32.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Size of an indexed block.
pub const INDEX_BLOCK: u64 = 1 << 20;
/// Bytes per index entry: MD5 (16), SHA-256 (32), then CRC32C (4, big-endian).
pub const ENTRY_LEN: u64 = 52;
/// Bytes per entry of an index written before CRC32C was added: MD5 then SHA-256.
pub const LEGACY_ENTRY_LEN: u64 = 48;

/// Checksums of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSums {
    /// Hex MD5 (legacy blobs only).
    pub md5: Option<String>,
    /// Hex SHA-256, plain (legacy blobs only).
    pub sha256: Option<String>,
    /// CRC32C (Castagnoli); `None` in the oldest legacy index.
    pub crc32c: Option<u32>,
}

impl BlockSums {
    /// Decodes one entry: 52 bytes, or 48 from a legacy index.
    pub fn decode(entry: &[u8]) -> Option<BlockSums> {
        // A short or zero-filled entry (what a crash leaves of an unsynced file) is no entry.
        let known_len =
            entry.len() == ENTRY_LEN as usize || entry.len() == LEGACY_ENTRY_LEN as usize;
        if !known_len || entry.iter().all(|b| *b == 0) {
            return None;
        }
        let crc32c = entry
            .get(48..52)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        Some(BlockSums {
            md5: Some(hex::encode(&entry[..16])),
            sha256: Some(hex::encode(&entry[16..48])),
            crc32c,
        })
    }
}

/// Builds the index while bytes stream through it, in any piece sizes.
pub struct BlockIndexer {
    md5: Md5,
    sha: Sha256,
    crc: crc_fast::Digest,
    filled: u64,
    entries: Vec<u8>,
}

impl Default for BlockIndexer {
    fn default() -> Self {
        BlockIndexer {
            md5: Md5::default(),
            sha: Sha256::default(),
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            filled: 0,
            entries: Vec::new(),
        }
    }
}

impl BlockIndexer {
    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((INDEX_BLOCK - self.filled) as usize).min(data.len());
            self.md5.update(&data[..take]);
            self.sha.update(&data[..take]);
            self.crc.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == INDEX_BLOCK {
                self.close_block();
            }
        }
    }

    fn close_block(&mut self) {
        self.entries.extend_from_slice(&self.md5.finalize_reset());
        self.entries.extend_from_slice(&self.sha.finalize_reset());
        self.entries
            .extend_from_slice(&(self.crc.finalize_reset() as u32).to_be_bytes());
        self.filled = 0;
    }

    /// The encoded index.
    pub fn finish(mut self) -> Vec<u8> {
        if self.filled > 0 {
            self.close_block();
        }
        self.entries
    }
}

/// The index block a byte range is exactly, if it is one (aligned start, one block long or
/// up to the end of the blob).
pub fn single_block(range: &std::ops::Range<u64>, blob_len: u64) -> Option<u64> {
    let aligned = range.start.is_multiple_of(INDEX_BLOCK);
    let full = range.end == (range.start + INDEX_BLOCK).min(blob_len);
    (aligned && full && !range.is_empty()).then_some(range.start / INDEX_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::checksum::{crc32c, md5_hex};

    #[test]
    fn entries_match_the_blocks_whatever_the_pieces() {
        let data: Vec<u8> = (0..(2 * INDEX_BLOCK as usize + 1000))
            .map(|i| (i * 13) as u8)
            .collect();
        let mut indexer = BlockIndexer::default();
        for piece in data.chunks(300_001) {
            indexer.update(piece);
        }
        let index = indexer.finish();
        assert_eq!(index.len(), 3 * ENTRY_LEN as usize);
        for (i, block) in data.chunks(INDEX_BLOCK as usize).enumerate() {
            let entry = ENTRY_LEN as usize;
            let sums = BlockSums::decode(&index[i * entry..(i + 1) * entry]).unwrap();
            assert_eq!(sums.md5, Some(md5_hex(block)));
            assert_eq!(sums.sha256, Some(hex::encode(Sha256::digest(block))));
            assert_eq!(sums.crc32c, Some(crc32c(block)));
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32/ISCSI in the CRC catalogue.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn legacy_entries_decode_without_crc() {
        let mut entry = vec![0u8; LEGACY_ENTRY_LEN as usize];
        entry[0] = 1;
        let sums = BlockSums::decode(&entry).unwrap();
        assert_eq!(sums.crc32c, None);
        assert!(BlockSums::decode(&entry[..47]).is_none());
        assert!(BlockSums::decode(&[0u8; 52]).is_none());
    }

    #[test]
    fn single_block_detection() {
        let len = 2 * INDEX_BLOCK + 10;
        assert_eq!(single_block(&(0..INDEX_BLOCK), len), Some(0));
        assert_eq!(single_block(&(2 * INDEX_BLOCK..len), len), Some(2));
        assert_eq!(single_block(&(1..INDEX_BLOCK), len), None);
        assert_eq!(single_block(&(0..INDEX_BLOCK - 1), len), None);
        assert_eq!(single_block(&(0..2 * INDEX_BLOCK), len), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 500,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..Default::default()
        })]

        /// Fuzzing (500 cases, moved from tests/hostile_input.rs): any decoded entry has the
        /// right sizes, and a range is one block only when it is exactly that block.
        #[test]
        fn fuzz_block_index(
            entry in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            len in 0u64..(1 << 40),
            a in proptest::prelude::any::<u64>(),
            b in proptest::prelude::any::<u64>(),
        ) {
            if let Some(sums) = BlockSums::decode(&entry) {
                proptest::prop_assert!(entry.len() == 48 || entry.len() == 52);
                proptest::prop_assert_eq!((sums.md5.map(|m| m.len()), sums.sha256.map(|s| s.len())), (Some(32), Some(64)));
            }
            // Ranges inside a blob of `len` bytes.
            let (start, end) = if len == 0 {
                (0, 0)
            } else {
                let (x, y) = (a % (len + 1), b % (len + 1));
                (x.min(y), x.max(y))
            };
            if let Some(block) = single_block(&(start..end), len) {
                proptest::prop_assert_eq!(start, block * INDEX_BLOCK);
                proptest::prop_assert_eq!(end, ((block + 1) * INDEX_BLOCK).min(len));
            }
        }
    }
}
