//! The commit journal of a local store: one fdatasync makes a whole commit durable.
//!
//! A commit is a handful of small new objects (a blob's chunk and manifest, trees, the commit)
//! and one ref update. Written as files, each needs its own fsync and its directory's: 14
//! flushes for one small file. Instead, the commit goes into one record appended to
//! `journal.log` at the store's root and flushed once; then its objects and its ref are written
//! as ordinary files, without fsync. A crash may lose those files (or leave them short), never
//! the record: opening the store replays every whole record (the objects written again, the
//! refs set in record order, all durably) and empties the journal. A record cut short by the
//! crash was never acknowledged and is dropped. When the journal passes
//! [`CHECKPOINT_BYTES`], one `syncfs` makes every file written so far durable and the journal
//! starts again empty.
//!
//! Records are framed as `[u32 length][u32 CRC32C of the payload][payload]` (big-endian). The
//! payload is a list of items, each `[u8 kind][u32 path length][path][u32 data length][data]`:
//! kind 0 an object (`data` its bytes), kind 1 a ref (`data` its new value).
//!
//! All appends, ref reads and checkpoints happen under the store's `refs.lock` `flock`, so
//! several processes on one store append in turn; replay is idempotent (it writes what the
//! files already hold), so a second process replaying while a server runs changes nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::base::checksum::crc32c;

/// Journal size at which its records are made durable as files and it is emptied.
pub(super) const CHECKPOINT_BYTES: u64 = 64 << 20;

/// The journal's file name, at the store's root.
const JOURNAL_NAME: &str = "journal.log";

const KIND_OBJECT: u8 = 0;
const KIND_REF: u8 = 1;

/// Bytes of a record's frame header.
const FRAME: usize = 8;

/// What one record holds: objects and ref values, by path relative to the store's root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub objects: Vec<(String, Vec<u8>)>,
    pub refs: Vec<(String, String)>,
}

impl Record {
    /// The framed bytes of this record.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        for (path, data) in &self.objects {
            push_item(&mut payload, KIND_OBJECT, path, data);
        }
        for (path, value) in &self.refs {
            push_item(&mut payload, KIND_REF, path, value.as_bytes());
        }
        let mut out = Vec::with_capacity(FRAME + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32c(&payload).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes one payload; `None` if it does not parse.
    fn decode(mut payload: &[u8]) -> Option<Record> {
        let mut record = Record::default();
        while !payload.is_empty() {
            let kind = *payload.first()?;
            payload = &payload[1..];
            let path = take_field(&mut payload)?;
            let data = take_field(&mut payload)?;
            let path = String::from_utf8(path.to_vec()).ok()?;
            match kind {
                KIND_OBJECT => record.objects.push((path, data.to_vec())),
                KIND_REF => record
                    .refs
                    .push((path, String::from_utf8(data.to_vec()).ok()?)),
                _ => return None,
            }
        }
        Some(record)
    }
}

fn push_item(out: &mut Vec<u8>, kind: u8, path: &str, data: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(path.len() as u32).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn take_field<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(input.get(..4)?.try_into().ok()?) as usize;
    let field = input.get(4..4 + len)?;
    *input = &input[4 + len..];
    Some(field)
}

/// The whole records at the start of `bytes`, and how many bytes they span (a cut or damaged
/// record ends the list: nothing after it was acknowledged).
pub(super) fn decode_records(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME) {
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + FRAME..at + FRAME + len) else {
            break;
        };
        if crc32c(payload) != crc {
            break;
        }
        let Some(record) = Record::decode(payload) else {
            break;
        };
        records.push(record);
        at += FRAME + len;
    }
    (records, at)
}

/// The journal file of the store at `root`.
pub(super) fn journal_path(root: &Path) -> PathBuf {
    root.join(JOURNAL_NAME)
}

/// Appends `record` and flushes it to the disk; returns the journal's new length. Call under
/// the refs lock.
pub(super) fn append(root: &Path, record: &Record) -> std::io::Result<u64> {
    let path = journal_path(root);
    let mut file = match OpenOptions::new().append(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(e) => return Err(e),
    };
    file.write_all(&record.encode())?;
    file.sync_data()?;
    file.metadata().map(|m| m.len())
}

/// Creates the journal and makes its name durable.
fn create(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().append(true).create(true).open(path)?;
    File::open(path.parent().expect("the journal has a directory"))?.sync_all()?;
    Ok(file)
}

/// Reads the journal's whole records. Call under the refs lock.
pub(super) fn read(root: &Path) -> std::io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    match File::open(journal_path(root)) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (records, used) = decode_records(&bytes);
    if used < bytes.len() {
        log::warn!(
            "{}: dropping {} bytes of a record cut short by a crash (it was never acknowledged)",
            journal_path(root).display(),
            bytes.len() - used
        );
    }
    Ok(records)
}

/// Makes every file written on the store's file system durable, then empties the journal.
/// Call under the refs lock.
pub(super) fn checkpoint(root: &Path) -> std::io::Result<()> {
    sync_file_system(root)?;
    match OpenOptions::new().write(true).open(journal_path(root)) {
        Ok(file) => {
            file.set_len(0)?;
            file.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One flush of the whole file system the store lives on (`syncfs`).
#[cfg(target_os = "linux")]
fn sync_file_system(root: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(root)?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether commits of a local store go through the journal: only where one call makes a
/// whole file system durable (`syncfs`, Linux). Elsewhere each file is fsynced as it is written.
pub(super) const AVAILABLE: bool = cfg!(target_os = "linux");

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            objects: vec![
                ("repos/r/objects/ab/abc".into(), b"tree bytes".to_vec()),
                ("repos/r/chunks/00/00ff".into(), vec![0; 5000]),
            ],
            refs: vec![("repos/r/refs/heads/main".into(), "c0ffee".into())],
        }
    }

    #[test]
    fn records_round_trip_and_a_cut_or_damaged_tail_is_dropped() {
        let mut bytes = sample().encode();
        let first = bytes.len();
        bytes.extend(Record::default().encode());
        bytes.extend(sample().encode());
        let (records, used) = decode_records(&bytes);
        assert_eq!(records, vec![sample(), Record::default(), sample()]);
        assert_eq!(used, bytes.len());
        for cut in [1, FRAME, FRAME + 3, first - 1] {
            let (records, used) = decode_records(&bytes[..first + FRAME + cut.min(first)]);
            assert!(records.len() <= 2, "cut {cut}");
            assert!(used <= first + FRAME, "cut {cut}");
        }
        let mut damaged = bytes.clone();
        damaged[first + FRAME + FRAME + 10] ^= 1;
        let (records, used) = decode_records(&damaged);
        assert_eq!(records, vec![sample(), Record::default()]);
        assert_eq!(used, first + FRAME);
    }

    #[test]
    fn appended_records_read_back_until_a_checkpoint_empties_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let len = append(dir.path(), &sample()).unwrap();
        assert_eq!(len, sample().encode().len() as u64);
        append(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![sample(), sample()]);
        if AVAILABLE {
            checkpoint(dir.path()).unwrap();
            assert!(read(dir.path()).unwrap().is_empty());
            assert_eq!(
                std::fs::metadata(journal_path(dir.path())).unwrap().len(),
                0
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]
        /// Any bytes decode to whole records only, and never past the input.
        #[test]
        fn random_journal_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let (_, used) = decode_records(&bytes);
            proptest::prop_assert!(used <= bytes.len());
        }
    }
}
