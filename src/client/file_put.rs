//! One small file written and committed in one request (`PUT /<repo>/<path>`).

use bytes::Bytes;
use reqwest::Method;

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::{
    FileCommitted, BLOB_ID_HEADER, COMMIT_MESSAGE_HEADER, FILE_MODE_HEADER, MTIME_HEADER,
};
use crate::base::manifest::blob_id;
use crate::base::paths::encode_path;

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
}

impl Client {
    /// Stores `data` at `path` and commits it, in one request; the server checks the bytes
    /// against the blob id computed here before it commits.
    pub async fn put_file(
        &self,
        path: &str,
        data: Bytes,
        options: &FilePutOptions,
        cancel: &CancellationToken,
    ) -> Result<FileCommitted> {
        let mut url = format!("{}/{}/{}", self.server, self.repo, encode_path(path));
        if let Some(branch) = &options.branch {
            url.push_str(&format!(
                "?ref={}",
                crate::base::paths::encode_segment(branch)
            ));
        }
        let id = blob_id(&data);
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
                    .header(BLOB_ID_HEADER, &id)
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
                expected: id,
                actual: committed.hash,
            });
        }
        Ok(committed)
    }
}
