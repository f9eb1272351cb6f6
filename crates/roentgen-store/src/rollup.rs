//! Service-graph rollups: one graph per aligned span of minutes, so a window of hours or days
//! is a few dozen merges per block instead of a scan of its traces.

use std::collections::BTreeMap;

use roentgen_query::{ServiceGraph, TraceSummary};
use serde::{Deserialize, Serialize};

/// Rollup span lengths in minutes, shortest first.
pub(crate) const ROLLUP_MINUTES: [i64; 4] = [1, 10, 60, 1440];
// Each span tiles the next: levels are built one from another, and windows tiled by them.
const _: () = {
    let mut level = 1;
    while level < ROLLUP_MINUTES.len() {
        assert!(ROLLUP_MINUTES[level] % ROLLUP_MINUTES[level - 1] == 0);
        level += 1;
    }
};
/// Levels from this one up are kept in memory for every block, so that windows of hours and
/// days need no block's summaries; the finer ones (most of the bytes) live with the summaries.
pub(crate) const FIRST_KEPT_LEVEL: usize = 2;

/// Kept rollups are held in memory for as long as their block lives: they are kept only while
/// they are much smaller than the traces they stand for, at most one graph node for this many
/// traces (about 30 bytes a trace), or a few hundred kilobytes a block whatever its size.
const TRACES_PER_KEPT_NODE: usize = 16;
const KEPT_NODES_ALWAYS: usize = 1024;

/// [`Rollups`] made a trace at a time, in any order: the flush adds each summary as it makes
/// it, while the summary is still in the processor's cache.
#[derive(Debug, Default)]
pub(crate) struct RollupBuilder {
    minutes: BTreeMap<i64, ServiceGraph>,
}

impl RollupBuilder {
    pub fn add(&mut self, summary: &TraceSummary) {
        self.minutes.entry(minute(summary.end_time)).or_default().add(summary);
    }

    pub fn finish(self) -> Rollups {
        Rollups::of_minutes(self.minutes)
    }
}

/// Service graphs of the traces whose last activity falls in each aligned span of
/// [`ROLLUP_MINUTES`] minutes: one map per span length, keyed by span number. A part of the
/// levels may be empty (see [`Rollups::split`]).
///
/// A block stores its kept levels in one section, read when the block is opened, and its fine
/// levels as one zstd frame per hour, read (and cached) when a window's edge falls in that hour.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rollups {
    levels: Vec<BTreeMap<i64, ServiceGraph>>,
}

impl Rollups {
    /// The rollups of a block's traces.
    pub fn of<'a>(summaries: impl IntoIterator<Item = &'a TraceSummary>) -> Self {
        let mut rollups = RollupBuilder::default();
        summaries.into_iter().for_each(|summary| rollups.add(summary));
        rollups.finish()
    }

    fn of_minutes(minutes: BTreeMap<i64, ServiceGraph>) -> Self {
        // Each level from the one below it, whose spans tile its own: an hour is six merges,
        // not sixty.
        let levels = ROLLUP_MINUTES.windows(2).fold(vec![minutes], |mut levels, spans| {
            let ratio = spans[1] / spans[0];
            let mut coarser: BTreeMap<i64, ServiceGraph> = BTreeMap::new();
            for (&key, graph) in levels.last().expect("the minutes at least") {
                coarser.entry(key.div_euclid(ratio)).or_default().merge(graph);
            }
            levels.push(coarser);
            levels
        });
        Self { levels }
    }

    /// Adds `other`'s graphs, span by span: the rollups of two disjoint sets of traces merge
    /// into the rollups of their union, with no trace added again.
    pub fn merge(&mut self, other: &Rollups) {
        if self.levels.len() < other.levels.len() {
            self.levels.resize_with(other.levels.len(), BTreeMap::new);
        }
        for (mine, theirs) in self.levels.iter_mut().zip(&other.levels) {
            for (&key, graph) in theirs {
                mine.entry(key).or_default().merge(graph);
            }
        }
    }

    /// The kept levels, and the fine levels of each hour that has any: a window's edges then
    /// need only the fine rollups of the hours they fall in.
    pub fn split(mut self) -> (Self, BTreeMap<i64, Self>) {
        let hour = ROLLUP_MINUTES[FIRST_KEPT_LEVEL];
        let mut fine: BTreeMap<i64, Self> = BTreeMap::new();
        let mut kept = Vec::with_capacity(self.levels.len());
        for (level, spans) in self.levels.iter_mut().enumerate() {
            let spans = std::mem::take(spans);
            if level >= FIRST_KEPT_LEVEL {
                kept.push(spans);
                continue;
            }
            kept.push(BTreeMap::new());
            for (key, graph) in spans {
                let of_hour = fine
                    .entry((key * ROLLUP_MINUTES[level]).div_euclid(hour))
                    .or_insert_with(|| Self { levels: vec![BTreeMap::new(); ROLLUP_MINUTES.len()] });
                of_hour.levels[level].insert(key, graph);
            }
        }
        (Self { levels: kept }, fine)
    }

    /// Whether these kept levels (of [`Rollups::split`]) of the rollups of `traces` traces are
    /// worth holding. Where service names carry ids (a host, a request), every trace brings
    /// nodes of its own, and the rollups take more memory than the traces' summaries: such a
    /// block keeps none, and graphs over it read its summaries.
    pub fn worth_keeping(&self, traces: usize) -> bool {
        let nodes: usize = self.levels.iter().flat_map(|spans| spans.values()).map(|g| g.nodes.len()).sum();
        nodes <= KEPT_NODES_ALWAYS.max(traces / TRACES_PER_KEPT_NODE)
    }

    /// Rollups that stand for no levels at all, stored by a block that keeps none: different
    /// from the rollups of no traces, which have every level, empty.
    pub fn absent() -> Self {
        Self { levels: Vec::new() }
    }

    pub fn is_absent(&self) -> bool {
        self.levels.is_empty()
    }

    /// Merges into `graph` the rollups of the given spans.
    pub fn merge_into(&self, graph: &mut ServiceGraph, spans: &[(usize, i64)]) {
        for &(level, key) in spans {
            if let Some(rollup) = self.levels.get(level).and_then(|r| r.get(&key)) {
                graph.merge(rollup);
            }
        }
    }
}

