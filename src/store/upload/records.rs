//! What an upload keeps of each upload chunk it received, one object per chunk index in
//! the upload's directory:
//! - `<index>.ref`: the stored chunks it is made of (JSON `[["<sha256>", len], …]`), or the
//!   same range of an existing blob that is not chunked alike, read at `complete` (JSON
//!   `{"blob","len"}`);
//! - `<index>.chunk`: its raw bytes (uploads whose chunk size is not a multiple of the
//!   store's chunk size);
//! - `<first>-<last>.ref`: a run of upload chunks copied at once from the same positions of
//!   an existing blob (one file for the unchanged part of an appended file), as a `.ref`.
//!
//! (`<index>.copy` is how a copy was recorded before; it is still read.) An upload whose
//! chunk size is a multiple of the store's only ever writes `.ref` records, so a new one
//! simply replaces the old: on S3 every upload chunk costs no more requests than it must. In
//! other uploads, writing one kind removes the other. A record of its
//! own also takes precedence over a run covering its index (it was written later: a run is
//! written only for chunks nobody sends again), and a new run removes what it covers.

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;

use super::{upload_prefix, UploadMeta};
use crate::base::manifest::{parse_chunk_hash, CHUNK_SIZE};
use crate::store::chunks::store_chunk;
use crate::store::{Result, Store, StoreError, StoredChunk};

/// A `.copy` record.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ChunkCopy {
    pub blob: String,
    pub len: u64,
}

/// What to record for one upload chunk.
pub(super) enum Record {
    Raw(Bytes),
    Copy(ChunkCopy),
    Chunks(Vec<StoredChunk>),
}

/// What a record's file name says: one upload chunk, or a run of them, and its kind.
struct RecordName<'a> {
    first: u64,
    last: u64,
    kind: &'a str,
}

impl<'a> RecordName<'a> {
    fn parse(name: &'a str) -> Option<RecordName<'a>> {
        let (indices, kind) = name.split_once('.')?;
        let (first, last) = match indices.split_once('-') {
            Some((a, b)) if kind == "ref" => (a.parse().ok()?, b.parse().ok()?),
            Some(_) => return None,
            None => {
                let i = indices.parse().ok()?;
                (i, i)
            }
        };
        (first <= last).then_some(RecordName { first, last, kind })
    }
}

/// Where the bytes of one received upload chunk are.
#[derive(Clone)]
pub(super) enum Source {
    Raw(Path),
    Copied {
        blob: String,
        range: std::ops::Range<u64>,
    },
    Chunks(Vec<StoredChunk>),
}

/// One received upload chunk.
#[derive(Clone)]
pub(super) struct Received {
    pub index: u64,
    pub len: u64,
    pub source: Source,
}

/// Kinds an upload chunk's own record may have been written as.
const KINDS: [&str; 3] = ["ref", "chunk", "copy"];

fn record_path(repo: &str, id: &str, index: u64, kind: &str) -> Path {
    Path::from(format!("{}/{index:010}.{kind}", upload_prefix(repo, id)))
}

fn run_path(repo: &str, id: &str, first: u64, last: u64) -> Path {
    Path::from(format!(
        "{}/{first:010}-{last:010}.ref",
        upload_prefix(repo, id)
    ))
}

fn encode_chunks(chunks: &[StoredChunk]) -> Bytes {
    let list: Vec<(String, u64)> = chunks
        .iter()
        .map(|c| (hex::encode(c.hash), c.len))
        .collect();
    Bytes::from(serde_json::to_vec(&list).expect("serializes"))
}

fn decode_copy(location: &Path, bytes: &[u8]) -> Result<ChunkCopy> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        id: location.to_string(),
        reason: e.to_string(),
    })
}

fn decode_chunks(location: &Path, bytes: &[u8]) -> Result<Vec<StoredChunk>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: location.to_string(),
        reason,
    };
    let list: Vec<(String, u64)> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    list.into_iter()
        .map(|(hash, len)| {
            let hash = parse_chunk_hash(&hash).map_err(|e| corrupt(e.to_string()))?;
            Ok(StoredChunk { hash, len })
        })
        .collect()
}

impl Store {
    /// Replaces whatever upload `id` recorded for chunk `index` with `record` (`aligned`: the
    /// upload's chunk size is a multiple of the store's).
    pub(super) async fn put_record(
        &self,
        repo: &str,
        id: &str,
        index: u64,
        record: Record,
        aligned: bool,
    ) -> Result<()> {
        let raw = matches!(record, Record::Raw(_));
        let (kind, bytes) = match record {
            Record::Raw(data) => ("chunk", data),
            Record::Copy(copy) => (
                "ref",
                Bytes::from(serde_json::to_vec(&copy).expect("serializes")),
            ),
            Record::Chunks(chunks) => ("ref", encode_chunks(&chunks)),
        };
        // Only an upload that has raw chunks can hold another kind for this index.
        if raw || !aligned {
            for other in KINDS.into_iter().filter(|k| *k != kind) {
                self.backend
                    .delete(&record_path(repo, id, index, other))
                    .await?;
            }
        }
        self.backend
            .put_scratch(&record_path(repo, id, index, kind), bytes)
            .await
    }

