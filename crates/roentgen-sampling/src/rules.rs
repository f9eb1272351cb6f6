//! Sampling rules: validation as X-Ray does it, the `Default` rule, and the rule set with its
//! saved form (the server writes it to disk).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wildcard::wildcard_match;

pub const DEFAULT_RULE: &str = "Default";
const DEFAULT_PRIORITY: u32 = 10_000;

/// One rule, with the times it was created and last changed (epoch seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingRule {
    pub name: String,
    pub resource_arn: String,
    pub priority: u32,
    pub fixed_rate: f64,
    pub reservoir_size: u64,
    pub service_name: String,
    pub service_type: String,
    pub host: String,
    pub http_method: String,
    pub url_path: String,
    pub version: u32,
    pub attributes: BTreeMap<String, String>,
    pub created_at: f64,
    pub modified_at: f64,
}

/// What a request looks like to the rule matcher; empty fields match any pattern, as in the
/// Go and Python SDKs.
#[derive(Debug, Clone, Default)]
pub struct SamplingRequest<'a> {
    pub service_name: &'a str,
    pub service_type: &'a str,
    pub host: &'a str,
    pub http_method: &'a str,
    pub url_path: &'a str,
}

impl SamplingRule {
    /// The rule that always exists: every request, one a second and 5% of the rest.
    pub fn default_rule(now: f64) -> Self {
        Self {
            name: DEFAULT_RULE.to_owned(),
            resource_arn: "*".to_owned(),
            priority: DEFAULT_PRIORITY,
            fixed_rate: 0.05,
            reservoir_size: 1,
            service_name: "*".to_owned(),
            service_type: "*".to_owned(),
            host: "*".to_owned(),
            http_method: "*".to_owned(),
            url_path: "*".to_owned(),
            version: 1,
            attributes: BTreeMap::new(),
            created_at: 0.0,
            modified_at: now,
        }
    }

    pub fn matches(&self, request: &SamplingRequest<'_>) -> bool {
        let field = |pattern: &str, value: &str| value.is_empty() || wildcard_match(pattern, value);
        field(&self.service_name, request.service_name)
            && field(&self.service_type, request.service_type)
            && field(&self.host, request.host)
            && field(&self.http_method, request.http_method)
            && field(&self.url_path, request.url_path)
    }

    /// Checks X-Ray's constraints on a rule's fields.
    pub fn validate(&self) -> Result<(), RuleError> {
        let invalid = |message: String| Err(RuleError::Invalid(message));
        if self.name.is_empty() || self.name.chars().count() > 32 {
            return invalid(format!("RuleName must be 1 to 32 characters, not {:?}", self.name));
        }
        if self.name != DEFAULT_RULE && !(1..=9999).contains(&self.priority) {
            return invalid(format!("Priority must be between 1 and 9999, not {}", self.priority));
        }
        if !(0.0..=1.0).contains(&self.fixed_rate) {
            return invalid(format!("FixedRate must be between 0 and 1, not {}", self.fixed_rate));
        }
        if self.version != 1 {
            return invalid(format!("Version must be 1, not {}", self.version));
        }
        let limits = [
            ("ResourceARN", &self.resource_arn, 1, 500),
            ("ServiceName", &self.service_name, 0, 64),
            ("ServiceType", &self.service_type, 0, 64),
            ("Host", &self.host, 0, 64),
            ("HTTPMethod", &self.http_method, 0, 10),
            ("URLPath", &self.url_path, 0, 128),
        ];
        for (name, value, min, max) in limits {
            let n = value.chars().count();
            if n < min || n > max {
                return invalid(format!("{name} must be {min} to {max} characters, not {n}"));
            }
        }
        if self.attributes.len() > 5 {
            return invalid(format!("Attributes may hold at most 5 entries, not {}", self.attributes.len()));
        }
        for (key, value) in &self.attributes {
            if !(1..=32).contains(&key.chars().count()) || !(1..=32).contains(&value.chars().count()) {
                return invalid(format!("Attributes key and value must be 1 to 32 characters: {key:?}={value:?}"));
            }
        }
        Ok(())
    }
}

/// The fields `UpdateSamplingRule` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RuleUpdate {
    pub resource_arn: Option<String>,
    pub priority: Option<u32>,
    pub fixed_rate: Option<f64>,
    pub reservoir_size: Option<u64>,
    pub service_name: Option<String>,
    pub service_type: Option<String>,
    pub host: Option<String>,
    pub http_method: Option<String>,
    pub url_path: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
}

