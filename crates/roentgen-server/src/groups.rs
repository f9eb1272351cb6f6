//! Groups: named filter expressions (`CreateGroup` and friends), usable in filters as
//! `group.name = "..."` and `group.arn = "..."`. Saved in `<data_dir>/groups/groups.json`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use roentgen_model::api;
use roentgen_query::filter::{Filter, GroupKey};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ApiError;
use crate::persist;

const DEFAULT_GROUP: &str = "Default";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredGroup {
    name: String,
    arn: String,
    filter: Option<String>,
    insights_enabled: bool,
    notifications_enabled: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    groups: Vec<StoredGroup>,
}

#[derive(Debug)]
pub struct Groups {
    groups: Mutex<Vec<StoredGroup>>,
    path: PathBuf,
    region: String,
    account_id: String,
    limit: usize,
}

/// A group filter must parse and must not refer to other groups.
fn check_filter(text: &str) -> Result<(), ApiError> {
    let filter = Filter::parse(text).map_err(|e| ApiError::invalid(format!("FilterExpression: {e}")))?;
    if filter.refers_to_groups() {
        return Err(ApiError::invalid("FilterExpression: a group's filter cannot refer to other groups"));
    }
    Ok(())
}

fn insights(config: Option<api::InsightsConfiguration>, current: (bool, bool)) -> Result<(bool, bool), ApiError> {
    let config = config.unwrap_or_default();
    let enabled = config.insights_enabled.unwrap_or(current.0);
    let notifications = config.notifications_enabled.unwrap_or(current.1);
    if notifications && !enabled {
        return Err(ApiError::invalid("NotificationsEnabled needs InsightsEnabled"));
    }
    Ok((enabled, notifications))
}

