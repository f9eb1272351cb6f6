//! Reservoir quotas for the clients of a rule, and the statistics they report.
//!
//! The rule's `ReservoirSize` is a budget of sampled requests per second for all its clients
//! together. Each report from a client (`GetSamplingTargets`) gets a quota such that the quotas
//! still valid never add up to more than the budget. The algorithm is in `docs/sampling.md`.

use std::collections::{BTreeMap, HashMap};

use crate::rules::SamplingRule;

/// Timing of quota assignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaSettings {
    /// Seconds between a client's reports; returned to clients as `Interval`.
    pub interval: f64,
    /// Seconds a quota stays valid; returned as `ReservoirQuotaTTL = now + ttl`.
    pub ttl: f64,
    /// A client that has not reported for this long no longer counts as active.
    pub active_window: f64,
    /// Statistics older than this are dropped.
    pub statistics_retention: f64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self { interval: 10.0, ttl: 30.0, active_window: 30.0, statistics_retention: 3600.0 }
    }
}

/// One client's statistics for one rule, as a `SamplingStatisticsDocument` reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReport {
    pub client_id: String,
    /// Epoch seconds; milliseconds (as the Java SDK sends) are recognised and converted.
    pub timestamp: f64,
    pub requests: u64,
    pub sampled: u64,
    pub borrowed: u64,
}

/// What a client is told for one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub fixed_rate: f64,
    pub reservoir_quota: u64,
    pub reservoir_quota_ttl: f64,
    pub interval: u64,
}

/// Requests, sampled and borrowed counts of one rule over one 10-second window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowCounts {
    pub requests: u64,
    pub sampled: u64,
    pub borrowed: u64,
}

#[derive(Debug, Clone)]
struct Client {
    last_report: f64,
    /// Requests per second seen in its last report.
    demand: f64,
    quota: u64,
    quota_expires: f64,
}

/// The clients of one rule and their last computed fair shares.
#[derive(Debug)]
struct RuleClients {
    clients: BTreeMap<String, Client>,
    shares: HashMap<String, u64>,
    shares_at: f64,
}

impl Default for RuleClients {
    fn default() -> Self {
        Self { clients: BTreeMap::new(), shares: HashMap::new(), shares_at: f64::NEG_INFINITY }
    }
}

/// Fair shares are recomputed at most this often (seconds), and whenever a new client appears:
/// demands move slowly, and recomputing for every report costs O(clients) each time.
const SHARES_REFRESH: f64 = 1.0;

/// Quota and statistics state for every rule.
#[derive(Debug, Default)]
pub struct Allocator {
    settings: QuotaSettings,
    rules: HashMap<String, RuleClients>,
    windows: BTreeMap<(String, i64), WindowCounts>,
}

/// Statistics are kept in windows of this many seconds, as X-Ray aggregates them.
pub const STATISTICS_WINDOW: f64 = 10.0;

/// Epoch seconds from a client timestamp that may be in milliseconds.
pub fn normalize_timestamp(value: f64) -> f64 {
    if value > 1e11 { value / 1000.0 } else { value }
}

impl Allocator {
    pub fn new(settings: QuotaSettings) -> Self {
        Self { settings, ..Self::default() }
    }

    pub fn settings(&self) -> QuotaSettings {
        self.settings
    }

