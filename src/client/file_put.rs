//! One small file written and committed in one request (`PUT /<repo>/<path>`).

use bytes::Bytes;
use reqwest::Method;

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::{
    ErrorCode, FileCommitted, BLOB_ID_HEADER, COMMIT_MESSAGE_HEADER, FILE_MODE_HEADER, MTIME_HEADER,
};
use crate::base::manifest::{blob_id, CHUNK_SIZE};
use crate::base::paths::{encode_path, encode_segment, parent_and_name};

/// How a file is put: its attributes, the condition on what the path holds now, the commit.
#[derive(Debug, Clone, Default)]
pub struct FilePutOptions {
    /// The branch (the default branch when `None`).
    pub branch: Option<String>,
    /// Git mode (`0o100644`, `0o100755`, `0o120000`); the server's default when `None`.
    pub mode: Option<u32>,
    /// Modification time, Unix seconds; the commit's time when `None`.
    pub mtime: Option<i64>,
    /// `Some(Some(id))`: the path must hold blob `id`; `Some(None)`: it must not exist.
    pub expect: Option<Option<String>>,
    pub message: String,
    /// The blob id of the data when the caller has computed it already (it is computed from
    /// the data otherwise). The server refuses a body of another id.
    pub blob_id: Option<String>,
}

impl Client {
    /// Stores `data` at `path` and commits it, in one request; the server checks the bytes
    /// against the blob id computed here before it commits. A conditional put refused
    /// because the path holds exactly these bytes already succeeds: that is what a retry sees
    /// when the answer to its first attempt was lost.
    pub async fn put_file(
        &self,
        path: &str,
        data: Bytes,
        options: &FilePutOptions,
        cancel: &CancellationToken,
    ) -> Result<FileCommitted> {
        let id = match &options.blob_id {
            Some(id) => id.clone(),
            None => blob_id(&data),
        };
        let size = data.len() as u64;
        match self.put_file_once(path, data, &id, options, cancel).await {
            Err(
                e @ ClientError::Http {
                    code: ErrorCode::Conflict,
                    ..
                },
            ) => match self.holds(path, options, (&id, size), cancel).await {
                Some(done) => Ok(done),
                None => Err(e),
            },
            other => other,
        }
    }

    async fn put_file_once(
        &self,
        path: &str,
        data: Bytes,
        id: &str,
        options: &FilePutOptions,
        cancel: &CancellationToken,
    ) -> Result<FileCommitted> {
        let mut url = format!("{}/{}/{}", self.server, self.repo, encode_path(path));
        if let Some(branch) = &options.branch {
            url.push_str(&format!("?ref={}", encode_segment(branch)));
        }
        // A header cannot hold a line break.
        let message: String = options
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let response = self
            .send(cancel, || {
                let mut request = self
                    .request(Method::PUT, &url)
                    .header(BLOB_ID_HEADER, id)
                    .header(COMMIT_MESSAGE_HEADER, message.as_bytes())
                    .body(data.clone());
                if let Some(mode) = options.mode {
                    request = request.header(FILE_MODE_HEADER, format!("{mode:o}"));
                }
                if let Some(mtime) = options.mtime {
                    request = request.header(MTIME_HEADER, mtime.to_string());
                }
                match &options.expect {
                    Some(Some(hash)) => request.header("if-match", format!("\"{hash}\"")),
                    Some(None) => request.header("if-none-match", "*"),
                    None => request,
                }
            })
            .await?;
        let committed: FileCommitted = response.json().await.map_err(ClientError::Transport)?;
        if committed.hash != id {
            return Err(ClientError::Checksum {
                expected: id.to_string(),
                actual: committed.hash,
            });
        }
        Ok(committed)
    }

    /// The put of blob `id` at `path` as already done, if the branch holds it there now.
    async fn holds(
        &self,
        path: &str,
        options: &FilePutOptions,
        (id, size): (&str, u64),
        cancel: &CancellationToken,
    ) -> Option<FileCommitted> {
        let (dir, name) = parent_and_name(path.trim_matches('/'));
        let listing = self
            .list_dir(dir, options.branch.as_deref(), cancel)
            .await
            .ok()?;
        let entry = listing.entries.iter().find(|e| e.name == name)?;
        (entry.hash == id).then(|| FileCommitted {
            commit: listing.commit.clone(),
            branch: options
                .branch
                .clone()
                .unwrap_or_else(|| crate::api::DEFAULT_BRANCH.to_string()),
            hash: id.to_string(),
            size,
            chunks: size.div_ceil(CHUNK_SIZE),
        })
    }
}
