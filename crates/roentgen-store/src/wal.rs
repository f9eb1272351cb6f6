//! The write-ahead log.
//!
//! Files are numbered by generation: `wal/<generation>.wal`. Each starts with a magic header and
//! holds records framed as `u32 length | u32 crc32(payload) | payload`, little endian. A flush
//! starts a new generation at the moment it picks its traces, so the block it writes covers every
//! document of those traces in that generation and before. A generation is deleted once no live
//! trace has documents in it. Replay reads every remaining generation, skips documents a block
//! already covers, and stops at the first damaged record of a file: a torn tail is cut, never
//! fatal.

use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// Magic and format version 1 of a WAL file.
pub(crate) const WAL_MAGIC: &[u8; 8] = b"RGNWAL01";
const RECORD_HEADER: usize = 8;
/// No record is larger than this; a longer length field means the tail is damaged.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Where a document came from, kept in the log so replay restores the same accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Source {
    Api = 1,
    Udp = 2,
    Otlp = 3,
}

impl Source {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Api),
            2 => Some(Self::Udp),
            3 => Some(Self::Otlp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Udp => "udp",
            Self::Otlp => "otlp",
        }
    }
}

const KIND_DOCUMENT: u8 = 1;
/// Written by the first version-1 writer at the start of a generation; it carries nothing and
/// is skipped.
const KIND_CHECKPOINT: u8 = 2;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Document { source: Source, bytes: Vec<u8> },
    Checkpoint,
}

/// What precedes a document in its record: the frame (length and CRC of the payload) and the
/// payload's kind and source. The document's bytes follow.
pub(crate) type DocumentHeader = [u8; RECORD_HEADER + 2];

pub(crate) fn document_header(source: Source, doc: &[u8]) -> DocumentHeader {
    let mut header = [0; RECORD_HEADER + 2];
    header[..4].copy_from_slice(&((2 + doc.len()) as u32).to_le_bytes());
    header[RECORD_HEADER] = KIND_DOCUMENT;
    header[RECORD_HEADER + 1] = source as u8;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[RECORD_HEADER..]);
    crc.update(doc);
    header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    header
}

/// What replay found in one file.
#[derive(Debug, Default)]
pub(crate) struct FileContents {
    pub records: Vec<Record>,
    /// Length of the file up to the end of the last good record.
    pub good_len: u64,
    /// True when bytes after `good_len` were cut off.
    pub torn: bool,
}

pub(crate) fn decode(data: &[u8]) -> FileContents {
    let mut out = FileContents::default();
    if data.len() < WAL_MAGIC.len() || &data[..WAL_MAGIC.len()] != WAL_MAGIC {
        out.torn = !data.is_empty();
        return out;
    }
    let mut at = WAL_MAGIC.len();
    out.good_len = at as u64;
    while at < data.len() {
        let Some(header) = data.get(at..at + RECORD_HEADER) else { break };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD_BYTES {
            break;
        }
        let Some(payload) = data.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let record = match payload[0] {
            KIND_DOCUMENT if payload.len() >= 2 => match Source::from_u8(payload[1]) {
                Some(source) => Record::Document { source, bytes: payload[2..].to_vec() },
                None => break,
            },
            KIND_CHECKPOINT => Record::Checkpoint,
            _ => break,
        };
        out.records.push(record);
        at += RECORD_HEADER + len;
        out.good_len = at as u64;
    }
    out.torn = out.good_len < data.len() as u64;
    out
}

pub(crate) fn file_name(generation: u64) -> String {
    format!("{generation:020}.wal")
}

/// The generations present in `dir`, oldest first.
pub(crate) fn list_generations(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io(dir))? {
        let entry = entry.map_err(StoreError::io(dir))?;
        let name = entry.file_name();
        if let Some(generation) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse().ok()) {
            out.push(generation);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) fn read_file(path: &Path) -> Result<FileContents, StoreError> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).map_err(StoreError::io(path))?;
    Ok(decode(&data))
}

/// The file currently appended to.
#[derive(Debug)]
pub(crate) struct WalFile {
    file: File,
    path: PathBuf,
}

impl WalFile {
    /// Creates an empty generation, durably.
    pub fn create(dir: &Path, generation: u64) -> Result<Self, StoreError> {
        let path = dir.join(file_name(generation));
        let mut file =
            OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(StoreError::io(&path))?;
        file.write_all(WAL_MAGIC).map_err(StoreError::io(&path))?;
        file.sync_all().map_err(StoreError::io(&path))?;
        sync_dir(dir)?;
        Ok(Self { file, path })
    }