/// The aligned spans, as (level, span number), that tile minutes `[from, to)`, longest first.
pub(crate) fn tiles(from: i64, to: i64) -> Vec<(usize, i64)> {
    let mut spans = Vec::new();
    let mut at = from;
    while at < to {
        let level = (0..ROLLUP_MINUTES.len())
            .rev()
            .find(|&l| at % ROLLUP_MINUTES[l] == 0 && at.checked_add(ROLLUP_MINUTES[l]).is_some_and(|end| end <= to))
            .unwrap_or(0);
        spans.push((level, at / ROLLUP_MINUTES[level]));
        at += ROLLUP_MINUTES[level];
    }
    spans
}

/// The minute a time falls in, as rollups are keyed.
pub(crate) fn minute(time: f64) -> i64 {
    (time / 60.0).floor() as i64
}

/// What a block says of its rollups when it is opened: the kept levels, and where the fine
/// rollups of each hour are in the block's rollups section (offsets from its start).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeptRollups {
    pub rollups: Rollups,
    pub fine_frames: Vec<(i64, std::ops::Range<u64>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Spans tile the minutes exactly, each aligned to its length, and never more than a
        /// few dozen for any window: at most 9 + 5 + 23 on each side, plus the days between.
        #[test]
        fn tiles_cover_the_minutes_exactly(from in -3_000_000i64..3_000_000, length in 0i64..200_000) {
            let spans = tiles(from, from + length);
            let mut at = from;
            for (level, key) in spans.iter().copied() {
                let span = ROLLUP_MINUTES[level];
                prop_assert_eq!(key * span, at);
                at += span;
            }
            prop_assert_eq!(at, from + length);
            let days = length / ROLLUP_MINUTES[3];
            prop_assert!(spans.len() as i64 <= 2 * (9 + 5 + 23) + days + 1);
        }
    }

    #[test]
    fn split_divides_the_levels_and_the_hours() {
        let mut levels = vec![BTreeMap::new(); ROLLUP_MINUTES.len()];
        for spans in &mut levels {
            for key in [0, 7, 200] {
                spans.insert(key, ServiceGraph::default());
            }
        }
        let (kept, fine) = Rollups { levels }.split();
        assert!(kept.levels[0].is_empty() && kept.levels[1].is_empty());
        assert_eq!(kept.levels[FIRST_KEPT_LEVEL].len(), 3);
        // Minutes 0, 7 and 200 fall in hours 0, 0 and 3; 10-minute spans 0, 7, 200 in hours 0, 1, 33.
        let hours: Vec<i64> = fine.keys().copied().collect();
        assert_eq!(hours, [0, 1, 3, 33]);
        assert_eq!(fine[&0].levels[0].len(), 2);
        assert_eq!(fine[&0].levels[1].len(), 1);
        assert!(fine[&33].levels[0].is_empty() && fine[&33].levels[FIRST_KEPT_LEVEL].is_empty());
    }
}
