//! Wire types of the HTTP API (CONTRACT §3), shared by the server and the client.

use serde::{Deserialize, Deserializer, Serialize};

mod error;
pub mod stream;

pub use error::ErrorCode;

/// Name of the branch a repository starts with and that URLs without `?ref=` use.
pub const DEFAULT_BRANCH: &str = "main";
/// The repository that always exists.
pub const DEFAULT_REPO: &str = "default";
/// On an upload chunk PUT with an empty body: take the chunk's bytes from the same position
/// of this blob instead (an append to a huge file then sends only the new bytes).
pub const COPY_FROM_BLOB_HEADER: &str = "x-copy-from-blob";
/// With [`COPY_FROM_BLOB_HEADER`]: copy this many consecutive chunks from the index on, in
/// one request (the unchanged part of an appended file). Default 1.
pub const COPY_COUNT_HEADER: &str = "x-copy-count";
/// On an upload chunk PUT with an empty body: the chunk is these stored chunks of the
/// repository (comma-separated hex SHA-256, in order), so no bytes are sent.
pub const CHUNK_REFS_HEADER: &str = "x-chunk-sha256";
/// On a file PUT (`PUT /<repo>/<path>`): the blob id the client computed for the body; the
/// server refuses (422) to commit anything else.
pub const BLOB_ID_HEADER: &str = "x-blob-id";
/// On a file PUT: the Git mode of the entry (octal, `100644`, `100755` or `120000`).
pub const FILE_MODE_HEADER: &str = "x-file-mode";
/// On a file PUT: the entry's modification time, in Unix seconds.
pub const MTIME_HEADER: &str = "x-mtime";
/// On a file PUT: the commit message (UTF-8).
pub const COMMIT_MESSAGE_HEADER: &str = "x-commit-message";
/// Hashes a `POST …/chunks/missing` may ask about at once.
pub const MAX_CHUNKS_ASKED: usize = 4096;

/// `POST /api/v1/repos/:repo/chunks/missing` body: chunk hashes (hex SHA-256).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkList {
    pub chunks: Vec<String>,
}

/// `POST /api/v1/repos/:repo/chunks/missing` answer: those of the asked chunks the
/// repository does not hold, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingChunks {
    pub missing: Vec<String>,
}

/// `POST /api/v1/repos` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRepo {
    pub id: String,
}

/// One repository in `GET /api/v1/repos`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoInfo {
    pub id: String,
    pub head: Option<String>,
    pub created_at: String,
}

/// `GET /api/v1/repos` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoList {
    pub repositories: Vec<RepoInfo>,
    pub count: usize,
}

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
}

impl EntryType {
    /// The kind of an entry with this Git mode.
    pub fn of_git_mode(mode: u32) -> EntryType {
        match mode {
            crate::base::modes::MODE_DIR => EntryType::Directory,
            crate::base::modes::MODE_SYMLINK => EntryType::Symlink,
            _ => EntryType::File,
        }
    }
}

/// One entry of a directory listing, or the answer of `stat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Blob id for files and symlinks, tree id for directories.
    pub hash: String,
}

/// `GET …/tree/*path` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeListing {
    pub path: String,
    pub commit: String,
    pub entries: Vec<Entry>,
}

/// `POST …/uploads` body (all fields optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartUpload {
    /// Requested chunk size; the server may clamp it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
}

/// `POST …/uploads` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStarted {
    pub upload_id: String,
    pub chunk_size: u64,
}

/// `GET …/uploads/:id` answer, used to resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadStatus {
    pub received: Vec<u64>,
    pub bytes: u64,
}

/// A stored blob: `POST …/uploads/:id/complete` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobInfo {
    /// The blob id (the Merkle id of its manifest).
    pub hash: String,
    /// Its length in bytes.
    pub size: u64,
    /// How many chunks it is made of.
    pub chunks: u64,
}

/// One change of a commit request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Put {
        path: String,
        hash: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time to record; the commit time when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        #[serde(
            default,
            deserialize_with = "present_or_null",
            skip_serializing_if = "Option::is_none"
        )]
        expect: Option<Option<String>>,
    },
    Delete {
        path: String,
        #[serde(
            default,
            deserialize_with = "present_or_null",
            skip_serializing_if = "Option::is_none"
        )]
        expect: Option<Option<String>>,
    },
    Move {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
}

/// Tells a missing `expect` (no check: `None`) from `"expect": null` ("must not exist":
/// `Some(None)`).
fn present_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `POST …/commits` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitRequest {
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default)]
    pub message: String,
    pub changes: Vec<Change>,
}

/// `POST …/commits` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitCreated {
    pub commit: String,
    #[serde(rename = "ref")]
    pub branch: String,
}

/// `PUT /<repo>/<path>` answer: the blob stored and the commit that put it there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileCommitted {
    pub commit: String,
    #[serde(rename = "ref")]
    pub branch: String,
    pub hash: String,
    pub size: u64,
    pub chunks: u64,
}

/// One commit in `GET …/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub commit: String,
    pub parent: Option<String>,
    pub tree: String,
    pub message: String,
    pub timestamp: i64,
}

/// `GET …/log` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogListing {
    pub commits: Vec<LogEntry>,
}

/// The data of an `event: ref` on `GET …/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefEvent {
    #[serde(rename = "ref")]
    pub branch: String,
    pub commit: String,
    pub changed: Vec<String>,
}

/// Every error answer: `{"error": "...", "code": "..."}` (plus the conflicting path for 409).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_distinguishes_absent_and_null() {
        let absent: Change = serde_json::from_str(r#"{"op":"put","path":"a","hash":"h"}"#).unwrap();
        let null: Change =
            serde_json::from_str(r#"{"op":"put","path":"a","hash":"h","expect":null}"#).unwrap();
        let some: Change =
            serde_json::from_str(r#"{"op":"put","path":"a","hash":"h","expect":"x"}"#).unwrap();
        let get = |c: &Change| match c {
            Change::Put { expect, .. } => expect.clone(),
            _ => unreachable!(),
        };
        assert_eq!(get(&absent), None);
        assert_eq!(get(&null), Some(None));
        assert_eq!(get(&some), Some(Some("x".into())));
        // and it survives a round trip
        let back: Change = serde_json::from_str(&serde_json::to_string(&null).unwrap()).unwrap();
        assert_eq!(get(&back), Some(None));
    }
}