    /// Records a client's report for `rule` and answers its target.
    pub fn report(&mut self, rule: &SamplingRule, report: &ClientReport, now: f64) -> Target {
        let settings = self.settings;
        let window = (normalize_timestamp(report.timestamp) / STATISTICS_WINDOW).floor() as i64;
        let counts = self.windows.entry((rule.name.clone(), window)).or_default();
        counts.requests += report.requests;
        counts.sampled += report.sampled;
        counts.borrowed += report.borrowed;
        let oldest = ((now - settings.statistics_retention) / STATISTICS_WINDOW).floor() as i64;
        self.windows.retain(|(_, w), _| *w >= oldest);

        let state = self.rules.entry(rule.name.clone()).or_default();
        let known = state.clients.contains_key(&report.client_id);
        let elapsed =
            state.clients.get(&report.client_id).map_or(settings.interval, |c| (now - c.last_report).max(1.0));
        let client = state.clients.entry(report.client_id.clone()).or_insert(Client {
            last_report: now,
            demand: 0.0,
            quota: 0,
            quota_expires: 0.0,
        });
        client.last_report = now;
        client.demand = report.requests as f64 / elapsed;

        let budget = rule.reservoir_size;
        if !known || now - state.shares_at >= SHARES_REFRESH {
            state.clients.retain(|_, c| c.last_report >= now - settings.active_window || c.quota_expires > now);
            state.shares = fair_shares(&state.clients, budget, now, settings);
            state.shares_at = now;
        }
        let valid = |c: &Client| if c.quota_expires > now { c.quota } else { 0 };
        let all: u64 = state.clients.values().map(valid).sum();
        let client = state.clients.get_mut(&report.client_id).expect("inserted above");
        let outstanding = all - valid(client);
        let share = state.shares.get(&report.client_id).copied().unwrap_or(0);
        let quota = share.min(budget.saturating_sub(outstanding));
        client.quota = quota;
        client.quota_expires = now + settings.ttl;
        Target {
            fixed_rate: rule.fixed_rate,
            reservoir_quota: quota,
            reservoir_quota_ttl: now + settings.ttl,
            interval: settings.interval as u64,
        }
    }

    /// Forgets a deleted rule's clients and statistics.
    pub fn forget(&mut self, rule: &str) {
        self.rules.remove(rule);
        self.windows.retain(|(name, _), _| name != rule);
    }

    /// The most recent window with data, per rule: `(rule, window start, counts)`.
    pub fn latest_windows(&self) -> Vec<(String, f64, WindowCounts)> {
        let mut latest: BTreeMap<&str, (i64, WindowCounts)> = BTreeMap::new();
        for ((rule, window), counts) in &self.windows {
            let slot = latest.entry(rule).or_insert((*window, *counts));
            if *window >= slot.0 {
                *slot = (*window, *counts);
            }
        }
        latest.into_iter().map(|(rule, (w, c))| (rule.to_owned(), w as f64 * STATISTICS_WINDOW, c)).collect()
    }

    /// Counts of one rule summed over every window kept.
    pub fn totals(&self, rule: &str) -> WindowCounts {
        self.windows.iter().filter(|((name, _), _)| name == rule).fold(WindowCounts::default(), |mut sum, (_, c)| {
            sum.requests += c.requests;
            sum.sampled += c.sampled;
            sum.borrowed += c.borrowed;
            sum
        })
    }