/// Why a rule operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("a sampling rule named {0:?} already exists")]
    Exists(String),
    #[error("there is no sampling rule named {0:?}")]
    NotFound(String),
    #[error("the limit of {0} sampling rules is reached; delete one first")]
    LimitExceeded(usize),
    #[error("the saved sampling rules cannot be read: {0}")]
    Corrupt(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    last_modification: f64,
    rules: Vec<SamplingRule>,
}

/// All rules of an account, ordered as the SDKs evaluate them.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<SamplingRule>,
    last_modification: f64,
    limit: usize,
}

impl RuleSet {
    /// A rule set holding only the `Default` rule.
    pub fn new(limit: usize, now: f64) -> Self {
        Self { rules: vec![SamplingRule::default_rule(now)], last_modification: now, limit }
    }

    /// The rule set from its saved form (see [`RuleSet::save`]).
    pub fn restore(saved: &[u8], limit: usize, now: f64) -> Result<Self, RuleError> {
        let persisted: Persisted = serde_json::from_slice(saved).map_err(|e| RuleError::Corrupt(e.to_string()))?;
        let mut set = Self { rules: persisted.rules, last_modification: persisted.last_modification, limit };
        if !set.rules.iter().any(|r| r.name == DEFAULT_RULE) {
            set.rules.push(SamplingRule::default_rule(now));
        }
        set.sort();
        Ok(set)
    }

    /// The saved form: JSON, versioned.
    pub fn save(&self) -> Vec<u8> {
        let persisted = Persisted { version: 1, last_modification: self.last_modification, rules: self.rules.clone() };
        serde_json::to_vec_pretty(&persisted).unwrap_or_default()
    }

    /// Rules in evaluation order: ascending priority, then name; `Default` last.
    pub fn rules(&self) -> &[SamplingRule] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&SamplingRule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The time of the latest change, deletions included: clients refetch rules when it moves.
    pub fn last_modification(&self) -> f64 {
        self.last_modification
    }

    /// The first rule matching a request.
    pub fn matching(&self, request: &SamplingRequest<'_>) -> Option<&SamplingRule> {
        self.rules.iter().find(|r| r.matches(request))
    }

    pub fn create(&mut self, mut rule: SamplingRule, now: f64) -> Result<SamplingRule, RuleError> {
        rule.validate()?;
        if rule.name == DEFAULT_RULE || self.get(&rule.name).is_some() {
            return Err(RuleError::Exists(rule.name));
        }
        if self.rules.len() > self.limit {
            return Err(RuleError::LimitExceeded(self.limit));
        }
        rule.created_at = now;
        rule.modified_at = now;
        self.rules.push(rule.clone());
        self.changed(now);
        Ok(rule)
    }

