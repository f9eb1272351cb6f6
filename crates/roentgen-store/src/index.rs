//! A block's index: where each trace's documents are, in trace id order.
//!
//! Versions 1 to 4 give every trace a fixed-size entry (32 bytes, then 36). From version 5 on,
//! entries are encoded in pages of [`PAGE_ENTRIES`], each entry relative to the one before it:
//!
//! ```text
//! head      u8: bits 0-4 the number of bytes of the id's difference (0 to 16); bit 5 set when
//!           the trace's documents directly follow the previous entry's in the same chunk;
//!           bit 6 set when documents were dropped at the trace's size limit
//! id        the trace id minus the previous entry's, little endian, in that many bytes (the
//!           first entry of a page is its fence: a difference of 0, no bytes)
//! chunk     varint, then offset varint: only when bit 5 is clear
//! length    varint: bytes of the trace's documents in the chunk
//! count     varint: its documents
//! revision  varint
//! ```
//!
//! A trace id is 96 random bits after the epoch; sorted, a block's ids differ from one another
//! in about 80 bits, so an entry takes about 15 bytes where a fixed one took 36. The fences
//! section holds, per page, its first trace id and where it starts in the index, so a lookup
//! still reads one page.

use roentgen_model::TraceId;

/// Entries per index page (and per fence).
pub(crate) const PAGE_ENTRIES: usize = 128;
/// Bytes of a version 5 fence: the page's first trace id, u128, and its start in the index, u32.
pub(crate) const FENCE_BYTES: usize = 20;
const FIXED_ENTRY: usize = 36;
const FIXED_ENTRY_V2: usize = 32;
/// The top bit of a fixed entry's document count (version 3 and 4).
const FIXED_LIMIT_EXCEEDED: u32 = 1 << 31;
const FOLLOWS: u8 = 1 << 5;
const LIMIT_EXCEEDED: u8 = 1 << 6;
const DELTA_BYTES: u8 = 31;

/// Where one trace's documents are in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub chunk: usize,
    pub offset: usize,
    pub length: usize,
    pub count: usize,
    pub limit_exceeded: bool,
    /// The trace's revision (version 3 on).
    pub revision: Option<u32>,
}

impl IndexEntry {
    fn follows(&self, previous: &IndexEntry) -> bool {
        self.chunk == previous.chunk && Some(self.offset) == previous.offset.checked_add(previous.length)
    }
}

/// Writes a version 5 index, one entry at a time, in trace id order.
#[derive(Debug, Default)]
pub(crate) struct IndexWriter {
    index: Vec<u8>,
    fences: Vec<u8>,
    previous: Option<(u128, IndexEntry)>,
    entries: usize,
}

impl IndexWriter {
    pub fn with_capacity(traces: usize) -> Self {
        Self {
            index: Vec::with_capacity(traces * 16),
            fences: Vec::with_capacity(traces.div_ceil(PAGE_ENTRIES) * FENCE_BYTES),
            ..Self::default()
        }
    }

    pub fn push(&mut self, id: TraceId, entry: IndexEntry) {
        let id = id.as_u128();
        if self.entries.is_multiple_of(PAGE_ENTRIES) {
            self.fences.extend_from_slice(&id.to_le_bytes());
            self.fences.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
            self.previous = None;
        }
        let (base, follows) = match &self.previous {
            Some((previous_id, previous)) => (*previous_id, entry.follows(previous)),
            None => (id, false),
        };
        debug_assert!(id >= base, "entries in trace id order");
        let delta = id.wrapping_sub(base);
        let delta_bytes = (128 - delta.leading_zeros()).div_ceil(8) as u8;
        let mut head = delta_bytes;
        if follows {
            head |= FOLLOWS;
        }
        if entry.limit_exceeded {
            head |= LIMIT_EXCEEDED;
        }
        self.index.push(head);
        self.index.extend_from_slice(&delta.to_le_bytes()[..usize::from(delta_bytes)]);
        if !follows {
            put_varint(&mut self.index, entry.chunk as u64);
            put_varint(&mut self.index, entry.offset as u64);
        }
        put_varint(&mut self.index, entry.length as u64);
        put_varint(&mut self.index, entry.count as u64);
        put_varint(&mut self.index, u64::from(entry.revision.unwrap_or(1)));
        self.previous = Some((id, entry));
        self.entries += 1;
    }

    /// The index and fences sections.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        (self.index, self.fences)
    }
}

/// A block's fences, as kept in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct Fences {
    /// The first trace id of each page.
    ids: Vec<u128>,
    /// Where each page starts in the index (version 5 on).
    starts: Vec<u32>,
}

