//! Service-graph rollups: one graph per aligned span of minutes, so a window of hours or days
//! is a few dozen merges per block instead of a scan of its traces.

use std::collections::BTreeMap;

use roentgen_query::{ServiceGraph, TraceSummary};
use serde::{Deserialize, Serialize};

/// Rollup span lengths in minutes, shortest first.
pub(crate) const ROLLUP_MINUTES: [i64; 4] = [1, 10, 60, 1440];
/// Levels from this one up are kept in memory for every block, so that windows of hours and
/// days need no block's summaries; the finer ones (most of the bytes) live with the summaries.
pub(crate) const FIRST_KEPT_LEVEL: usize = 2;

/// Service graphs of the traces whose last activity falls in each aligned span of
/// [`ROLLUP_MINUTES`] minutes: one map per span length, keyed by span number. A part of the
/// levels may be empty (see [`Rollups::split`]).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rollups {
    levels: Vec<BTreeMap<i64, ServiceGraph>>,
}

impl Rollups {
    /// The rollups of a block's traces.
    pub fn of<'a>(summaries: impl IntoIterator<Item = &'a TraceSummary>) -> Self {
        let mut minutes: BTreeMap<i64, ServiceGraph> = BTreeMap::new();
        for summary in summaries {
            minutes.entry(minute(summary.end_time)).or_default().add(summary);
        }
        let levels = ROLLUP_MINUTES[1..].iter().fold(vec![minutes], |mut levels, &span| {
            let mut coarser: BTreeMap<i64, ServiceGraph> = BTreeMap::new();
            for (&m, graph) in &levels[0] {
                coarser.entry(m.div_euclid(span)).or_default().merge(graph);
            }
            levels.push(coarser);
            levels
        });
        Self { levels }
    }

    /// The fine levels and the kept levels, each with the other's levels left empty.
    pub fn split(mut self) -> (Self, Self) {
        let mut kept = Vec::with_capacity(self.levels.len());
        for (level, spans) in self.levels.iter_mut().enumerate() {
            kept.push(if level >= FIRST_KEPT_LEVEL { std::mem::take(spans) } else { BTreeMap::new() });
        }
        (self, Self { levels: kept })
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
    fn split_divides_the_levels() {
        let mut levels = vec![BTreeMap::new(); ROLLUP_MINUTES.len()];
        for (level, spans) in levels.iter_mut().enumerate() {
            spans.insert(level as i64, ServiceGraph::default());
        }
        let (fine, kept) = Rollups { levels }.split();
        for level in 0..ROLLUP_MINUTES.len() {
            let fine_has = !fine.levels[level].is_empty();
            assert_eq!(fine_has, level < FIRST_KEPT_LEVEL);
            assert_eq!(kept.levels[level].is_empty(), fine_has);
        }
    }
}