impl Groups {
    pub fn open(config: &Config) -> Result<Self, String> {
        let path = config.data_dir.join("groups").join("groups.json");
        let groups = match persist::read_if_exists(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            Some(bytes) => {
                serde_json::from_slice::<Saved>(&bytes).map_err(|e| format!("{}: {e}", path.display()))?.groups
            }
            None => Vec::new(),
        };
        Ok(Self {
            groups: Mutex::new(groups),
            path,
            region: config.region.clone(),
            account_id: config.account_id.clone(),
            limit: config.groups.max_groups,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StoredGroup>> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Saves a changed copy, and only then makes it current.
    fn commit(&self, current: &mut Vec<StoredGroup>, next: Vec<StoredGroup>) -> Result<(), ApiError> {
        let bytes =
            serde_json::to_vec_pretty(&Saved { version: 1, groups: next.clone() }).map_err(ApiError::internal)?;
        persist::write_atomically(&self.path, &bytes)
            .map_err(|e| ApiError::internal(format!("saving {}: {e}", self.path.display())))?;
        *current = next;
        Ok(())
    }

    fn wire(group: &StoredGroup) -> api::Group {
        api::Group {
            group_name: group.name.clone(),
            group_arn: group.arn.clone(),
            filter_expression: group.filter.clone(),
            insights_configuration: api::InsightsConfiguration {
                insights_enabled: Some(group.insights_enabled),
                notifications_enabled: Some(group.notifications_enabled),
            },
        }
    }

    /// The index of the group a request names by `GroupName` or `GroupARN`.
    fn find(groups: &[StoredGroup], name: Option<&str>, arn: Option<&str>) -> Result<usize, ApiError> {
        let found = match (name, arn) {
            (Some(_), Some(_)) => return Err(ApiError::invalid("give GroupName or GroupARN, not both")),
            (Some(name), None) => groups.iter().position(|g| g.name == name),
            (None, Some(arn)) => groups.iter().position(|g| g.arn == arn),
            (None, None) => return Err(ApiError::missing("GroupName or GroupARN")),
        };
        found.ok_or_else(|| ApiError::invalid(format!("there is no group {}", name.or(arn).unwrap_or_default())))
    }

    fn new_arn(&self, name: &str) -> String {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write(name.as_bytes());
        let mut id = String::with_capacity(32);
        let mut bits = hasher.finish();
        for i in 0..32 {
            if i % 12 == 0 {
                hasher.write_u64(bits);
                bits = hasher.finish();
            }
            let digit = (bits % 36) as u8;
            bits /= 36;
            id.push(if digit < 10 { (b'0' + digit) as char } else { (b'A' + digit - 10) as char });
        }
        format!("arn:aws:xray:{}:{}:group/{name}/{id}", self.region, self.account_id)
    }

    pub fn create(&self, req: api::CreateGroupRequest) -> Result<api::GroupResponse, ApiError> {
        let name = req.group_name.ok_or_else(|| ApiError::missing("GroupName"))?;
        if name.is_empty() || name.chars().count() > 32 {
            return Err(ApiError::invalid(format!("GroupName must be 1 to 32 characters, not {name:?}")));
        }
        if name == DEFAULT_GROUP {
            return Err(ApiError::invalid("Default is a reserved group name"));
        }
        if req.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("Tags on groups are not supported by this version of roentgen yet"));
        }
        let filter = req.filter_expression.filter(|f| !f.trim().is_empty());
        if let Some(text) = &filter {
            check_filter(text)?;
        }
        let (insights_enabled, notifications_enabled) = insights(req.insights_configuration, (false, false))?;
        let mut groups = self.lock();
        if groups.iter().any(|g| g.name == name) {
            return Err(ApiError::invalid(format!("a group named {name:?} already exists")));
        }
        if groups.len() >= self.limit {
            return Err(ApiError::invalid(format!("the limit of {} groups is reached; delete one first", self.limit)));
        }
        let group = StoredGroup { arn: self.new_arn(&name), name, filter, insights_enabled, notifications_enabled };
        let mut next = groups.clone();
        next.push(group.clone());
        self.commit(&mut groups, next)?;
        Ok(api::GroupResponse { group: Self::wire(&group) })
    }

    pub fn get(&self, req: api::GroupRequest) -> Result<api::GroupResponse, ApiError> {
        let groups = self.lock();
        let at = Self::find(&groups, req.group_name.as_deref(), req.group_arn.as_deref())?;
        Ok(api::GroupResponse { group: Self::wire(&groups[at]) })
    }

    /// Every group in one page: there are at most `max_groups`.
    pub fn list(&self) -> api::GetGroupsResponse {
        api::GetGroupsResponse { groups: self.lock().iter().map(Self::wire).collect() }
    }

    pub fn update(&self, req: api::GroupRequest) -> Result<api::GroupResponse, ApiError> {
        if let Some(text) = req.filter_expression.as_deref().filter(|f| !f.trim().is_empty()) {
            check_filter(text)?;
        }
        let mut groups = self.lock();
        let at = Self::find(&groups, req.group_name.as_deref(), req.group_arn.as_deref())?;
        let mut next = groups.clone();
        let group = &mut next[at];
        if let Some(text) = req.filter_expression {
            group.filter = Some(text).filter(|f| !f.trim().is_empty());
        }
        (group.insights_enabled, group.notifications_enabled) =
            insights(req.insights_configuration, (group.insights_enabled, group.notifications_enabled))?;
        let wire = Self::wire(group);
        self.commit(&mut groups, next)?;
        Ok(api::GroupResponse { group: wire })
    }

    pub fn delete(&self, req: api::GroupRequest) -> Result<(), ApiError> {
        let mut groups = self.lock();
        let at = Self::find(&groups, req.group_name.as_deref(), req.group_arn.as_deref())?;
        let mut next = groups.clone();
        next.remove(at);
        self.commit(&mut groups, next)
    }

    /// The filter a `group.name` or `group.arn` reference stands for.
    pub fn filter_for(&self, by: GroupKey, value: &str) -> Result<Filter, String> {
        let groups = self.lock();
        let group = groups.iter().find(|g| if by == GroupKey::Name { g.name == value } else { g.arn == value });
        let what = if by == GroupKey::Name { "name" } else { "ARN" };
        let group = group.ok_or_else(|| format!("there is no group with the {what} {value:?}"))?;
        match &group.filter {
            None => Ok(Filter::everything()),
            Some(text) => {
                Filter::parse(text).map_err(|e| format!("the filter of group {:?} is invalid: {e}", group.name))
            }
        }
    }
}