    /// Records upload chunks `first..=last` as the stored `chunks` (in order; every upload
    /// chunk of the run full but the last), replacing every record those indices had.
    pub(super) async fn put_run(
        &self,
        repo: &str,
        id: &str,
        (first, last): (u64, u64),
        chunks: &[StoredChunk],
    ) -> Result<()> {
        for m in self
            .backend
            .list(&Path::from(upload_prefix(repo, id)))
            .await?
        {
            let Some(name) = m.location.filename().and_then(RecordName::parse) else {
                continue;
            };
            if name.first <= last && first <= name.last {
                self.backend.delete(&m.location).await?;
            }
        }
        self.backend
            .put_scratch(&run_path(repo, id, first, last), encode_chunks(chunks))
            .await
    }

    /// Stores `data` as chunks of [`CHUNK_SIZE`], two at a time, in order.
    pub(super) async fn store_pieces(&self, repo: &str, data: Bytes) -> Result<Vec<StoredChunk>> {
        let pieces: Vec<Bytes> = (0..data.len())
            .step_by(CHUNK_SIZE as usize)
            .map(|start| data.slice(start..(start + CHUNK_SIZE as usize).min(data.len())))
            .collect();
        stream::iter(pieces)
            .map(|piece| {
                let backend = self.backend.clone();
                let repo = repo.to_string();
                async move {
                    tokio::spawn(async move { store_chunk(&backend, &repo, piece).await })
                        .await
                        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
                }
            })
            .buffered(2)
            .try_collect()
            .await
    }

    /// Every upload chunk received, by index: its own record, or else the run covering it.
    pub(super) async fn upload_records(
        &self,
        repo: &str,
        id: &str,
        meta: &UploadMeta,
    ) -> Result<Vec<Received>> {
        let listing = self
            .backend
            .list(&Path::from(upload_prefix(repo, id)))
            .await?;
        let read: Vec<(bool, Vec<Received>)> = stream::iter(listing)
            .map(|m| self.read_record(m, meta.chunk_size))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut by_index = std::collections::BTreeMap::new();
        // Runs first, so that records of their own replace them.
        for (_, received) in read.iter().filter(|(run, _)| *run) {
            for r in received {
                by_index.insert(r.index, r.clone());
            }
        }
        for (_, received) in read.into_iter().filter(|(run, _)| !*run) {
            for r in received {
                by_index.insert(r.index, r);
            }
        }
        Ok(by_index.into_values().collect())
    }

    /// Reads one listed object of an upload's directory: whether it is a run, and the upload
    /// chunks it records (none if it is not a record).
    async fn read_record(
        &self,
        m: object_store::ObjectMeta,
        chunk_size: u64,
    ) -> Result<(bool, Vec<Received>)> {
        let Some(name) = m.location.filename().and_then(RecordName::parse) else {
            return Ok((false, Vec::new()));
        };
        let index = name.first;
        let (len, source) = match name.kind {
            "chunk" => (m.size, Source::Raw(m.location.clone())),
            "ref" => {
                let bytes = self.backend.get(&m.location).await?;
                if bytes.first() == Some(&b'{') {
                    let copy = decode_copy(&m.location, &bytes)?;
                    let start = index * chunk_size;
                    let range = start..start + copy.len;
                    let source = Source::Copied {
                        blob: copy.blob,
                        range,
                    };
                    return Ok((
                        false,
                        vec![Received {
                            index,
                            len: copy.len,
                            source,
                        }],
                    ));
                }
                let chunks = decode_chunks(&m.location, &bytes)?;
                if name.last > name.first {
                    return Ok((true, split_run(index, chunks, chunk_size)));
                }
                (chunks.iter().map(|c| c.len).sum(), Source::Chunks(chunks))
            }
            "copy" => {
                let copy = decode_copy(&m.location, &self.backend.get(&m.location).await?)?;
                let start = index * chunk_size;
                let range = start..start + copy.len;
                (
                    copy.len,
                    Source::Copied {
                        blob: copy.blob,
                        range,
                    },
                )
            }
            _ => return Ok((false, Vec::new())),
        };
        Ok((false, vec![Received { index, len, source }]))
    }
}

/// The upload chunks of a run starting at `first`: its stored chunks in groups of one upload
/// chunk each.
fn split_run(first: u64, chunks: Vec<StoredChunk>, chunk_size: u64) -> Vec<Received> {
    let per = (chunk_size / CHUNK_SIZE).max(1) as usize;
    chunks
        .chunks(per)
        .enumerate()
        .map(|(k, group)| Received {
            index: first + k as u64,
            len: group.iter().map(|c| c.len).sum(),
            source: Source::Chunks(group.to_vec()),
        })
        .collect()
}