    /// The quotas currently valid for a rule's clients, for tests and metrics.
    pub fn valid_quotas(&self, rule: &str, now: f64) -> BTreeMap<String, u64> {
        self.rules
            .get(rule)
            .map(|state| {
                state
                    .clients
                    .iter()
                    .filter(|(_, c)| c.quota_expires > now)
                    .map(|(id, c)| (id.clone(), c.quota))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Max-min fair division of `budget` among the active clients: a client asking for less than
/// an even share gets what it asks for (at least 1 a second), the others split the rest evenly,
/// and the indivisible remainder goes one each to clients that want more, starting at a position
/// that moves every `ROTATION_INTERVALS` intervals, so that every client gets turns even when the
/// budget is smaller than the number of clients, while quotas stay stable long enough to settle.
fn fair_shares(
    clients: &BTreeMap<String, Client>,
    budget: u64,
    now: f64,
    settings: QuotaSettings,
) -> HashMap<String, u64> {
    // Clients in id order: (id, demand, share).
    let mut shares: Vec<(&String, u64, u64)> = clients
        .iter()
        .filter(|(_, c)| c.last_report >= now - settings.active_window)
        .map(|(id, c)| (id, (c.demand.ceil() as u64).max(1), 0))
        .collect();
    let mut remaining = budget;
    let mut open: Vec<usize> = (0..shares.len()).collect();
    while !open.is_empty() {
        let even = remaining / open.len() as u64;
        let (small, large): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| shares[i].1 <= even);
        if small.is_empty() {
            for &i in &large {
                shares[i].2 = even;
            }
            remaining -= even * large.len() as u64;
            break;
        }
        for &i in &small {
            shares[i].2 = shares[i].1;
            remaining -= shares[i].1;
        }
        open = large;
    }
    let wanting: Vec<usize> = (0..shares.len()).filter(|&i| shares[i].2 < shares[i].1).collect();
    if !wanting.is_empty() {
        let round = (now / (settings.interval * ROTATION_INTERVALS)).floor() as u64;
        let start = (round % wanting.len() as u64) as usize;
        for &i in wanting.iter().cycle().skip(start).take(wanting.len()) {
            if remaining == 0 {
                break;
            }
            shares[i].2 += 1;
            remaining -= 1;
        }
    }
    shares.into_iter().map(|(id, _, share)| (id.clone(), share)).collect()
}

/// How many intervals the remainder's rotation stays put.
const ROTATION_INTERVALS: f64 = 6.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(reservoir: u64) -> SamplingRule {
        SamplingRule { name: "r".into(), reservoir_size: reservoir, fixed_rate: 0.1, ..SamplingRule::default_rule(0.0) }
    }

    fn report(client: &str, t: f64, rate: f64, interval: f64) -> ClientReport {
        ClientReport {
            client_id: client.into(),
            timestamp: t,
            requests: (rate * interval) as u64,
            sampled: 1,
            borrowed: 0,
        }
    }

    /// Clients join and leave while reporting every interval, each with its own phase. At every
    /// tenth of a second the valid quotas add up to at most the reservoir. Once every client has
    /// reported twice since the last change (a join, a departure once its quota expired, a turn of
    /// the remainder's rotation), each active client holds a share and no wanted budget is idle.
    /// `schedule` is (join, leave, requests per second) with times in seconds.
    fn simulate(reservoir: u64, schedule: &[(u32, u32, f64)]) {
        let settings = QuotaSettings::default();
        let mut allocator = Allocator::new(settings);
        let rule = rule(reservoir);
        let tenths = |seconds: u32| seconds * 10;
        let interval = (settings.interval * 10.0) as u32;
        let ttl = (settings.ttl * 10.0) as u32;
        let end = schedule.iter().map(|s| tenths(s.1)).max().unwrap_or(0) + 1000;
        // Moments the allocation changes: joins, departures (once their quota expires), and the
        // remainder's rotation.
        let rotation = interval * ROTATION_INTERVALS as u32;
        let changes: Vec<u32> = schedule
            .iter()
            .flat_map(|(join, leave, _)| [tenths(*join), tenths(*leave), tenths(*leave) + ttl])
            .chain((0..end).step_by(rotation as usize))
            .collect();
        for t in 0..end {
            let now = f64::from(t) / 10.0;
            for (i, (join, leave, rate)) in schedule.iter().enumerate() {
                let start = tenths(*join) + (i as u32 * 7) % interval;
                if t >= start && t < tenths(*leave) && (t - start).is_multiple_of(interval) {
                    allocator.report(&rule, &report(&format!("client-{i:02}"), now, *rate, settings.interval), now);
                }
            }
            let quotas = allocator.valid_quotas("r", now);
            let sum: u64 = quotas.values().sum();
            assert!(sum <= reservoir, "t={now}: quotas {quotas:?} exceed {reservoir}");

            let last_change = changes.iter().copied().filter(|c| *c <= t).max().unwrap_or(0);
            let settled = t >= last_change + 2 * interval + interval;
            let active: Vec<usize> =
                (0..schedule.len()).filter(|&i| t >= tenths(schedule[i].0) && t < tenths(schedule[i].1)).collect();
            if settled && !active.is_empty() && reservoir >= active.len() as u64 {
                for i in &active {
                    let quota = quotas.get(&format!("client-{i:02}")).copied().unwrap_or(0);
                    assert!(quota >= 1, "t={now}: active client {i} has no share: {quotas:?}");
                }
                let demand: u64 = active.iter().map(|&i| (schedule[i].2.ceil() as u64).max(1)).sum();
                assert_eq!(sum, reservoir.min(demand), "t={now}: {quotas:?} leaves wanted budget unused");
            }
        }
    }

    #[test]
    fn one_client_takes_what_it_needs() {
        simulate(10, &[(0, 200, 50.0)]);
        simulate(10, &[(0, 200, 2.0)]);
    }

    #[test]
    fn three_clients_with_joins_and_departures() {
        simulate(10, &[(0, 300, 100.0), (30, 300, 0.5), (60, 150, 40.0)]);
    }

    #[test]
    fn ten_clients_with_joins_and_departures() {
        let schedule: Vec<(u32, u32, f64)> =
            (0..10).map(|i| (i * 5, if i < 4 { 400 } else { 200 }, f64::from(i % 3 + 1) * 7.0)).collect();
        simulate(25, &schedule);
    }

    #[test]
    fn departed_share_returns_to_the_others() {
        let settings = QuotaSettings::default();
        let mut allocator = Allocator::new(settings);
        let rule = rule(10);
        for round in 0..6 {
            let t = f64::from(round) * 10.0;
            allocator.report(&rule, &report("a", t, 100.0, 10.0), t);
            allocator.report(&rule, &report("b", t + 1.0, 100.0, 10.0), t + 1.0);
        }
        assert_eq!(allocator.valid_quotas("r", 52.0).values().sum::<u64>(), 10);
        // b stops reporting after t=51; by 51 + ttl its quota has expired and a takes it all.
        let mut t = 60.0;
        let mut a_quota = 0;
        while t <= 51.0 + settings.ttl + settings.interval {
            a_quota = allocator.report(&rule, &report("a", t, 100.0, 10.0), t).reservoir_quota;
            t += 10.0;
        }
        assert_eq!(a_quota, 10);
    }

    #[test]
    fn budget_smaller_than_clients_rotates() {
        let mut allocator = Allocator::new(QuotaSettings::default());
        let rule = rule(1);
        let mut got = BTreeMap::new();
        for round in 0..30 {
            for c in ["a", "b", "c"] {
                let t = f64::from(round) * 10.0
                    + if c == "a" {
                        0.0
                    } else if c == "b" {
                        3.0
                    } else {
                        6.0
                    };
                let target = allocator.report(&rule, &report(c, t, 5.0, 10.0), t);
                *got.entry(c).or_insert(0) += target.reservoir_quota;
                assert!(allocator.valid_quotas("r", t).values().sum::<u64>() <= 1);
            }
        }
        assert!(got.values().all(|n| *n > 0), "every client gets turns: {got:?}");
    }

    #[test]
    fn statistics_windows_and_milliseconds() {
        let mut allocator = Allocator::new(QuotaSettings::default());
        let rule = rule(1);
        let now = 1_700_000_005.0;
        allocator.report(
            &rule,
            &ClientReport { client_id: "a".into(), timestamp: now * 1000.0, requests: 7, sampled: 2, borrowed: 1 },
            now,
        );
        allocator.report(
            &rule,
            &ClientReport { client_id: "b".into(), timestamp: now, requests: 3, sampled: 1, borrowed: 0 },
            now,
        );
        let latest = allocator.latest_windows();
        assert_eq!(
            latest,
            vec![("r".to_owned(), 1_700_000_000.0, WindowCounts { requests: 10, sampled: 3, borrowed: 1 })]
        );
        allocator.forget("r");
        assert!(allocator.latest_windows().is_empty());
    }
}
