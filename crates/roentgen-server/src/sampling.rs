//! Central sampling over the X-Ray API: the rule operations, and the two calls the SDKs make
//! through the daemon address (`GetSamplingRules`, `GetSamplingTargets`), which roentgen answers
//! on its HTTP address directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use roentgen_model::api;
use roentgen_sampling::{
    Allocator, ClientReport, DEFAULT_RULE, QuotaSettings, RuleError, RuleSet, RuleUpdate, SamplingRule,
};

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::persist;

/// Rules, quota state and per-rule totals, behind one lock: every call is short.
#[derive(Debug)]
pub struct Sampling {
    state: Mutex<State>,
    path: PathBuf,
    region: String,
    account_id: String,
}

#[derive(Debug)]
struct State {
    rules: RuleSet,
    allocator: Allocator,
    /// Requests, sampled and borrowed reported per rule since start, for `/metrics`.
    totals: BTreeMap<String, [u64; 3]>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn rule_error(e: RuleError) -> ApiError {
    match e {
        RuleError::LimitExceeded(_) => ApiError { kind: ErrorKind::RuleLimitExceeded, message: e.to_string() },
        RuleError::Corrupt(_) => ApiError::internal(e),
        RuleError::Invalid(_) | RuleError::Exists(_) | RuleError::NotFound(_) => ApiError::invalid(e.to_string()),
    }
}

/// A count from the wire: present, whole and not negative.
fn count(value: Option<i64>, member: &str) -> Result<u64, ApiError> {
    let value = value.ok_or_else(|| ApiError::missing(member))?;
    u64::try_from(value).map_err(|_| ApiError::invalid(format!("{member} must not be negative, not {value}")))
}

impl Sampling {
    pub fn open(config: &Config) -> Result<Self, RuleError> {
        let path = config.data_dir.join("sampling").join("rules.json");
        let limit = config.sampling.max_rules;
        let saved =
            persist::read_if_exists(&path).map_err(|e| RuleError::Corrupt(format!("{}: {e}", path.display())))?;
        let rules = match saved {
            Some(bytes) => RuleSet::restore(&bytes, limit, now())?,
            None => RuleSet::new(limit, now()),
        };
        let settings = QuotaSettings {
            interval: config.sampling.report_interval_seconds,
            ttl: config.sampling.quota_ttl_seconds,
            active_window: 3.0 * config.sampling.report_interval_seconds,
            ..QuotaSettings::default()
        };
        Ok(Self {
            state: Mutex::new(State { rules, allocator: Allocator::new(settings), totals: BTreeMap::new() }),
            path,
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        })
    }

    fn arn(&self, name: &str) -> String {
        format!("arn:aws:xray:{}:{}:sampling-rule/{name}", self.region, self.account_id)
    }

    fn record(&self, rule: &SamplingRule) -> api::SamplingRuleRecord {
        api::SamplingRuleRecord {
            sampling_rule: api::SamplingRule {
                rule_name: Some(rule.name.clone()),
                rule_arn: Some(self.arn(&rule.name)),
                resource_arn: Some(rule.resource_arn.clone()),
                priority: Some(i64::from(rule.priority)),
                fixed_rate: Some(rule.fixed_rate),
                reservoir_size: Some(rule.reservoir_size as i64),
                service_name: Some(rule.service_name.clone()),
                service_type: Some(rule.service_type.clone()),
                host: Some(rule.host.clone()),
                http_method: Some(rule.http_method.clone()),
                url_path: Some(rule.url_path.clone()),
                version: Some(i64::from(rule.version)),
                attributes: Some(rule.attributes.clone()),
            },
            created_at: rule.created_at,
            modified_at: rule.modified_at,
        }
    }