impl Fences {
    /// Reads a fences section of a block of `format_version`.
    pub fn parse(bytes: &[u8], format_version: u32) -> Option<Self> {
        let id = |record: &[u8]| u128::from_le_bytes(record[..16].try_into().expect("16 bytes"));
        if format_version >= 5 {
            if !bytes.len().is_multiple_of(FENCE_BYTES) {
                return None;
            }
            let records = bytes.chunks_exact(FENCE_BYTES);
            let starts: Vec<u32> =
                records.clone().map(|r| u32::from_le_bytes(r[16..].try_into().expect("4 bytes"))).collect();
            if !starts.is_sorted() {
                return None;
            }
            Some(Self { ids: records.map(id).collect(), starts })
        } else {
            if !bytes.len().is_multiple_of(16) {
                return None;
            }
            Some(Self { ids: bytes.chunks_exact(16).map(id).collect(), starts: Vec::new() })
        }
    }

    /// The page that would hold `id`: its number, or `None` when `id` comes before every page.
    pub fn page_of(&self, id: TraceId) -> Option<usize> {
        self.ids.partition_point(|&f| f <= id.as_u128()).checked_sub(1)
    }
}

/// Reads an index of any version.
pub(crate) struct IndexReader<'a> {
    bytes: &'a [u8],
    format_version: u32,
    fences: &'a Fences,
    /// The number of the next entry, counted from the start of the index.
    next: usize,
    /// The id the next entry's difference is from: the previous entry's, or its page's fence.
    base: u128,
    /// The previous entry of the same page.
    previous: Option<IndexEntry>,
}

impl<'a> IndexReader<'a> {
    /// Reads the whole index section.
    pub fn new(bytes: &'a [u8], format_version: u32, fences: &'a Fences) -> Self {
        Self { bytes, format_version, fences, next: 0, base: 0, previous: None }
    }

    /// The byte range, within the index section, of `page`, and its first entry's number; the
    /// last page ends at `index_len`.
    pub fn page_range(
        format_version: u32,
        fences: &Fences,
        page: usize,
        traces: usize,
        index_len: usize,
    ) -> Option<(std::ops::Range<usize>, usize)> {
        let first = page.checked_mul(PAGE_ENTRIES)?;
        if format_version >= 5 {
            let start = *fences.starts.get(page)? as usize;
            let end = fences.starts.get(page + 1).map_or(index_len, |&s| s as usize);
            (start <= end).then_some((start..end, first))
        } else {
            let size = fixed_size(format_version);
            let last = (first + PAGE_ENTRIES).min(traces);
            (first < last).then_some((first * size..last * size, first))
        }
    }

    /// Reads one page, given as its bytes and the number of its first entry.
    pub fn page(bytes: &'a [u8], first: usize, format_version: u32, fences: &'a Fences) -> Self {
        Self { bytes, format_version, fences, next: first, base: 0, previous: None }
    }

    /// The next entry; `None` at the end, and an error when the index is damaged.
    pub fn next_entry(&mut self) -> Result<Option<(TraceId, IndexEntry)>, &'static str> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let read = if self.format_version >= 5 { self.variable() } else { self.fixed() };
        let (id, entry) = read.ok_or("damaged index entry")?;
        self.next += 1;
        Ok(Some((TraceId::from_u128(id), entry)))
    }

    fn fixed(&mut self) -> Option<(u128, IndexEntry)> {
        let size = fixed_size(self.format_version);
        let e = self.bytes.get(..size)?;
        self.bytes = &self.bytes[size..];
        let field = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().expect("4 bytes"));
        let v3 = self.format_version >= 3;
        let count = field(28);
        let entry = IndexEntry {
            chunk: field(16) as usize,
            offset: field(20) as usize,
            length: field(24) as usize,
            count: (if v3 { count & !FIXED_LIMIT_EXCEEDED } else { count }) as usize,
            limit_exceeded: v3 && count & FIXED_LIMIT_EXCEEDED != 0,
            revision: v3.then(|| field(32)),
        };
        Some((u128::from_le_bytes(e[..16].try_into().expect("16 bytes")), entry))
    }

    fn variable(&mut self) -> Option<(u128, IndexEntry)> {
        if self.next.is_multiple_of(PAGE_ENTRIES) {
            self.base = *self.fences.ids.get(self.next / PAGE_ENTRIES)?;
            self.previous = None;
        }
        let bytes = self.bytes;
        let head = *bytes.first()?;
        let delta_bytes = usize::from(head & DELTA_BYTES);
        if delta_bytes > 16 {
            return None;
        }
        let mut wide = [0u8; 16];
        wide[..delta_bytes].copy_from_slice(bytes.get(1..1 + delta_bytes)?);
        let id = self.base.checked_add(u128::from_le_bytes(wide))?;
        let mut rest = bytes.get(1 + delta_bytes..)?;
        let mut varint = || {
            let (value, after) = postcard::take_from_bytes::<u64>(rest).ok()?;
            rest = after;
            usize::try_from(value).ok()
        };
        let (chunk, offset) = if head & FOLLOWS != 0 {
            let previous = self.previous?;
            (previous.chunk, previous.offset.checked_add(previous.length)?)
        } else {
            (varint()?, varint()?)
        };
        let length = varint()?;
        let count = varint()?;
        let revision = u32::try_from(varint()?).ok()?;
        let entry = IndexEntry {
            chunk,
            offset,
            length,
            count,
            limit_exceeded: head & LIMIT_EXCEEDED != 0,
            revision: Some(revision),
        };
        self.bytes = rest;
        self.base = id;
        self.previous = Some(entry);
        Some((id, entry))
    }
}