    pub fn update(&mut self, name: &str, update: RuleUpdate, now: f64) -> Result<SamplingRule, RuleError> {
        let current = self.get(name).ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
        if name == DEFAULT_RULE {
            let others = [
                update.resource_arn.is_some(),
                update.priority.is_some(),
                update.service_name.is_some(),
                update.service_type.is_some(),
                update.host.is_some(),
                update.http_method.is_some(),
                update.url_path.is_some(),
                update.attributes.is_some(),
            ];
            if others.into_iter().any(|set| set) {
                return Err(RuleError::Invalid(
                    "only FixedRate and ReservoirSize of the Default rule can be changed".into(),
                ));
            }
        }
        let mut rule = current.clone();
        let set = |slot: &mut String, value: Option<String>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut rule.resource_arn, update.resource_arn);
        set(&mut rule.service_name, update.service_name);
        set(&mut rule.service_type, update.service_type);
        set(&mut rule.host, update.host);
        set(&mut rule.http_method, update.http_method);
        set(&mut rule.url_path, update.url_path);
        rule.priority = update.priority.unwrap_or(rule.priority);
        rule.fixed_rate = update.fixed_rate.unwrap_or(rule.fixed_rate);
        rule.reservoir_size = update.reservoir_size.unwrap_or(rule.reservoir_size);
        rule.attributes = update.attributes.unwrap_or(rule.attributes);
        rule.validate()?;
        rule.modified_at = now;
        let slot =
            self.rules.iter_mut().find(|r| r.name == name).ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
        *slot = rule.clone();
        self.changed(now);
        Ok(rule)
    }

    pub fn delete(&mut self, name: &str, now: f64) -> Result<SamplingRule, RuleError> {
        if name == DEFAULT_RULE {
            return Err(RuleError::Invalid("the Default rule cannot be deleted".into()));
        }
        let at = self.rules.iter().position(|r| r.name == name).ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
        let rule = self.rules.remove(at);
        self.changed(now);
        Ok(rule)
    }

    fn sort(&mut self) {
        self.rules.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.cmp(&b.name)));
    }

    fn changed(&mut self, now: f64) {
        self.last_modification = self.last_modification.max(now);
        self.sort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, priority: u32) -> SamplingRule {
        SamplingRule {
            name: name.into(),
            priority,
            reservoir_size: 5,
            fixed_rate: 0.1,
            url_path: "/api/*".into(),
            ..SamplingRule::default_rule(0.0)
        }
    }

    #[test]
    fn create_update_delete_and_order() {
        let mut set = RuleSet::new(25, 1.0);
        set.create(rule("b", 10), 2.0).unwrap();
        set.create(rule("a", 10), 3.0).unwrap();
        set.create(rule("c", 5), 4.0).unwrap();
        let names: Vec<&str> = set.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b", "Default"]);
        assert_eq!(set.create(rule("a", 1), 5.0), Err(RuleError::Exists("a".into())));
        let updated = set.update("a", RuleUpdate { fixed_rate: Some(0.5), ..Default::default() }, 6.0).unwrap();
        assert_eq!((updated.fixed_rate, updated.created_at, updated.modified_at), (0.5, 3.0, 6.0));
        assert!(matches!(
            set.update("a", RuleUpdate { fixed_rate: Some(1.5), ..Default::default() }, 7.0),
            Err(RuleError::Invalid(_))
        ));
        set.delete("c", 8.0).unwrap();
        assert_eq!(set.last_modification(), 8.0);
        assert_eq!(set.delete("c", 9.0), Err(RuleError::NotFound("c".into())));
    }

    #[test]
    fn the_default_rule_is_special() {
        let mut set = RuleSet::new(25, 1.0);
        assert!(matches!(set.delete(DEFAULT_RULE, 2.0), Err(RuleError::Invalid(_))));
        assert!(matches!(
            set.update(DEFAULT_RULE, RuleUpdate { url_path: Some("/x".into()), ..Default::default() }, 2.0),
            Err(RuleError::Invalid(_))
        ));
        let updated = set
            .update(
                DEFAULT_RULE,
                RuleUpdate { reservoir_size: Some(0), fixed_rate: Some(0.0), ..Default::default() },
                3.0,
            )
            .unwrap();
        assert_eq!((updated.reservoir_size, updated.fixed_rate, updated.priority), (0, 0.0, 10_000));
    }

    #[test]
    fn limits_and_validation() {
        let mut set = RuleSet::new(2, 0.0);
        set.create(rule("a", 1), 1.0).unwrap();
        set.create(rule("b", 1), 1.0).unwrap();
        assert_eq!(set.create(rule("c", 1), 1.0), Err(RuleError::LimitExceeded(2)));
        let bad = [
            SamplingRule { name: "x".repeat(33), ..rule("x", 1) },
            SamplingRule { priority: 0, ..rule("x", 1) },
            SamplingRule { priority: 10_000, ..rule("x", 1) },
            SamplingRule { version: 2, ..rule("x", 1) },
            SamplingRule { http_method: "PROPPATCHXX".into(), ..rule("x", 1) },
            SamplingRule { resource_arn: String::new(), ..rule("x", 1) },
        ];
        for rule in bad {
            assert!(matches!(rule.validate(), Err(RuleError::Invalid(_))), "{rule:?}");
        }
    }

    #[test]
    fn matching_follows_priority_and_wildcards() {
        let mut set = RuleSet::new(25, 0.0);
        set.create(SamplingRule { service_name: "checkout".into(), ..rule("checkout", 5) }, 1.0).unwrap();
        set.create(rule("api", 10), 1.0).unwrap();
        let request = |service, path| SamplingRequest { service_name: service, url_path: path, ..Default::default() };
        assert_eq!(set.matching(&request("checkout", "/api/pay")).unwrap().name, "checkout");
        assert_eq!(set.matching(&request("cart", "/api/items")).unwrap().name, "api");
        assert_eq!(set.matching(&request("cart", "/health")).unwrap().name, DEFAULT_RULE);
        assert_eq!(set.matching(&request("", "")).unwrap().name, "checkout", "empty fields match any pattern");
    }

    #[test]
    fn saved_form_round_trips() {
        let mut set = RuleSet::new(25, 1.0);
        set.create(rule("a", 3), 2.0).unwrap();
        set.update(DEFAULT_RULE, RuleUpdate { fixed_rate: Some(0.2), ..Default::default() }, 3.0).unwrap();
        let restored = RuleSet::restore(&set.save(), 25, 9.0).unwrap();
        assert_eq!(restored.rules(), set.rules());
        assert_eq!(restored.last_modification(), 3.0);
        assert!(matches!(RuleSet::restore(b"{", 25, 9.0), Err(RuleError::Corrupt(_))));
    }
}