    /// The rule a request names by `RuleName` or `RuleARN`, but not both.
    fn rule_name(&self, name: Option<String>, arn: Option<String>) -> Result<String, ApiError> {
        match (name, arn) {
            (Some(_), Some(_)) => Err(ApiError::invalid("give RuleName or RuleARN, not both")),
            (Some(name), None) => Ok(name),
            (None, Some(arn)) => arn
                .rsplit_once(":sampling-rule/")
                .map(|(_, name)| name.to_owned())
                .filter(|name| !name.is_empty())
                .ok_or_else(|| ApiError::invalid(format!("RuleARN {arn:?} is not a sampling rule ARN"))),
            (None, None) => Err(ApiError::missing("RuleName or RuleARN")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a change to a copy of the rules, saves the copy, and only then makes it current,
    /// so memory and disk never disagree.
    fn change<T>(
        &self,
        state: &mut State,
        apply: impl FnOnce(&mut RuleSet) -> Result<T, RuleError>,
    ) -> Result<T, ApiError> {
        let mut next = state.rules.clone();
        let result = apply(&mut next).map_err(rule_error)?;
        persist::write_atomically(&self.path, &next.save())
            .map_err(|e| ApiError::internal(format!("saving {}: {e}", self.path.display())))?;
        state.rules = next;
        Ok(result)
    }

    pub fn create(&self, req: api::CreateSamplingRuleRequest) -> Result<api::SamplingRuleRecordResponse, ApiError> {
        if req.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("Tags on sampling rules are not supported by this version of roentgen yet"));
        }
        let wire = req.sampling_rule.ok_or_else(|| ApiError::missing("SamplingRule"))?;
        let name = self.rule_name(wire.rule_name.clone(), wire.rule_arn.clone())?;
        let text = |value: Option<String>, member: &str| value.ok_or_else(|| ApiError::missing(member));
        let priority = count(wire.priority, "SamplingRule.Priority")?;
        let version = count(wire.version, "SamplingRule.Version")?;
        let rule = SamplingRule {
            name,
            resource_arn: text(wire.resource_arn, "SamplingRule.ResourceARN")?,
            priority: u32::try_from(priority).unwrap_or(u32::MAX),
            fixed_rate: wire.fixed_rate.ok_or_else(|| ApiError::missing("SamplingRule.FixedRate"))?,
            reservoir_size: count(wire.reservoir_size, "SamplingRule.ReservoirSize")?,
            service_name: text(wire.service_name, "SamplingRule.ServiceName")?,
            service_type: text(wire.service_type, "SamplingRule.ServiceType")?,
            host: text(wire.host, "SamplingRule.Host")?,
            http_method: text(wire.http_method, "SamplingRule.HTTPMethod")?,
            url_path: text(wire.url_path, "SamplingRule.URLPath")?,
            version: u32::try_from(version).unwrap_or(u32::MAX),
            attributes: wire.attributes.unwrap_or_default(),
            created_at: 0.0,
            modified_at: 0.0,
        };
        let created = self.change(&mut self.lock(), |rules| rules.create(rule, now()))?;
        Ok(api::SamplingRuleRecordResponse { sampling_rule_record: self.record(&created) })
    }

    pub fn update(&self, req: api::UpdateSamplingRuleRequest) -> Result<api::SamplingRuleRecordResponse, ApiError> {
        let wire = req.sampling_rule_update.ok_or_else(|| ApiError::missing("SamplingRuleUpdate"))?;
        let name = self.rule_name(wire.rule_name.clone(), wire.rule_arn.clone())?;
        if wire.version.is_some() {
            return Err(ApiError::invalid("Version cannot be changed"));
        }
        let priority = wire.priority.map(|p| count(Some(p), "SamplingRuleUpdate.Priority")).transpose()?;
        let update = RuleUpdate {
            resource_arn: wire.resource_arn,
            priority: priority.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
            fixed_rate: wire.fixed_rate,
            reservoir_size: wire
                .reservoir_size
                .map(|r| count(Some(r), "SamplingRuleUpdate.ReservoirSize"))
                .transpose()?,
            service_name: wire.service_name,
            service_type: wire.service_type,
            host: wire.host,
            http_method: wire.http_method,
            url_path: wire.url_path,
            attributes: wire.attributes,
        };
        let updated = self.change(&mut self.lock(), |rules| rules.update(&name, update, now()))?;
        Ok(api::SamplingRuleRecordResponse { sampling_rule_record: self.record(&updated) })
    }

    pub fn delete(&self, req: api::DeleteSamplingRuleRequest) -> Result<api::SamplingRuleRecordResponse, ApiError> {
        let name = self.rule_name(req.rule_name, req.rule_arn)?;
        let mut state = self.lock();
        let deleted = self.change(&mut state, |rules| rules.delete(&name, now()))?;
        state.allocator.forget(&name);
        state.totals.remove(&name);
        drop(state);
        Ok(api::SamplingRuleRecordResponse { sampling_rule_record: self.record(&deleted) })
    }

    /// Every rule in one page: the SDKs never follow `NextToken`.
    pub fn rules(&self) -> api::GetSamplingRulesResponse {
        let state = self.lock();
        api::GetSamplingRulesResponse {
            sampling_rule_records: state.rules.rules().iter().map(|r| self.record(r)).collect(),
        }
    }

    pub fn targets(&self, req: api::GetSamplingTargetsRequest) -> Result<api::GetSamplingTargetsResponse, ApiError> {
        let documents =
            req.sampling_statistics_documents.ok_or_else(|| ApiError::missing("SamplingStatisticsDocuments"))?;
        if documents.len() > 25 {
            return Err(ApiError::invalid(format!(
                "SamplingStatisticsDocuments has {} documents; at most 25 are accepted per call",
                documents.len()
            )));
        }
        let now = now();
        let mut state = self.lock();
        let mut response = api::GetSamplingTargetsResponse {
            last_rule_modification: state.rules.last_modification(),
            ..Default::default()
        };
        for document in documents {
            let rule_name = document.rule_name.clone();
            let unprocessed = |code: &str, message: String| api::UnprocessedStatistics {
                rule_name: rule_name.clone(),
                error_code: code.to_owned(),
                message,
            };
            let report = match parse_report(document) {
                Ok(report) => report,
                Err(message) => {
                    response.unprocessed_statistics.push(unprocessed("400", message));
                    continue;
                }
            };
            let name = rule_name.clone().unwrap_or_default();
            let Some(rule) = state.rules.get(&name).cloned() else {
                response
                    .unprocessed_statistics
                    .push(unprocessed("400", format!("there is no sampling rule named {name:?}")));
                continue;
            };
            let target = state.allocator.report(&rule, &report, now);
            let totals = state.totals.entry(name.clone()).or_default();
            totals[0] += report.requests;
            totals[1] += report.sampled;
            totals[2] += report.borrowed;
            response.sampling_target_documents.push(api::SamplingTargetDocument {
                rule_name: name,
                fixed_rate: target.fixed_rate,
                reservoir_quota: target.reservoir_quota,
                reservoir_quota_ttl: target.reservoir_quota_ttl,
                interval: target.interval,
            });
        }
        for boost in req.sampling_boost_statistics_documents.unwrap_or_default() {
            response.unprocessed_boost_statistics.push(api::UnprocessedStatistics {
                rule_name: boost.rule_name,
                error_code: "400".into(),
                message: "sampling boosts are not supported by this version of roentgen".into(),
            });
        }
        Ok(response)
    }

    pub fn statistic_summaries(&self) -> api::GetSamplingStatisticSummariesResponse {
        let state = self.lock();
        api::GetSamplingStatisticSummariesResponse {
            sampling_statistic_summaries: state
                .allocator
                .latest_windows()
                .into_iter()
                .map(|(rule_name, timestamp, counts)| api::SamplingStatisticSummary {
                    rule_name,
                    timestamp,
                    request_count: counts.requests,
                    borrow_count: counts.borrowed,
                    sampled_count: counts.sampled,
                })
                .collect(),
        }
    }

    /// Prometheus lines for the rules and what clients reported.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let state = self.lock();
        let now = now();
        let _ = writeln!(
            out,
            "# HELP roentgen_sampling_rules Sampling rules, Default included.\n# TYPE roentgen_sampling_rules gauge"
        );
        let _ = writeln!(out, "roentgen_sampling_rules {}", state.rules.rules().len());
        type RuleValue = fn(&SamplingRule) -> f64;
        let gauges: [(&str, &str, RuleValue); 2] = [
            ("roentgen_sampling_rule_reservoir_size", "Reservoir size of each rule, per second.", |r| {
                r.reservoir_size as f64
            }),
            ("roentgen_sampling_rule_fixed_rate", "Fixed rate of each rule.", |r| r.fixed_rate),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for rule in state.rules.rules() {
                let _ = writeln!(out, "{name}{{rule=\"{}\"}} {}", escape(&rule.name), value(rule));
            }
        }
        let name = "roentgen_sampling_rule_quota_assigned";
        let _ = writeln!(
            out,
            "# HELP {name} Reservoir quota currently assigned to clients, per second.\n# TYPE {name} gauge"
        );
        for rule in state.rules.rules() {
            let assigned: u64 = state.allocator.valid_quotas(&rule.name, now).values().sum();
            let _ = writeln!(out, "{name}{{rule=\"{}\"}} {assigned}", escape(&rule.name));
        }
        let counters = [
            ("roentgen_sampling_requests_total", "Requests the SDKs matched to each rule, as they report them."),
            ("roentgen_sampling_sampled_total", "Requests the SDKs sampled under each rule."),
            ("roentgen_sampling_borrowed_total", "Requests the SDKs sampled by borrowing, per rule."),
        ];
        for (i, (name, help)) in counters.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for rule in state.rules.rules() {
                let value = state.totals.get(&rule.name).map_or(0, |t| t[i]);
                let _ = writeln!(out, "{name}{{rule=\"{}\"}} {value}", escape(&rule.name));
            }
        }
        debug_assert!(state.rules.get(DEFAULT_RULE).is_some());
    }
}

/// Rule names may hold characters that Prometheus label values must escape.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn parse_report(document: api::SamplingStatisticsDocument) -> Result<ClientReport, String> {
    let missing = |member: &str| format!("{member} is required");
    document.rule_name.as_ref().ok_or_else(|| missing("RuleName"))?;
    let client_id = document.client_id.ok_or_else(|| missing("ClientID"))?;
    if client_id.chars().count() != 24 {
        return Err(format!("ClientID must be 24 characters, not {}", client_id.chars().count()));
    }
    let timestamp = document.timestamp.filter(|t| t.is_finite()).ok_or_else(|| missing("Timestamp"))?;
    let non_negative = |value: Option<i64>, member: &str| -> Result<u64, String> {
        let value = value.ok_or_else(|| missing(member))?;
        u64::try_from(value).map_err(|_| format!("{member} must not be negative"))
    };
    Ok(ClientReport {
        client_id,
        timestamp,
        requests: non_negative(document.request_count, "RequestCount")?,
        sampled: non_negative(document.sampled_count, "SampledCount")?,
        borrowed: non_negative(document.borrow_count.or(Some(0)), "BorrowCount")?,
    })
}
