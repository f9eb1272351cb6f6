//! The store's contract: what was acknowledged survives restarts and interrupted flushes, late
//! segments make new revisions, and nothing is found twice.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use roentgen_model::{TraceId, parse_document};
use roentgen_query::TimeRangeType;
use roentgen_store::{Source, Store, StoreConfig, StoreError, StoredDocument, SummaryPage, SummaryQuery};

/// An hour ago: recent enough that the retention task started by `open` keeps it.
fn epoch() -> u32 {
    static EPOCH: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        (now - 3600) as u32
    })
}

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig { data_dir: dir.to_path_buf(), flush_interval_seconds: 3600.0, ..StoreConfig::default() }
}

fn trace(n: u32) -> TraceId {
    TraceId::from_parts(epoch() + n, u128::from(n) * 0x1_0000_0001 + 7)
}

fn doc(trace: TraceId, id: u64, extra: &str) -> Arc<StoredDocument> {
    let raw =
        format!(r#"{{"trace_id":"{trace}","id":"{id:016x}","name":"svc","start_time":{}.25,{extra}}}"#, trace.epoch());
    let parsed = parse_document(raw.as_bytes(), usize::MAX).expect("valid test document");
    Arc::new(StoredDocument { raw: raw.into(), parsed, source: Source::Api })
}

fn complete(trace: TraceId, id: u64) -> Arc<StoredDocument> {
    doc(trace, id, &format!(r#""end_time":{}.5"#, trace.epoch()))
}

fn ids(docs: &[Arc<StoredDocument>]) -> Vec<u64> {
    let mut ids: Vec<u64> = docs.iter().map(|d| d.id().as_u64()).collect();
    ids.sort_unstable();
    ids
}

/// Whether `done` holds within 10 s, asked every 20 ms.
async fn within_10_s(done: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    done()
}

fn all_time() -> SummaryQuery {
    SummaryQuery {
        start: 0.0,
        end: 4e9,
        range: TimeRangeType::TraceId,
        after: None,
        limit: 10_000,
        sample_rate: None,
        filter: None,
        ordered: true,
    }
}

#[tokio::test]
async fn traces_survive_flush_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..20).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    store.append(vec![complete(trace(0), 2)]).await.unwrap();
    assert_eq!(ids(&store.get_trace(trace(0)).await.unwrap().unwrap()), [1, 2]);

    store.flush_all().await.unwrap();
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(ids(&store.get_trace(trace(0)).await.unwrap().unwrap()), [1, 2]);
    store.append(vec![complete(trace(100), 1)]).await.unwrap();
    store.close().await.unwrap();

    let store = Store::open(config(dir.path())).await.unwrap();
    for i in 0..20 {
        assert!(store.get_trace(trace(i)).await.unwrap().is_some(), "trace {i} lost");
    }
    assert!(store.get_trace(trace(100)).await.unwrap().is_some(), "live trace lost over restart");
    assert!(store.get_trace(trace(55)).await.unwrap().is_none());
    let page = store.summaries(&all_time()).await.unwrap();
    assert_eq!(page.summaries.len(), 21);
    store.close().await.unwrap();
}

/// Blocks whose traces' epochs overlap and come in no order: a late segment for a trace in
/// any of them is found to be late (the catalog looks a new trace up among the blocks whose
/// latest epoch reaches it), before and after a restart.
#[tokio::test]
async fn late_segments_find_their_block_whatever_the_order_of_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let blocks: [&[u32]; 4] = [&[5, 100], &[500], &[50], &[1, 900]];
    for traces in blocks {
        store.append(traces.iter().map(|&n| complete(trace(n), 1)).collect()).await.unwrap();
        store.flush_all().await.unwrap();
    }
    let all: Vec<u32> = blocks.concat();
    store.append(all.iter().map(|&n| complete(trace(n), 2)).collect()).await.unwrap();
    for reopened in [false, true] {
        let store = if reopened { Store::open(config(dir.path())).await.unwrap() } else { store.clone() };
        let page = store.summaries(&all_time()).await.unwrap();
        assert_eq!(page.summaries.len(), all.len());
        for (summary, _) in &page.summaries {
            assert_eq!(
                (summary.revision, summary.document_count),
                (2, 2),
                "{} (reopened: {reopened})",
                summary.trace_id
            );
        }
        for &n in &all {
            assert_eq!(ids(&store.get_trace(trace(n)).await.unwrap().unwrap()), [1, 2]);
        }
        assert!(store.get_trace(trace(300)).await.unwrap().is_none());
        store.close().await.unwrap();
    }
}

