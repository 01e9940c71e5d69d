//! The block index of a blob: the MD5 and SHA-256 of every aligned 1 MiB block, computed
//! once while the blob is written and stored beside it (`<id>.idx`, 48 bytes per block).
//!
//! The mount reads aligned 1 MiB chunks. With the index, the server answers such a request
//! with its checksums without hashing the bytes again, and the client can verify them with
//! SHA-256, which runs several times faster than MD5 on CPUs with SHA extensions.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Size of an indexed block.
pub const INDEX_BLOCK: u64 = 1 << 20;
/// Bytes per index entry: MD5 (16) then SHA-256 (32).
pub const ENTRY_LEN: u64 = 48;

/// Checksums of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSums {
    /// Hex MD5.
    pub md5: String,
    /// Hex SHA-256 (plain, not the Git object encoding).
    pub sha256: String,
}

impl BlockSums {
    /// Decodes one 48-byte entry.
    pub fn decode(entry: &[u8]) -> Option<BlockSums> {
        // A short or zero-filled entry (what a crash leaves of an unsynced file) is no entry.
        if entry.len() != ENTRY_LEN as usize || entry.iter().all(|b| *b == 0) {
            return None;
        }
        Some(BlockSums { md5: hex::encode(&entry[..16]), sha256: hex::encode(&entry[16..]) })
    }
}

/// Builds the index while bytes stream through it, in any piece sizes.
#[derive(Default)]
pub struct BlockIndexer {
    md5: Md5,
    sha: Sha256,
    filled: u64,
    entries: Vec<u8>,
}

impl BlockIndexer {
    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((INDEX_BLOCK - self.filled) as usize).min(data.len());
            self.md5.update(&data[..take]);
            self.sha.update(&data[..take]);
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
    let aligned = range.start % INDEX_BLOCK == 0;
    let full = range.end == (range.start + INDEX_BLOCK).min(blob_len);
    (aligned && full && !range.is_empty()).then_some(range.start / INDEX_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::objects::md5_hex;

    #[test]
    fn entries_match_the_blocks_whatever_the_pieces() {
        let data: Vec<u8> = (0..(2 * INDEX_BLOCK as usize + 1000)).map(|i| (i * 13) as u8).collect();
        let mut indexer = BlockIndexer::default();
        for piece in data.chunks(300_001) {
            indexer.update(piece);
        }
        let index = indexer.finish();
        assert_eq!(index.len(), 3 * ENTRY_LEN as usize);
        for (i, block) in data.chunks(INDEX_BLOCK as usize).enumerate() {
            let sums = BlockSums::decode(&index[i * 48..(i + 1) * 48]).unwrap();
            assert_eq!(sums.md5, md5_hex(block));
            assert_eq!(sums.sha256, hex::encode(Sha256::digest(block)));
        }
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
}