fn fixed_size(format_version: u32) -> usize {
    if format_version >= 3 { FIXED_ENTRY } else { FIXED_ENTRY_V2 }
}

/// Appends `value` as a varint, postcard's encoding of a u64.
fn put_varint(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(postcard::to_slice(&value, &mut [0; 10]).expect("a u64 takes ten bytes at most"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Entries as a block lays them out: each trace's documents after the previous one's, in
    /// chunks of about `chunk_bytes`.
    fn layout(lengths: &[(usize, usize, bool, u32)], chunk_bytes: usize) -> Vec<IndexEntry> {
        let (mut chunk, mut offset) = (0, 0);
        lengths
            .iter()
            .map(|&(length, count, limit_exceeded, revision)| {
                if offset > 0 && offset + length > chunk_bytes {
                    (chunk, offset) = (chunk + 1, 0);
                }
                let entry = IndexEntry { chunk, offset, length, count, limit_exceeded, revision: Some(revision) };
                offset += length;
                entry
            })
            .collect()
    }

    fn write(ids: &[u128], entries: &[IndexEntry]) -> (Vec<u8>, Fences) {
        let mut writer = IndexWriter::with_capacity(ids.len());
        for (id, entry) in ids.iter().zip(entries) {
            writer.push(TraceId::from_u128(*id), *entry);
        }
        let (index, fences) = writer.finish();
        (index, Fences::parse(&fences, 5).unwrap())
    }

    fn find(index: &[u8], fences: &Fences, count: usize, id: u128) -> Option<IndexEntry> {
        let page = fences.page_of(TraceId::from_u128(id))?;
        let (range, first) = IndexReader::page_range(5, fences, page, count, index.len()).unwrap();
        let mut reader = IndexReader::page(&index[range], first, 5, fences);
        while let Some((found, entry)) = reader.next_entry().unwrap() {
            if found.as_u128() >= id {
                return (found.as_u128() == id).then_some(entry);
            }
        }
        None
    }

    proptest! {
        #[test]
        fn every_entry_reads_back_in_order_and_by_lookup(
            mut ids in proptest::collection::btree_set(any::<u128>(), 0..700).prop_map(|s| s.into_iter().collect::<Vec<_>>()),
            lengths in proptest::collection::vec((1usize..70_000, 1usize..40, any::<bool>(), 1u32..5), 700),
            chunk_bytes in 4096usize..300_000,
        ) {
            ids.sort_unstable();
            let entries = layout(&lengths[..ids.len()], chunk_bytes);
            let (index, fences) = write(&ids, &entries);
            let mut reader = IndexReader::new(&index, 5, &fences);
            let mut read = Vec::new();
            while let Some((id, entry)) = reader.next_entry().unwrap() {
                read.push((id.as_u128(), entry));
            }
            prop_assert_eq!(read, ids.iter().copied().zip(entries.iter().copied()).collect::<Vec<_>>());
            for (id, entry) in ids.iter().zip(&entries) {
                prop_assert_eq!(find(&index, &fences, ids.len(), *id), Some(*entry));
                if !ids.contains(&id.wrapping_add(1)) {
                    prop_assert_eq!(find(&index, &fences, ids.len(), id.wrapping_add(1)), None);
                }
            }
        }

        #[test]
        fn damaged_indexes_are_refused_never_a_panic(
            index in proptest::collection::vec(any::<u8>(), 0..600),
            fences in proptest::collection::vec(any::<u8>(), 0..70),
        ) {
            if let Some(fences) = Fences::parse(&fences, 5) {
                let mut reader = IndexReader::new(&index, 5, &fences);
                while let Ok(Some(_)) = reader.next_entry() {}
            }
        }
    }

    #[test]
    fn a_realistic_entry_takes_under_half_a_fixed_one() {
        let mut ids: Vec<u128> = (0..50_000u128)
            .map(|i| {
                TraceId::from_parts(
                    1_795_000_000 + (i % 60) as u32,
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                )
                .as_u128()
            })
            .collect();
        ids.sort_unstable();
        let lengths: Vec<_> = (0..ids.len()).map(|i| (1500 + i % 4000, 1 + i % 3, false, 1)).collect();
        let entries = layout(&lengths, 256 << 10);
        let (index, fences) = write(&ids, &entries);
        let per_entry = (index.len() as f64 + fences.ids.len() as f64 * FENCE_BYTES as f64) / ids.len() as f64;
        assert!(per_entry < 17.0, "{per_entry} bytes an entry");
    }
}