/// Past `bloom_filter_bytes`, the blocks whose traces are the oldest keep no bloom filter: their
/// traces are still found, late segments for them still make new revisions, absent traces are
/// not found, and a restart keeps the newest blocks' filters.
#[tokio::test]
async fn blocks_past_the_bloom_filter_budget_are_looked_up_in_their_index() {
    let dir = tempfile::tempdir().unwrap();
    // A block of 50 traces has a filter of 512 bits: room for two of them.
    let small = || StoreConfig { bloom_filter_bytes: 150, ..config(dir.path()) };
    let store = Store::open(small()).await.unwrap();
    let traces = |block: u32| (0..50).map(move |i| trace(block * 100 + i));
    // Written newest first: which filters go follows the traces' epochs, not the writes' order.
    for block in [3, 1, 0, 2] {
        store.append(traces(block).map(|id| complete(id, 1)).collect()).await.unwrap();
        store.flush_all().await.unwrap();
    }
    let bloom_bytes = |store: &Store| store.stats().bloom_filter_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bloom_bytes(&store), 128);
    store.append(vec![complete(trace(7), 2), complete(trace(307), 2)]).await.unwrap();
    for reopened in [false, true] {
        let store = if reopened { Store::open(small()).await.unwrap() } else { store.clone() };
        // Reopened, with the block of the two late traces' revisions (8 bytes of filter).
        assert_eq!(bloom_bytes(&store), if reopened { 136 } else { 128 });
        for id in (0..4).flat_map(traces) {
            let late = id == trace(7) || id == trace(307);
            let docs = store.get_trace(id).await.unwrap().unwrap();
            assert_eq!(ids(&docs), if late { vec![1, 2] } else { vec![1] }, "{id} (reopened: {reopened})");
        }
        for absent in [60, 160, 260, 360] {
            assert!(store.get_trace(trace(absent)).await.unwrap().is_none());
        }
        store.flush_all().await.unwrap();
        let page = store.summaries(&all_time()).await.unwrap();
        assert_eq!(page.summaries.len(), 200);
        let revised: Vec<_> = page.summaries.iter().filter(|(s, _)| s.revision == 2).map(|(s, _)| s.trace_id).collect();
        assert_eq!(revised.len(), 2, "{revised:?}");
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn late_segments_make_a_new_revision_found_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let t = trace(1);
    store.append(vec![doc(t, 1, r#""in_progress":true"#)]).await.unwrap();
    store.flush_all().await.unwrap();
    let page = store.summaries(&all_time()).await.unwrap();
    assert!(page.summaries[0].0.is_partial);
    assert_eq!(page.summaries[0].0.revision, 1);

    store.append(vec![complete(t, 1), complete(t, 2)]).await.unwrap();
    let page = store.summaries(&all_time()).await.unwrap();
    assert_eq!(page.summaries.len(), 1);
    assert_eq!(page.summaries[0].0.revision, 2, "live late segments are a new revision");
    assert!(!page.summaries[0].0.is_partial, "the complete segment replaced the in-progress one");

    store.flush_all().await.unwrap();
    let page = store.summaries(&all_time()).await.unwrap();
    assert_eq!(page.summaries.len(), 1, "the superseded revision is not listed");
    assert_eq!(page.summaries[0].0.revision, 2);
    assert_eq!(page.summaries[0].0.document_count, 2);
    assert_eq!(ids(&store.get_trace(t).await.unwrap().unwrap()), [1, 2]);
    store.close().await.unwrap();

    let store = Store::open(config(dir.path())).await.unwrap();
    let page = store.summaries(&all_time()).await.unwrap();
    assert_eq!(page.summaries.len(), 1, "supersession survives a restart");
    store.close().await.unwrap();
}

#[tokio::test]
async fn paging_returns_each_trace_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..50).map(|i| complete(trace(i % 10), u64::from(i) + 1)).collect()).await.unwrap();
    store.flush_all().await.unwrap();
    store.append((10..25).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    let mut seen = Vec::new();
    let mut query = SummaryQuery { limit: 4, ..all_time() };
    loop {
        let page = store.summaries(&query).await.unwrap();
        seen.extend(page.summaries.iter().map(|(s, _)| s.trace_id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
        // New traces arriving between pages are newer than the cursor and do not disturb it.
        store.append(vec![complete(trace(900 + seen.len() as u32), 1)]).await.unwrap();
    }
    let expected: Vec<TraceId> = (0..25).rev().map(trace).collect();
    assert_eq!(seen, expected);
    store.close().await.unwrap();
}

/// A live trace's summary, made for one query, follows the documents that come in after it, and
/// the flush writes the summary of all of them.
#[tokio::test]
async fn a_live_summary_follows_later_documents_into_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let t = trace(1);
    let seen = |page: roentgen_store::SummaryPage| {
        let (s, _) = &page.summaries[0];
        (page.summaries.len(), s.is_partial, s.end_time)
    };
    store.append(vec![doc(t, 1, r#""in_progress":true"#)]).await.unwrap();
    assert_eq!(seen(store.summaries(&all_time()).await.unwrap()), (1, true, f64::from(t.epoch()) + 0.25));
    let end = f64::from(t.epoch()) + 3.5;
    store.append(vec![doc(t, 1, &format!(r#""end_time":{end}"#))]).await.unwrap();
    assert_eq!(seen(store.summaries(&all_time()).await.unwrap()), (1, false, end));
    store.append(vec![doc(t, 2, &format!(r#""end_time":{}"#, end + 1.0))]).await.unwrap();
    store.flush_all().await.unwrap();
    assert_eq!(seen(store.summaries(&all_time()).await.unwrap()), (1, false, end + 1.0));
    store.close().await.unwrap();
}

/// A late trace kept live is merged with its block revision once, not at every query: the
/// merged summary is kept until the trace changes, and graphs still count it once.
#[tokio::test]
async fn a_late_trace_is_merged_once_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let t = trace(1);
    store.append(vec![complete(t, 1)]).await.unwrap();
    store.flush_all().await.unwrap();
    store.append(vec![doc(t, 2, &format!(r#""end_time":{}.75"#, t.epoch()))]).await.unwrap();
    let late = |page: roentgen_store::SummaryPage| {
        assert_eq!(page.summaries.len(), 1);
        page.summaries[0].0.clone()
    };
    let first = late(store.summaries(&all_time()).await.unwrap());
    assert_eq!((first.revision, first.end_time), (2, f64::from(t.epoch()) + 0.75));
    let again = late(store.summaries(&all_time()).await.unwrap());
    assert!(Arc::ptr_eq(&first, &again), "the merged summary is kept");
    let requests = |graph: roentgen_query::ServiceGraph| {
        let svc = graph.nodes.iter().find(|n| n.key.name == "svc").unwrap();
        svc.series.statistics.total()
    };
    assert_eq!(requests(store.service_graph(0.0, 4e9).await.unwrap()), 2, "each segment once");
    store.append(vec![doc(t, 3, &format!(r#""end_time":{}.875"#, t.epoch()))]).await.unwrap();
    let changed = late(store.summaries(&all_time()).await.unwrap());
    assert_eq!((changed.revision, changed.end_time), (2, f64::from(t.epoch()) + 0.875));
    assert_eq!(requests(store.service_graph(0.0, 4e9).await.unwrap()), 3);
    store.flush_all().await.unwrap();
    let flushed = late(store.summaries(&all_time()).await.unwrap());
    assert_eq!((flushed.revision, flushed.end_time), (2, changed.end_time));
    assert_eq!(ids(&store.get_trace(t).await.unwrap().unwrap()), [1, 2, 3]);
    assert_eq!(requests(store.service_graph(0.0, 4e9).await.unwrap()), 3);
    store.close().await.unwrap();
}

#[tokio::test]
async fn torn_wal_tail_is_cut_and_the_rest_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append(vec![complete(trace(1), 1), complete(trace(2), 1)]).await.unwrap();
    store.close().await.unwrap();
    let wal = std::fs::read_dir(dir.path().join("wal")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&wal).unwrap();
    // A torn record right after the last document, where the zeros padding a direct write's
    // last page begin.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes.truncate(end);
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 1, b'{']);
    std::fs::write(&wal, &bytes).unwrap();

    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(store.get_trace(trace(1)).await.unwrap().is_some());
    assert!(store.get_trace(trace(2)).await.unwrap().is_some());
    assert_eq!(store.stats().wal_torn_bytes.load(std::sync::atomic::Ordering::Relaxed), 11);
    store.append(vec![complete(trace(3), 1)]).await.unwrap();
    store.close().await.unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert!(store.get_trace(trace(3)).await.unwrap().is_some(), "appends after a cut tail replay");
    store.close().await.unwrap();
}

fn wal_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

fn restore_wal(dir: &std::path::Path, saved: &[(std::path::PathBuf, Vec<u8>)]) {
    for entry in std::fs::read_dir(dir.join("wal")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    for (path, bytes) in saved {
        std::fs::write(path, bytes).unwrap();
    }
}

/// Crash after a block is committed but before the WAL generations it covers are deleted: the
/// replay skips what the block holds, so nothing is found twice.
#[tokio::test]
async fn crash_after_block_commit_does_not_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..5).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    store.sync().await.unwrap();
    let saved = wal_files(dir.path());
    store.flush_all().await.unwrap();
    store.append(vec![complete(trace(1), 2)]).await.unwrap();
    let late = wal_files(dir.path());
    store.close().await.unwrap();
    restore_wal(dir.path(), &[saved, late].concat());

    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(store.stats().documents_replayed.load(std::sync::atomic::Ordering::Relaxed), 1, "only the late one");
    assert_eq!(store.summaries(&all_time()).await.unwrap().summaries.len(), 5);
    assert_eq!(ids(&store.get_trace(trace(1)).await.unwrap().unwrap()), [1, 2]);
    assert_eq!(ids(&store.get_trace(trace(2)).await.unwrap().unwrap()), [1]);
    store.close().await.unwrap();
}

/// Crash after a block's data is written but before its meta commits it: the data is deleted
/// and the traces come back from the WAL, exactly once.
#[tokio::test]
async fn crash_before_block_commit_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..5).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    store.sync().await.unwrap();
    let saved = wal_files(dir.path());
    store.flush_all().await.unwrap();
    store.close().await.unwrap();
    restore_wal(dir.path(), &saved);
    for block in std::fs::read_dir(dir.path().join("blocks")).unwrap() {
        std::fs::remove_file(block.unwrap().path().join("meta.json")).unwrap();
    }

    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 0, "uncommitted block dropped");
    assert_eq!(store.summaries(&all_time()).await.unwrap().summaries.len(), 5);
    store.flush_all().await.unwrap();
    assert_eq!(store.summaries(&all_time()).await.unwrap().summaries.len(), 5);
    assert_eq!(ids(&store.get_trace(trace(3)).await.unwrap().unwrap()), [1]);
    store.close().await.unwrap();
}

/// A WAL of format 1, from before recycling, replays; appends then go to a new generation of
/// the current format, and both replay after a restart.
#[tokio::test]
async fn a_wal_of_format_1_replays_and_is_continued_in_format_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("wal")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wal-v1.wal"),
        dir.path().join("wal/00000000000000000001.wal"),
    )
    .unwrap();
    let fixture: TraceId = "1-5759e988-bd862e3fe1be46a994272793".parse().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.get_trace(fixture).await.unwrap().map(|d| d.len()), Some(2));
    store.append(vec![complete(trace(1), 1)]).await.unwrap();
    store.close().await.unwrap();
    let generations: Vec<String> =
        wal_files(dir.path()).iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(generations.len(), 2, "{generations:?}");
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().documents_replayed.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(store.get_trace(fixture).await.unwrap().map(|d| d.len()), Some(2));
    assert!(store.get_trace(trace(1)).await.unwrap().is_some());
    store.close().await.unwrap();
}

/// WAL generations are retired once nothing live needs them: each flush's new generation
/// overwrites a spare, and the spares never pass their limit.
#[tokio::test]
async fn wal_generations_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let names = |extension: &str| {
        wal_files(dir.path()).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == extension)).count()
    };
    for round in 0..6 {
        store.append(vec![complete(trace(round), 1)]).await.unwrap();
        store.flush_all().await.unwrap();
        assert_eq!(names("wal"), 1);
        assert_eq!(names("spare"), 1, "each new generation overwrites the spare the one before left");
    }
    store.close().await.unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(store.stats().documents_replayed.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(store.stats().wal_torn_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(store.summaries(&all_time()).await.unwrap().summaries.len(), 6);
    store.close().await.unwrap();
}

#[tokio::test]
async fn flushes_that_fail_lose_nothing_while_the_trace_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let (blocks, away) = (dir.path().join("blocks"), dir.path().join("blocks.away"));
    store.append(vec![complete(trace(1), 1), complete(trace(2), 1)]).await.unwrap();
    // No block can be written: a file stands where their directory was.
    std::fs::rename(&blocks, &away).unwrap();
    std::fs::write(&blocks, b"").unwrap();
    assert!(store.flush_all().await.is_err());
    // The trace goes on while its first documents wait for a block, and is cut again.
    store.append(vec![complete(trace(1), 2)]).await.unwrap();
    assert!(store.flush_all().await.is_err());
    std::fs::remove_file(&blocks).unwrap();
    std::fs::rename(&away, &blocks).unwrap();
    store.append(vec![complete(trace(1), 3)]).await.unwrap();
    store.flush_all().await.unwrap();
    assert_eq!(ids(&store.get_trace(trace(1)).await.unwrap().unwrap()), [1, 2, 3]);
    store.close().await.unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(ids(&store.get_trace(trace(1)).await.unwrap().unwrap()), [1, 2, 3]);
    assert_eq!(ids(&store.get_trace(trace(2)).await.unwrap().unwrap()), [1]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_second_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let err = Store::open(config(dir.path())).await.unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use by another roentgen process"));
    store.close().await.unwrap();
    Store::open(config(dir.path())).await.unwrap().close().await.unwrap();
}

#[tokio::test]
async fn retention_deletes_expired_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig { retention_days: 1.0, ..config(dir.path()) }).await.unwrap();
    store.append(vec![complete(trace(1), 1)]).await.unwrap();
    store.flush_all().await.unwrap();
    let now = f64::from(epoch());
    assert_eq!(store.apply_retention(now + 3600.0).await.unwrap(), 0);
    assert_eq!(store.apply_retention(now + 2.0 * 86_400.0).await.unwrap(), 1);
    assert!(store.get_trace(trace(1)).await.unwrap().is_none());
    assert_eq!(std::fs::read_dir(dir.path().join("blocks")).unwrap().count(), 0);
    store.close().await.unwrap();
}

/// A sender whose clock is far ahead does not keep a block past its retention: a block's data
/// is never newer than the block.
#[tokio::test]
async fn retention_is_not_put_off_by_times_in_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig { retention_days: 1.0, ..config(dir.path()) }).await.unwrap();
    let ahead = trace(1);
    let century = f64::from(ahead.epoch()) + 100.0 * 365.0 * 86_400.0;
    store.append(vec![complete(trace(2), 1), doc(ahead, 2, &format!(r#""end_time":{century}"#))]).await.unwrap();
    store.flush_all().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(store.apply_retention(now + 3600.0).await.unwrap(), 0);
    assert_eq!(store.apply_retention(now + 2.0 * 86_400.0).await.unwrap(), 1);
    assert!(store.get_trace(ahead).await.unwrap().is_none());
    store.close().await.unwrap();
}

/// Past `retention_bytes`, the blocks whose newest trace is the oldest go first, and the
/// newest block stays even alone over the bound.
#[tokio::test]
async fn retention_bounds_the_blocks_bytes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let stats = store.stats();
    let block_bytes = || stats.block_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let mut sizes = Vec::new();
    // Written newest first: the order of their data, not of their writing, decides.
    for n in [3, 2, 1] {
        let before = block_bytes();
        store.append(vec![complete(trace(n), 1)]).await.unwrap();
        store.flush_all().await.unwrap();
        sizes.push(block_bytes() - before);
    }
    store.close().await.unwrap();
    let (newest, middle) = (sizes[0], sizes[1]);

    // The retention task of `open` may have run first: what is left, not who deleted it, counts.
    let now = f64::from(epoch());
    let store = Store::open(StoreConfig { retention_bytes: newest + middle, ..config(dir.path()) }).await.unwrap();
    store.apply_retention(now).await.unwrap();
    assert!(store.get_trace(trace(1)).await.unwrap().is_none());
    assert!(store.get_trace(trace(2)).await.unwrap().is_some());
    assert_eq!(store.stats().block_bytes.load(std::sync::atomic::Ordering::Relaxed), newest + middle);
    store.close().await.unwrap();

    let store = Store::open(StoreConfig { retention_bytes: 1, ..config(dir.path()) }).await.unwrap();
    store.apply_retention(now).await.unwrap();
    assert!(store.get_trace(trace(2)).await.unwrap().is_none());
    assert!(store.get_trace(trace(3)).await.unwrap().is_some());
    assert_eq!(store.stats().block_bytes.load(std::sync::atomic::Ordering::Relaxed), newest);
    assert_eq!(store.apply_retention(now).await.unwrap(), 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn summaries_are_filtered_in_blocks_and_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..10).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    store
        .append(vec![doc(trace(3), 2, r#""end_time":1e10,"fault":true,"parent_id":"0000000000000001""#)])
        .await
        .unwrap();
    store.flush_all().await.unwrap();
    store
        .append(vec![doc(trace(20), 1, &format!(r#""end_time":{}.5,"fault":true"#, trace(20).epoch()))])
        .await
        .unwrap();
    let filter = Arc::new(roentgen_query::Filter::parse("service(\"svc\") { fault }").unwrap());
    let page = store.summaries(&SummaryQuery { filter: Some(filter), ..all_time() }).await.unwrap();
    let ids: Vec<TraceId> = page.summaries.iter().map(|(s, _)| s.trace_id).collect();
    assert_eq!(ids, [trace(20), trace(3)]);
    assert_eq!(page.scanned, 2, "the index leaves one block candidate and the one live trace to evaluate");
    let scan = Arc::new(roentgen_query::Filter::parse("fault OR fault").unwrap());
    let page = store.summaries(&SummaryQuery { filter: Some(scan), ..all_time() }).await.unwrap();
    assert_eq!(page.scanned, 11, "without an index every trace in range is evaluated, matching or not");
    store.close().await.unwrap();
}

/// A `TraceId` range finds exactly the traces whose id carries a time inside it, in a block
/// and live alike, and pages through them newest first, each once; `Event` and `Service` ranges
/// find a trace however long after its id's time it ended.
#[tokio::test]
async fn time_ranges_and_pages_find_each_trace_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    store.append((0..40).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    let late = TraceId::from_parts(epoch() + 10, 99);
    store.append(vec![doc(late, 1, &format!(r#""end_time":{}.5"#, epoch() + 1000))]).await.unwrap();
    store.flush_all().await.unwrap();
    let at = |n: f64| f64::from(epoch()) + n;
    for range in [TimeRangeType::Event, TimeRangeType::Service] {
        let window = |start: f64, end: f64| SummaryQuery { start, end, range, ..all_time() };
        let found =
            |page: roentgen_store::SummaryPage| page.summaries.iter().map(|(s, _)| s.trace_id).collect::<Vec<_>>();
        assert_eq!(found(store.summaries(&window(at(1000.0), at(1001.0))).await.unwrap()), [late], "{range:?}");
        assert_eq!(found(store.summaries(&window(at(3.0), at(5.0))).await.unwrap()), [trace(4), trace(3)], "{range:?}");
        assert!(found(store.summaries(&window(at(-100.0), at(0.0))).await.unwrap()).is_empty(), "{range:?}");
    }
    store.append((40..50).map(|i| complete(trace(i), 1)).collect()).await.unwrap();
    let query = |start: f64, end: f64, limit: usize| SummaryQuery { start, end, limit, ..all_time() };
    for (start, end, expected) in [
        (at(2.5), at(5.0), vec![4, 3]),
        (at(3.0), at(3.0), vec![]),
        (at(5.0), at(3.0), vec![]),
        (at(38.0), at(42.0), vec![41, 40, 39, 38]),
        (at(-10.0), at(1.0), vec![0]),
        (at(49.0), at(1e6), vec![49]),
    ] {
        let page = store.summaries(&query(start, end, 100)).await.unwrap();
        let found: Vec<TraceId> = page.summaries.iter().map(|(s, _)| s.trace_id).collect();
        let expected: Vec<TraceId> = expected.into_iter().map(trace).collect();
        assert_eq!(found, expected, "[{start}, {end})");
    }
    let mut paged = Vec::new();
    let mut page_query = query(at(0.0), at(50.0), 7);
    loop {
        let page = store.summaries(&page_query).await.unwrap();
        assert!(page.summaries.len() <= 7);
        paged.extend(page.summaries.iter().map(|(s, _)| s.trace_id));
        match page.next {
            Some(next) => page_query.after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<TraceId> = (0..50).map(trace).chain([late]).collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(paged, expected);
    store.close().await.unwrap();
}

/// Pages of every size, through blocks whose trace ids interleave and a newer block holding late
/// revisions, give what one page gives, filtered or sampled or not, in time range types whose
/// order is the trace ids' and one whose order is not.
#[tokio::test]
async fn pages_across_interleaved_blocks_agree_with_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    // Every fifth trace ends 20 s after it began: by end time it comes before those of the
    // next 20 seconds.
    let tagged = |i: u32, id: u64| {
        let end = trace(i).epoch() + if i.is_multiple_of(5) { 20 } else { 0 };
        doc(trace(i), id, &format!(r#""annotations":{{"tenant":"t{}"}},"end_time":{end}.5"#, i % 3))
    };
    for block in 0..3 {
        store.append((0..40).filter(|i| i % 3 == block).map(|i| tagged(i, 1)).collect()).await.unwrap();
        store.flush_all().await.unwrap();
    }
    store.append((0..40).filter(|i| i % 4 == 1).map(|i| tagged(i, 2)).collect()).await.unwrap();
    store.flush_all().await.unwrap();
    store.append((40..46).map(|i| tagged(i, 1)).collect()).await.unwrap();
    for range in [TimeRangeType::TraceId, TimeRangeType::Event] {
        let filters = [None, Some("annotation.tenant = \"t1\""), Some("responsetime >= 0")];
        for (filter, sample_rate) in filters.into_iter().flat_map(|f| [(f, None), (f, Some(0.5))]) {
            let filter = filter.map(|f| Arc::new(roentgen_query::Filter::parse(f).unwrap()));
            let query = SummaryQuery { range, filter, sample_rate, ..all_time() };
            let whole = store.summaries(&query).await.unwrap();
            let whole: Vec<TraceId> = whole.summaries.iter().map(|(s, _)| s.trace_id).collect();
            assert!(whole.len() >= 5, "{range:?}: {} traces", whole.len());
            for limit in [1, 2, 5, 7] {
                let mut paged = Vec::new();
                let mut query = SummaryQuery { limit, ..query.clone() };
                loop {
                    let page = store.summaries(&query).await.unwrap();
                    paged.extend(page.summaries.iter().map(|(s, _)| s.trace_id));
                    match page.next {
                        Some(next) => query.after = Some(next),
                        None => break,
                    }
                }
                assert_eq!(paged, whole, "{range:?}, {:?}, {sample_rate:?}, pages of {limit}", query.filter);
            }
        }
    }
    store.close().await.unwrap();
}

/// Index lookups and full scans give the same answers.
#[tokio::test]
async fn indexed_and_scanned_filters_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let docs: Vec<Arc<StoredDocument>> = (0..60)
        .map(|i| {
            let fault = if i % 7 == 0 { r#""fault":true,"# } else { "" };
            doc(
                trace(i),
                1,
                &format!(r#"{fault}"annotations":{{"tenant":"t{}"}},"end_time":{}.5"#, i % 5, trace(i).epoch()),
            )
        })
        .collect();
    store.append(docs).await.unwrap();
    store.flush_all().await.unwrap();
    let run = |text: &str| {
        let filter = Arc::new(roentgen_query::Filter::parse(text).unwrap());
        let store = store.clone();
        async move {
            let page = store.summaries(&SummaryQuery { filter: Some(filter), ..all_time() }).await.unwrap();
            page.summaries.iter().map(|(s, _)| s.trace_id).collect::<Vec<_>>()
        }
    };
    for (indexed, scanned) in [
        ("annotation.tenant = \"t3\"", "annotation.tenant = \"t3\" OR annotation.tenant = \"t3\""),
        ("service(\"svc\") { fault }", "service(\"svc\") { fault } OR service(\"svc\") { fault }"),
        (
            "service() { fault } annotation.tenant = \"t0\"",
            "(service() { fault } OR fault) AND annotation.tenant = \"t0\"",
        ),
        ("annotation.tenant = \"absent\"", "annotation.tenant = \"absent\" OR annotation.tenant = \"absent\""),
    ] {
        let (a, b) = (run(indexed).await, run(scanned).await);
        assert_eq!(a, b, "{indexed}");
        assert!(!a.is_empty() || indexed.contains("absent"), "{indexed} matched nothing");
    }
    store.close().await.unwrap();
}

/// A graph as comparable text, nodes and edges by identity: rollups add them in another order.
/// Moves the store to a phase of a live-then-blocks test: `flushed` writes every live trace into
/// a block, `reopened` restarts the store on the same directory; any other phase leaves it be.
async fn enter(store: &mut Store, phase: &str, dir: &std::path::Path) {
    match phase {
        "flushed" => store.flush_all().await.unwrap(),
        "reopened" => {
            store.close().await.unwrap();
            *store = Store::open(config(dir)).await.unwrap();
        }
        _ => {}
    }
}

fn canonical(graph: &roentgen_query::ServiceGraph) -> Vec<String> {
    let series = |s: &roentgen_query::Series| {
        let st = &s.statistics;
        format!(
            "ok={} thr={} err={} fault={} rt={} {:?} [{}, {}]",
            st.ok,
            st.throttle,
            st.other_error,
            st.fault,
            st.total_response_micros,
            s.response_times,
            s.start_time,
            s.end_time
        )
    };
    let mut lines: Vec<String> = graph
        .nodes
        .iter()
        .map(|n| {
            let mut edges: Vec<String> = n
                .edges
                .iter()
                .map(|e| {
                    format!("-> {:?}/{} {}", graph.nodes[e.target].key, graph.nodes[e.target].client, series(&e.series))
                })
                .collect();
            edges.sort();
            format!(
                "{:?}/{} root={} active={} {} {:?} {edges:?}",
                n.key,
                n.client,
                n.root,
                n.active,
                series(&n.series),
                n.durations
            )
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn service_graph_from_rollups_equals_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(config(dir.path())).await.unwrap();
    let call = |t: TraceId, n: u32| {
        let fault = if n.is_multiple_of(7) { r#","fault":true"# } else { "" };
        doc(
            t,
            1,
            &format!(
                r#""end_time":{e}.5{fault},"subsegments":[{{"id":"00000000000000aa","name":"api{}","namespace":"remote","start_time":{e}.3,"end_time":{e}.4{fault}}}]"#,
                n % 3,
                e = t.epoch()
            ),
        )
    };
    // 35 minutes of traces over two blocks, then a late segment for a flushed trace and live ones.
    let spread = |n: u32| TraceId::from_parts(epoch() + n * 5, u128::from(n) * 0x1_0000_0001 + 7);
    store.append((0..200).map(|n| call(spread(n), n)).collect()).await.unwrap();
    store.flush_all().await.unwrap();
    store.append((200..400).map(|n| call(spread(n), n)).collect()).await.unwrap();
    store.flush_all().await.unwrap();
    store.append(vec![complete(spread(10), 2)]).await.unwrap();
    store.append((400..420).map(|n| call(spread(n), n)).collect()).await.unwrap();

    let base = f64::from(epoch());
    let aligned = (base / 600.0).ceil() * 600.0;
    let windows = [
        (0.0, 4e9),
        (base, base + 2100.0),
        (aligned, aligned + 1200.0),
        (aligned - 0.5, aligned + 1260.25),
        (base + 13.7, base + 1250.1),
        (base + 5.0, base + 6.0),
    ];
    // Windows at the edges of what f64 seconds can name answer, empty, instead of overflowing.
    for (start, end) in [(7e299, 1e301), (-1e300, -1e299), (-7e299, 7e299)] {
        let graph = store.service_graph(start, end).await.unwrap();
        assert_eq!(graph.nodes.is_empty(), start > 0.0 || end < 0.0, "window {start}..{end}");
    }
    // Live and in blocks, then all in blocks, then with the rollups read back from the blocks.
    for phase in ["late segment live", "flushed", "reopened"] {
        enter(&mut store, phase, dir.path()).await;
        graphs_equal_a_scan(&store, &windows, phase).await;
    }
}

/// Where every trace calls services of its own, a block keeps no rollups (they would take more
/// memory than its summaries), and graphs over it, read from its summaries, are still a scan's:
/// flushed, read back, and compacted.
#[tokio::test]
async fn one_off_service_names_keep_no_rollups_and_graphs_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StoreConfig { compaction_target_traces: 4_000, compaction_interval_seconds: 3600.0, ..config(dir.path()) };
    let mut store = Store::open(config.clone()).await.unwrap();
    let one_off = |n: u32| {
        let t = TraceId::from_parts(epoch() + n % 900, u128::from(n) * 0x1_0000_0001 + 11);
        let raw = format!(
            r#"{{"trace_id":"{t}","id":"{:016x}","name":"host-{n}","start_time":{e}.25,"end_time":{e}.5,"subsegments":[{{"id":"00000000000000aa","name":"peer-{n}","namespace":"remote","start_time":{e}.3,"end_time":{e}.4}}]}}"#,
            n + 1,
            e = t.epoch()
        );
        let parsed = parse_document(raw.as_bytes(), usize::MAX).unwrap();
        Arc::new(StoredDocument { raw: raw.into(), parsed, source: Source::Api })
    };
    for half in [0..700, 700..1400] {
        store.append(half.map(one_off).collect()).await.unwrap();
        store.flush_all().await.unwrap();
    }
    let without = |store: &Store| store.stats().blocks_without_rollups.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(without(&store), 2);
    let base = f64::from(epoch());
    let windows = [(0.0, 4e9), (base, base + 300.0), (base + 61.0, base + 125.0)];
    graphs_equal_a_scan(&store, &windows, "flushed").await;
    // A later block moves the log past the first two, which may then be merged.
    store.append(vec![one_off(1400)]).await.unwrap();
    store.flush_all().await.unwrap();
    assert!(store.compact().await.unwrap() >= 2);
    assert_eq!(without(&store), 3, "the merged block keeps none either");
    graphs_equal_a_scan(&store, &windows, "compacted").await;
    enter(&mut store, "reopened", dir.path()).await;
    graphs_equal_a_scan(&store, &windows, "reopened").await;
    store.close().await.unwrap();
}

/// The store's service graph of each window is the graph of the summaries it returns.
async fn graphs_equal_a_scan(store: &Store, windows: &[(f64, f64)], phase: &str) {
    for &(start, end) in windows {
        let (start, end) = roentgen_query::whole_minutes(start, end);
        let query =
            SummaryQuery { start, end, range: TimeRangeType::Event, limit: usize::MAX, ordered: false, ..all_time() };
        let mut scanned = roentgen_query::ServiceGraph::default();
        for (summary, _) in store.summaries(&query).await.unwrap().summaries {
            scanned.add(&summary);
        }
        let rolled = store.service_graph(start, end).await.unwrap();
        assert!(!scanned.nodes.is_empty(), "window {start}..{end} is empty");
        assert_eq!(canonical(&rolled), canonical(&scanned), "window {start}..{end}, {phase}");
    }
}

/// A consumer's link to the call that sent its message becomes a `link` edge from the queue,
/// whether the consumer is live, flushed, or read back after a restart.
#[tokio::test]
async fn links_become_edges_from_the_sending_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(config(dir.path())).await.unwrap();
    let (producer, consumer) = (trace(1), trace(2));
    let sent = f64::from(producer.epoch()) + 0.3;
    store
        .append(vec![doc(
            producer,
            1,
            &format!(
                r#""end_time":{e}.5,"subsegments":[{{"id":"00000000000000aa","name":"SQS","namespace":"aws","start_time":{sent},"end_time":{e}.4,
                "aws":{{"operation":"SendMessage","queue_url":"https://sqs.us-east-1.amazonaws.com/1/jobs"}}}}]"#,
                e = producer.epoch()
            ),
        )])
        .await
        .unwrap();
    store.flush_all().await.unwrap();
    let received = f64::from(consumer.epoch()) + 0.25;
    store
        .append(vec![doc(
            consumer,
            2,
            &format!(
                r#""end_time":{}.5,"links":[{{"trace_id":"{producer}","id":"00000000000000aa"}},{{"trace_id":"{}","id":"00000000000000bb"}}]"#,
                consumer.epoch(),
                trace(3)
            ),
        )])
        .await
        .unwrap();
    for phase in ["consumer live", "flushed", "reopened"] {
        enter(&mut store, phase, dir.path()).await;
        let graph = store.service_graph(0.0, 4e9).await.unwrap();
        let queue = graph.nodes.iter().find(|n| n.key.name == "jobs").unwrap_or_else(|| panic!("{phase}: no queue"));
        let links: Vec<_> = queue.edges.iter().filter(|e| e.link).collect();
        assert_eq!(links.len(), 1, "{phase}: the link into an unknown trace is left out");
        assert_eq!(graph.nodes[links[0].target].key.name, "svc", "{phase}");
        let statistics = &links[0].series.statistics;
        assert_eq!(statistics.ok, 1, "{phase}");
        assert!((statistics.total_response_time() - (received - sent)).abs() < 1e-3, "{phase}: the event's age");
    }
}

/// A trace stops growing at `max_trace_bytes`, live and across revisions, and says so; a
/// replacement of a document it holds is still taken.
#[tokio::test]
async fn a_trace_past_its_size_limit_keeps_what_fits_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { max_trace_bytes: 300, ..config(dir.path()) };
    let mut store = Store::open(config.clone()).await.unwrap();
    let t = trace(1);
    let small = trace(2);
    store.append(vec![complete(t, 1), complete(t, 2), complete(small, 1)]).await.unwrap();
    let limited = |stored: roentgen_store::StoredTrace| (ids(&stored.docs), stored.limit_exceeded);
    // Each document is about 110 bytes: two fit under 300, a third does not.
    store.append(vec![complete(t, 3)]).await.unwrap();
    assert_eq!(limited(store.trace(t).await.unwrap().unwrap()), (vec![1, 2], true));
    assert_eq!(limited(store.trace(small).await.unwrap().unwrap()), (vec![1], false));
    store.flush_all().await.unwrap();
    // A late document for the stored trace is over the limit too; a replacement is not.
    store.append(vec![complete(t, 4), doc(t, 2, &format!(r#""end_time":{}.75"#, t.epoch()))]).await.unwrap();
    store.flush_all().await.unwrap();
    store.close().await.unwrap();
    store = Store::open(config).await.unwrap();
    let stored = store.trace(t).await.unwrap().unwrap();
    let replaced = stored.docs.iter().find(|d| d.id().as_u64() == 2).unwrap();
    assert_eq!(replaced.parsed.entity().end_time(), Some(f64::from(t.epoch()) + 0.75));
    assert_eq!(limited(stored), (vec![1, 2], true));
}

/// Everything a reader can see of the store: each trace's documents, limit flag and revision,
/// and the service graph.
async fn snapshot(store: &Store, traces: &[TraceId]) -> (Vec<(Vec<u64>, bool, u32)>, Vec<String>) {
    let mut seen = Vec::new();
    let summaries = store.summaries(&all_time()).await.unwrap().summaries;
    for &id in traces {
        let stored = store.trace(id).await.unwrap().unwrap();
        let revision = summaries.iter().find(|(s, _)| s.trace_id == id).map(|(s, _)| s.revision).unwrap();
        seen.push((ids(&stored.docs), stored.limit_exceeded, revision));
    }
    assert_eq!(summaries.len(), traces.len(), "each trace once");
    (seen, canonical(&store.service_graph(0.0, 4e9).await.unwrap()))
}

/// Small blocks are merged into one: every trace reads back the same, the revision a late
/// segment made replaces the old one, graphs are unchanged, and a crash between committing the
/// merged block and deleting its inputs leaves no duplicate. With chunks of 512 KiB, each block's
/// one chunk is small and its traces are compressed again; with chunks of 4 KiB, most are
/// copied as they are, one of them with the superseded revision inside.
#[tokio::test]
async fn compaction_merges_small_blocks_and_drops_superseded_revisions() {
    for block_chunk_bytes in [512 << 10, 4096] {
        merges_small_blocks(block_chunk_bytes).await;
    }
}

async fn merges_small_blocks(block_chunk_bytes: u32) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        compaction_target_traces: 40,
        compaction_interval_seconds: 3600.0,
        block_chunk_bytes,
        ..config(dir.path())
    };
    let mut store = Store::open(config.clone()).await.unwrap();
    let traces: Vec<TraceId> =
        (0..30).map(|n| TraceId::from_parts(epoch() + n * 7, u128::from(n) * 0x1_0000_0001 + 9)).collect();
    let with_call = |t: TraceId, n: u32| {
        doc(
            t,
            1,
            &format!(
                r#""end_time":{e}.5,"metadata":{{"default":{{"pad":"{pad}"}}}},"subsegments":[{{"id":"00000000000000aa","name":"db{}","namespace":"remote","start_time":{e}.3,"end_time":{e}.4}}]"#,
                n % 4,
                e = t.epoch(),
                pad = "x".repeat(600)
            ),
        )
    };
    // Five blocks of six traces (each under a quarter of the target), then a revision of trace 0.
    for chunk in 0..5u32 {
        let docs = (chunk * 6..chunk * 6 + 6).map(|n| with_call(traces[n as usize], n)).collect();
        store.append(docs).await.unwrap();
        store.flush_all().await.unwrap();
    }
    store.append(vec![complete(traces[0], 2)]).await.unwrap();
    store.flush_all().await.unwrap();
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 6);
    let before = snapshot(&store, &traces).await;
    assert_eq!(before.0[0], (vec![1, 2], false, 2));

    let backup = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("blocks"), backup.path());
    assert_eq!(store.compact().await.unwrap(), 6);
    assert_eq!(store.compact().await.unwrap(), 0, "one block is left: nothing to merge");
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(store.stats().documents_compacted.load(std::sync::atomic::Ordering::Relaxed), 31);
    assert_eq!(snapshot(&store, &traces).await, before);
    // The merged rollups (the first block's built again, its trace 0 superseded; the others'
    // merged) answer windows of minutes and of hours as a scan does.
    let base = f64::from(epoch());
    let windows = [(base, base + 60.0), (base + 61.0, base + 125.0), (base + 7.0, base + 200.0), (base, base + 3600.0)];
    graphs_equal_a_scan(&store, &windows, "compacted").await;

    // The inputs come back, as if the process died before deleting them.
    store.close().await.unwrap();
    copy_dir(backup.path(), &dir.path().join("blocks"));
    store = Store::open(config).await.unwrap();
    assert_eq!(store.stats().blocks.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(snapshot(&store, &traces).await, before);
    assert_eq!(std::fs::read_dir(dir.path().join("blocks")).unwrap().count(), 1, "the inputs' files are gone");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if !target.exists() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Two blocks of 20,000 traces each, which take a compaction long enough to act while it runs.
async fn two_blocks_to_compact(store: &Store) -> Vec<TraceId> {
    let traces: Vec<TraceId> =
        (0..40_000u32).map(|n| TraceId::from_parts(epoch() + n % 3000, u128::from(n) * 0x1_0000_0001 + 11)).collect();
    let pad = "p".repeat(200);
    for half in traces.chunks(20_000) {
        let padded = |t: &TraceId| {
            doc(*t, 1, &format!(r#""end_time":{}.5,"metadata":{{"default":{{"pad":"{pad}"}}}}"#, t.epoch()))
        };
        store.append(half.iter().map(padded).collect()).await.unwrap();
        store.flush_all().await.unwrap();
    }
    traces
}

/// Whether a thread of this process has this name, as Linux keeps it: its first 15 bytes.
#[cfg(target_os = "linux")]
fn thread_named(name: &str) -> bool {
    let kept = &name[..name.len().min(15)];
    std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
        std::fs::read_to_string(task.unwrap().path().join("comm")).is_ok_and(|comm| comm.trim_end() == kept)
    })
}

/// Retention that deletes the inputs while the merged block is built wins: the compaction
/// deletes its block instead of bringing the expired traces back.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_compaction_whose_inputs_expire_meanwhile_deletes_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        compaction_target_traces: 100_000,
        compaction_interval_seconds: 3600.0,
        retention_days: 1.0,
        ..config(dir.path())
    };
    let store = Arc::new(Store::open(config).await.unwrap());
    two_blocks_to_compact(&store).await;
    let compaction = tokio::spawn({
        let store = store.clone();
        async move { store.compact().await.unwrap() }
    });
    // The build's thread starts once the group is chosen.
    while !thread_named("roentgen-compact") {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(store.apply_retention(f64::from(epoch()) + 2.0 * 86_400.0).await.unwrap(), 2);
    assert_eq!(compaction.await.unwrap(), 0, "nothing merged");
    assert!(store.summaries(&all_time()).await.unwrap().summaries.is_empty());
    // The inputs' files waited for the compaction to let them go; the next one deletes them.
    assert_eq!(store.compact().await.unwrap(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("blocks")).unwrap().count(), 0, "the merged block is deleted");
    Arc::into_inner(store).unwrap().close().await.unwrap();
}

/// The traces that blocks written after the merged block on disk name as superseded in one of
/// its inputs: revisions flushed while it was built.
fn superseded_in_compacted_inputs(blocks: &std::path::Path) -> Vec<String> {
    let metas: Vec<serde_json::Value> = std::fs::read_dir(blocks)
        .unwrap()
        .map(|entry| serde_json::from_slice(&std::fs::read(entry.unwrap().path().join("meta.json")).unwrap()).unwrap())
        .collect();
    let merged = metas.iter().find(|m| m["compacted_from"].as_array().is_some_and(|from| !from.is_empty())).unwrap();
    let inputs = merged["compacted_from"].as_array().unwrap();
    metas
        .iter()
        .filter(|m| m["id"].as_str() > merged["id"].as_str())
        .flat_map(|m| m["supersedes"].as_array().into_iter().flatten())
        .filter(|s| inputs.contains(&s["block"]))
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Flushes go on while a compaction is built: a late segment's new revision supersedes the
/// trace in an input, which the merged block then holds. Each trace is found once, in its
/// newest revision, before and after a restart.
#[tokio::test]
async fn revisions_flushed_during_a_compaction_supersede_the_merged_block() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        StoreConfig { compaction_target_traces: 100_000, compaction_interval_seconds: 3600.0, ..config(dir.path()) };
    let store = Arc::new(Store::open(config.clone()).await.unwrap());
    let traces = two_blocks_to_compact(&store).await;
    let compaction = tokio::spawn({
        let store = store.clone();
        async move { store.compact().await.unwrap() }
    });
    let mut late = Vec::new();
    while !compaction.is_finished() && late.len() < traces.len() / 7 {
        let t = traces[late.len() * 7];
        store.append(vec![complete(t, 2)]).await.unwrap();
        store.flush_all().await.unwrap();
        late.push(t);
    }
    assert_eq!(compaction.await.unwrap(), 2);
    let superseded = superseded_in_compacted_inputs(&dir.path().join("blocks"));
    assert!(!superseded.is_empty(), "no flush came while the compaction was built ({} flushes)", late.len());
    let everything = SummaryQuery { limit: 100_000, ..all_time() };
    let check = |page: SummaryPage, phase: &str| {
        assert_eq!(page.summaries.len(), traces.len(), "{phase}: each trace once");
        for (summary, _) in &page.summaries {
            let expected = if late.contains(&summary.trace_id) { 2 } else { 1 };
            assert_eq!(summary.revision, expected, "{phase}: {}", summary.trace_id);
        }
    };
    check(store.summaries(&everything).await.unwrap(), "merged");
    for &t in &late {
        assert_eq!(ids(&store.get_trace(t).await.unwrap().unwrap()), [1, 2]);
    }
    Arc::into_inner(store).unwrap().close().await.unwrap();

    let store = Store::open(config).await.unwrap();
    check(store.summaries(&everything).await.unwrap(), "restarted");
    store.close().await.unwrap();
}

#[tokio::test]
async fn memory_past_its_budget_is_flushed_at_once_and_bounds_appends() {
    let dir = tempfile::tempdir().unwrap();
    let max_live_bytes = 20_000;
    let config = StoreConfig {
        max_live_bytes,
        trace_idle_seconds: 3600.0,
        trace_max_live_seconds: 3600.0,
        ..config(dir.path())
    };
    let store = Store::open(config).await.unwrap();
    let traces: Vec<TraceId> = (0..600).map(trace).collect();
    let stats = store.stats();
    let appends = async {
        for &t in &traces {
            let doc = complete(t, 1);
            let size = doc.raw.len() as u64;
            store.append(vec![doc]).await.unwrap();
            let live = stats.live_bytes.load(std::sync::atomic::Ordering::Relaxed);
            assert!(live <= 2 * max_live_bytes + size, "{live} bytes live");
        }
    };
    // Neither the flush tick (an hour) nor idleness (an hour) writes a block here: only the
    // memory budget does, and appends past twice the budget would wait forever without it.
    tokio::time::timeout(std::time::Duration::from_secs(60), appends).await.expect("appends were never let through");
    assert!(stats.blocks_written.load(std::sync::atomic::Ordering::Relaxed) > 0);
    for &t in &traces {
        let docs = store.get_trace(t).await.unwrap().expect("every appended trace is found");
        assert_eq!(ids(&docs), vec![1]);
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn due_traces_are_flushed_once_enough_has_come_in_without_waiting_for_the_tick() {
    let dir = tempfile::tempdir().unwrap();
    // A flush is looked for after each eighth of the budget: 4,000 bytes here.
    // The flusher's first tick comes as the store opens, well before the first trace is idle.
    let config = StoreConfig { max_live_bytes: 32_000, trace_idle_seconds: 2.0, ..config(dir.path()) };
    let store = Store::open(config).await.unwrap();
    let stats = store.stats();
    let blocks = || stats.blocks_written.load(std::sync::atomic::Ordering::Relaxed);
    let first = complete(trace(0), 1);
    let size = first.raw.len();
    store.append(vec![first]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(blocks(), 0, "little came in, and the next tick is an hour away: the idle trace waits");
    let more: Vec<_> = (1..=4_000 / size as u32 + 1).map(|n| complete(trace(n), 1)).collect();
    store.append(more).await.unwrap();
    let flushed = async {
        while blocks() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), flushed).await.expect("no block was written");
    assert!(store.get_trace(trace(0)).await.unwrap().is_some());
    store.close().await.unwrap();
}

/// A block of an older format (the frozen version 4 fixture) is read beside new ones, and
/// compaction rewrites its traces into a block of the current format.
#[tokio::test]
async fn compaction_rewrites_older_formats_as_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/block-v4");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture.join("meta.json")).unwrap()).unwrap();
    let old_id = meta["id"].as_str().unwrap();
    std::fs::create_dir_all(dir.path().join("blocks").join(old_id)).unwrap();
    copy_dir(&fixture, &dir.path().join("blocks").join(old_id));
    let config = StoreConfig {
        compaction_target_traces: 40,
        compaction_interval_seconds: 3600.0,
        retention_days: 36_500.0,
        ..config(dir.path())
    };
    let store = Store::open(config).await.unwrap();
    let old = ["1-5759e988-bd862e3fe1be46a994272793", "1-5759e98a-00000000000000000000000b"]
        .map(|id| TraceId::parse(id).unwrap());
    // Each block under a quarter of the target, together over it: a run to merge.
    let new: Vec<TraceId> = (0..9).map(trace).collect();
    store.append(new.iter().map(|&t| complete(t, 1)).collect()).await.unwrap();
    store.flush_all().await.unwrap();
    let traces: Vec<TraceId> = old.iter().chain(&new).copied().collect();
    let before = snapshot(&store, &traces).await;
    assert_eq!((before.0[0].0.len(), before.0[1].0.len()), (2, 1), "the fixture's documents");

    // The compactor the store started may run first: either way, the two blocks are one after this.
    store.compact().await.unwrap();
    assert_eq!(snapshot(&store, &traces).await, before);
    let blocks: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir.path().join("blocks")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(blocks.len(), 1);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(blocks[0].join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 5);
}

/// Bytes free for an unprivileged writer on the file system of `path`.
#[allow(clippy::useless_conversion)] // the counts are 32 bits wide on some targets
fn free_bytes(path: &std::path::Path) -> u64 {
    let stats = nix::sys::statvfs::statvfs(path).unwrap();
    u64::from(stats.blocks_available()) * u64::from(stats.fragment_size())
}

/// Short of room, the store writes its live traces into a block at once, appends wait for room
/// and go on once it is back, and reads go on meanwhile. On the temporary directory's own file
/// system: a ballast file takes the room, the reserve set so that the ballast crosses it with
/// 32 MiB to spare either way for whatever else writes meanwhile. (Refusals after the wait are
/// the API test's `without_room_on_disk_segments_are_refused_and_reads_go_on`.)
#[tokio::test(flavor = "multi_thread")]
async fn short_of_room_appends_wait_until_space_is_freed() {
    const BALLAST: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let reserve = free_bytes(dir.path()).checked_sub(BALLAST / 2).expect("the test needs 32 MiB free");
    let config = StoreConfig { min_free_bytes: reserve, ..config(dir.path()) };
    let store = Store::open(config).await.unwrap();
    let stats = store.stats();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let (first, second, later) = (trace(1), trace(2), trace(3));
    store.append(vec![complete(first, 1)]).await.unwrap();
    // Pressed from the start, the flusher writes it at once. Its looks at the disk are awaited
    // before the ballast: one after it would hold the next append back, which this test lets in.
    let flushed = || count(&stats.live_traces) == 0 && count(&stats.blocks_written) >= 1;
    assert!(within_10_s(flushed).await);

    let ballast_path = dir.path().join("ballast");
    let ballast = std::fs::File::create(&ballast_path).unwrap();
    nix::fcntl::posix_fallocate(&ballast, 0, BALLAST as i64).expect("the test needs 64 MiB free");
    // Let in before the room ran out: the WAL writer finds it gone, and writes the append
    // into the reserve all the same.
    store.append(vec![complete(second, 2)]).await.unwrap();
    let free = count(&stats.disk_free_bytes);
    assert!(free < reserve, "{free} bytes free, over the reserve of {reserve}");

    // That woke the flusher, whose interval is an hour: the live trace, idle for less than its
    // `trace_idle_seconds`, is written all the same.
    let flushed = || count(&stats.live_traces) == 0 && count(&stats.blocks_written) >= 2;
    assert!(within_10_s(flushed).await);
    for id in [first, second] {
        assert_eq!(store.get_trace(id).await.unwrap().map(|docs| docs.len()), Some(1));
    }

    // An append now waits for room, and is taken once the ballast is gone.
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.append(vec![complete(later, 4)]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    drop(ballast);
    std::fs::remove_file(&ballast_path).unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(store.get_trace(later).await.unwrap().map(|docs| docs.len()), Some(1));
    assert_eq!(count(&stats.documents_refused_disk_full), 0);
    store.close().await.unwrap();
}

/// A block whose chunk fails its checks (a flipped bit) loses what that chunk held, and nothing
/// else: a late segment of a trace in it is still written, each trace is listed once, other
/// flushes go on, and the store opens again.
#[tokio::test]
async fn a_damaged_block_loses_only_what_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).await.unwrap();
    let (damaged, other, later) = (trace(1), trace(2), trace(3));
    store.append(vec![complete(damaged, 1), complete(other, 1)]).await.unwrap();
    store.flush_all().await.unwrap();
    let block = std::fs::read_dir(dir.path().join("blocks")).unwrap().next().unwrap().unwrap().path();
    let data = block.join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    // The first chunk starts the file.
    for byte in &mut bytes[20..60] {
        *byte ^= 0x5a;
    }
    std::fs::write(&data, &bytes).unwrap();

    assert!(store.get_trace(damaged).await.unwrap().is_none());
    store.append(vec![complete(damaged, 2), complete(later, 1)]).await.unwrap();
    store.flush_all().await.unwrap();
    assert_eq!(ids(&store.get_trace(damaged).await.unwrap().unwrap()), [2]);
    assert_eq!(store.get_trace(later).await.unwrap().map(|docs| docs.len()), Some(1));
    assert_eq!(store.stats().corrupt_blocks.load(std::sync::atomic::Ordering::Relaxed), 1);
    let page = store.summaries(&all_time()).await.unwrap();
    let mut listed: Vec<TraceId> = page.summaries.iter().map(|(s, _)| s.trace_id).collect();
    listed.sort();
    assert_eq!(listed, [damaged, other, later]);
    assert_eq!(store.compact().await.unwrap(), 0);
    store.close().await.unwrap();

    let store = Store::open(config(dir.path())).await.unwrap();
    assert_eq!(ids(&store.get_trace(damaged).await.unwrap().unwrap()), [2]);
    store.close().await.unwrap();
}

/// Queries running while a flush writes late traces' new revisions, which take documents again
/// meanwhile, see every document once and each trace at the revision it has: before the block is
/// added, merged with the earlier one, after it with the block's. A query that took live state
/// and the blocks at different moments missed the documents being flushed, or counted a revision
/// too many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_flush_of_late_traces_see_each_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(dir.path())).await.unwrap());
    let traces: Vec<TraceId> = (0..2_000).map(trace).collect();
    let append = |id: u64| store.append(traces.iter().map(|&t| complete(t, id)).collect());
    append(1).await.unwrap();
    store.flush_all().await.unwrap();
    let generation = || store.stats().wal_generation.load(std::sync::atomic::Ordering::Relaxed);
    for round in 1..5u32 {
        append(u64::from(2 * round)).await.unwrap();
        let cut_from = generation();
        let flush = tokio::spawn({
            let store = store.clone();
            async move { store.flush_all().await.unwrap() }
        });
        while generation() == cut_from {
            tokio::task::yield_now().await;
        }
        // Cut: each trace is now being flushed and live again.
        append(u64::from(2 * round + 1)).await.unwrap();
        let mut queries = 0;
        while !flush.is_finished() || queries == 0 {
            let page = store.summaries(&all_time()).await.unwrap();
            assert_eq!(page.summaries.len(), traces.len());
            for (summary, _) in &page.summaries {
                let seen = (summary.document_count, summary.revision);
                assert!(
                    seen == (2 * round + 1, round + 1) || seen == (2 * round + 1, round + 2),
                    "round {round}, query {queries}: {seen:?}"
                );
            }
            queries += 1;
        }
        flush.await.unwrap();
    }
    Arc::into_inner(store).unwrap().close().await.unwrap();
}