    /// Reopens an existing generation for appending, cutting a torn tail first.
    pub fn reopen(dir: &Path, generation: u64, good_len: u64) -> Result<Self, StoreError> {
        let path = dir.join(file_name(generation));
        let file = OpenOptions::new().write(true).open(&path).map_err(StoreError::io(&path))?;
        file.set_len(good_len).map_err(StoreError::io(&path))?;
        file.sync_all().map_err(StoreError::io(&path))?;
        let mut file = OpenOptions::new().append(true).open(&path).map_err(StoreError::io(&path))?;
        file.flush().map_err(StoreError::io(&path))?;
        Ok(Self { file, path })
    }

    /// Appends bytes given in pieces (a record's header, its document, the next header...)
    /// without first copying them into one buffer.
    pub fn append(&mut self, pieces: &[&[u8]]) -> Result<(), StoreError> {
        // One writev takes at most IOV_MAX (1,024 on Linux) pieces.
        for chunk in pieces.chunks(1024) {
            let mut slices: Vec<IoSlice<'_>> = chunk.iter().map(|piece| IoSlice::new(piece)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match self.file.write_vectored(rest) {
                    Ok(0) => return Err(StoreError::io(&self.path)(std::io::ErrorKind::WriteZero.into())),
                    Ok(n) => IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StoreError::io(&self.path)(e)),
                }
            }
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(StoreError::io(&self.path))
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_document(source: Source, doc: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&document_header(source, doc));
        out.extend_from_slice(doc);
    }

    fn file_with(records: &[Record]) -> Vec<u8> {
        let mut out = WAL_MAGIC.to_vec();
        for r in records {
            match r {
                Record::Document { source, bytes } => encode_document(*source, bytes, &mut out),
                Record::Checkpoint => {
                    out.extend_from_slice(&1u32.to_le_bytes());
                    out.extend_from_slice(&crc32fast::hash(&[KIND_CHECKPOINT]).to_le_bytes());
                    out.push(KIND_CHECKPOINT);
                }
            }
        }
        out
    }

    #[test]
    fn round_trip() {
        let records = vec![
            Record::Checkpoint,
            Record::Document { source: Source::Api, bytes: b"{\"a\":1}".to_vec() },
            Record::Document { source: Source::Udp, bytes: vec![] },
        ];
        let data = file_with(&records);
        let decoded = decode(&data);
        assert_eq!(decoded.records, records);
        assert!(!decoded.torn);
        assert_eq!(decoded.good_len, data.len() as u64);
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_good_record() {
        let records = vec![
            Record::Checkpoint,
            Record::Document { source: Source::Api, bytes: b"first".to_vec() },
            Record::Document { source: Source::Api, bytes: b"second".to_vec() },
        ];
        let data = file_with(&records);
        let whole = decode(&data).good_len;
        for cut in (WAL_MAGIC.len() + 1)..data.len() {
            let decoded = decode(&data[..cut]);
            assert!(decoded.good_len <= cut as u64);
            assert_eq!(decoded.torn, decoded.good_len < cut as u64);
            assert!(records.starts_with(&decoded.records));
        }
        let mut flipped = data.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let decoded = decode(&flipped);
        assert_eq!(decoded.records.len(), 2);
        assert!(decoded.torn && decoded.good_len < whole);
    }

    /// Records appended as pieces, more of them than one writev takes, read back whole.
    #[test]
    fn appended_pieces_replay() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Vec<u8>> = (0..1500).map(|n| format!("{{\"n\":{n}}}").repeat(n % 7).into_bytes()).collect();
        let headers: Vec<DocumentHeader> = docs.iter().map(|d| document_header(Source::Udp, d)).collect();
        let pieces: Vec<&[u8]> = headers.iter().zip(&docs).flat_map(|(h, d)| [&h[..], &d[..]]).collect();
        let mut wal = WalFile::create(dir.path(), 7).unwrap();
        wal.append(&pieces).unwrap();
        wal.sync().unwrap();
        let data = std::fs::read(dir.path().join(file_name(7))).unwrap();
        let expected: Vec<Record> =
            docs.into_iter().map(|bytes| Record::Document { source: Source::Udp, bytes }).collect();
        let decoded = decode(&data);
        assert_eq!(decoded.records, expected);
        assert!(!decoded.torn);
    }

    /// Format version 1, frozen: a file written by the first release must always replay.
    #[test]
    fn frozen_fixture_v1() {
        let data = include_bytes!("../tests/fixtures/wal-v1.wal");
        let decoded = decode(data);
        assert!(!decoded.torn);
        assert_eq!(decoded.records.len(), 3);
        assert_eq!(decoded.records[0], Record::Checkpoint);
        let Record::Document { source, bytes } = &decoded.records[1] else { panic!("not a document") };
        assert_eq!(*source, Source::Api);
        assert!(std::str::from_utf8(bytes).unwrap().contains("\"fixture\""));
        assert!(matches!(decoded.records[2], Record::Document { source: Source::Udp, .. }));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut with_magic = WAL_MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            let _ = decode(&with_magic);
            let _ = decode(&data);
        }
    }
}
