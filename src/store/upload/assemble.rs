//! `complete`: an upload becomes a blob. When every upload chunk is recorded as stored
//! chunks, the manifest is written from the records alone and no byte is read; otherwise
//! the bytes are streamed in order through a [`crate::store::BlobWriter`], which cuts them
//! into chunks.

use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::records::{Received, Source};
use crate::api::BlobInfo;
use crate::base::manifest::BlobHasher;
use crate::store::chunks::chunk_path;
use crate::store::manifests::write_manifest;
use crate::store::{Result, Store, StoreError};

/// Refuses a set of upload chunks with a gap, or a short chunk that is not the last.
fn check_layout(received: &[Received], chunk_size: u64) -> Result<()> {
    for (position, r) in received.iter().enumerate() {
        if r.index != position as u64 {
            return Err(StoreError::InvalidInput(format!(
                "chunk {position} is missing"
            )));
        }
        if position + 1 < received.len() && r.len != chunk_size {
            return Err(StoreError::InvalidInput(format!(
                "chunk {} has {} bytes; every chunk but the last must have {chunk_size}",
                r.index, r.len
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Assembles the upload into a blob and removes the upload.
    pub async fn complete_upload(&self, repo: &str, id: &str, limit: u64) -> Result<BlobInfo> {
        let meta = self.upload_meta(repo, id).await?;
        let received = self.upload_records(repo, id, &meta).await?;
        check_layout(&received, meta.chunk_size)?;
        if received.iter().map(|r| r.len).sum::<u64>() > limit {
            return Err(StoreError::TooLarge { limit });
        }
        let all_stored = received
            .iter()
            .all(|r| matches!(r.source, Source::Chunks(_)));
        let info = if all_stored {
            self.manifest_from_records(repo, received).await?
        } else {
            self.restream(repo, received, limit).await?
        };
        self.abort_upload(repo, id).await?;
        Ok(info)
    }

    /// The blob of upload chunks that are all stored chunks: only the manifest is written.
    async fn manifest_from_records(&self, repo: &str, received: Vec<Received>) -> Result<BlobInfo> {
        let mut hasher = BlobHasher::new();
        for r in received {
            let Source::Chunks(chunks) = r.source else {
                unreachable!("checked by the caller");
            };
            for chunk in chunks {
                hasher.push_chunk(chunk.hash, chunk.len);
            }
        }
        let manifest = hasher.finish();
        let hash = write_manifest(&self.backend, repo, &manifest).await?;
        Ok(BlobInfo {
            hash,
            size: manifest.size,
            chunks: manifest.chunks.len() as u64,
        })
    }

    /// The blob of upload chunks some of which are raw bytes or unaligned copies: every byte
    /// is read in order (the next upload chunk while the current one is written) and cut
    /// into chunks again.
    async fn restream(&self, repo: &str, received: Vec<Received>, limit: u64) -> Result<BlobInfo> {
        let mut writer = self.begin_blob(repo, None, limit).await?;
        let mut reads = stream::iter(received)
            .map(|r| self.read_received(repo, r.source))
            .buffered(2);
        while let Some(data) = reads.next().await {
            match data {
                Ok(data) => writer.write(data).await?,
                Err(e) => {
                    writer.abort().await?;
                    return Err(e);
                }
            }
        }
        writer.finish().await
    }

    /// The bytes of one received upload chunk.
    async fn read_received(&self, repo: &str, source: Source) -> Result<Bytes> {
        match source {
            Source::Raw(path) => self.backend.get(&path).await,
            Source::Copied { blob, range } => self.read_blob_range(repo, &blob, range).await,
            Source::Chunks(chunks) => {
                let mut out = bytes::BytesMut::new();
                for chunk in chunks {
                    out.extend_from_slice(&self.backend.get(&chunk_path(repo, &chunk.hash)).await?);
                }
                Ok(out.freeze())
            }
        }
    }
}
