//! Root causes of a trace's faults, errors and response time.
//!
//! X-Ray does not publish its algorithm; roentgen's rule (documented in `docs/root-causes.md`):
//!
//! - **Fault and error.** Start at the root segment if it has the flag (the cause reached the
//!   client: `ClientImpacting`); otherwise at the earliest entity with the flag. Then follow, at
//!   each step, the earliest child with the flag (a subsegment, or the segment of the service it
//!   called) until none has it. The last entity is the root cause.
//! - **Response time.** Start at the root segment and follow, at each step, the child that took
//!   longest, while it covers at least half of the root's response time. Each entity on the path
//!   carries its `Coverage`: its duration over the root's response time.
//!
//! The path is grouped by service. When it ends at an `aws` or `remote` call that no segment
//! answered, the inferred node it called closes the list.

use std::sync::Arc;

use roentgen_model::api;
use roentgen_model::{Entity, Text};
use serde::{Deserialize, Serialize};

use crate::id_map::IdMap;
use crate::summary::{Owners, ServiceKey, exact};

/// One root cause: the services on the path to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootCause {
    pub services: Box<[RootCauseService]>,
    pub client_impacting: bool,
}

impl RootCause {
    /// The API's shape (`FaultRootCause`, …), which `rootcause.json` filters also match against.
    pub fn to_api(&self, services: &[Arc<ServiceKey>]) -> api::RootCause {
        api::RootCause {
            services: self
                .services
                .iter()
                .filter_map(|svc| {
                    let key = services.get(svc.service as usize)?;
                    Some(api::RootCauseService {
                        name: key.name.as_str().to_owned(),
                        names: vec![key.name.as_str().to_owned()],
                        kind: key.kind.as_deref().map(str::to_owned),
                        account_id: key.account_id.as_deref().map(str::to_owned),
                        inferred: svc.inferred,
                        entity_path: svc.entity_path.iter().map(RootCauseEntity::to_api).collect(),
                    })
                })
                .collect(),
            client_impacting: self.client_impacting,
        }
    }
}

impl RootCauseEntity {
    fn to_api(&self) -> api::RootCauseEntity {
        let exceptions = self
            .exceptions
            .iter()
            .map(|(name, message)| api::RootCauseException {
                name: name.as_deref().map(str::to_owned),
                message: message.as_deref().map(str::to_owned),
            })
            .collect();
        api::RootCauseEntity {
            name: self.name.as_str().to_owned(),
            exceptions: self.coverage.is_none().then_some(exceptions),
            coverage: self.coverage,
            remote: self.remote,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootCauseService {
    /// Index into [`TraceSummary::services`](crate::TraceSummary::services).
    pub service: u32,
    pub inferred: bool,
    pub entity_path: Box<[RootCauseEntity]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootCauseEntity {
    pub name: Text,
    /// (type, message) of each exception the entity recorded.
    pub exceptions: Box<[(Option<Text>, Option<Text>)]>,
    /// The entity is a call to another service (`aws` or `remote`).
    pub remote: bool,
    /// Response-time causes only: the entity's duration over the root's response time.
    pub coverage: Option<f64>,
}

/// What root-cause analysis needs to know about a trace's assembled entities.
pub(crate) struct TraceTree<'a> {
    pub root: Option<Entity<'a>>,
    /// Every entity of the trace, top-level documents first.
    pub all: Vec<Entity<'a>>,
    /// Entities that are the top of a document whose parent is the key.
    pub attached: IdMap<Vec<Entity<'a>>>,
    /// The service each entity belongs to.
    pub owner: Owners<'a, 'a>,
    /// The inferred service an `aws`/`remote` call with no answering segment stands for.
    pub inferred: IdMap<u32>,
}

fn duration(e: Entity<'_>) -> Option<f64> {
    e.end_time().map(|end| (end - e.start_time()).max(0.0))
}

fn exceptions(e: Entity<'_>) -> Box<[(Option<Text>, Option<Text>)]> {
    exact(e.exceptions().map(|x| (x.kind.map(Text::from), x.message.map(Text::from))).collect())
}

impl<'a> TraceTree<'a> {
    fn children(&self, e: Entity<'a>) -> impl Iterator<Item = Entity<'a>> + '_ {
        e.subsegments().chain(self.attached.get(&e.id()).into_iter().flatten().copied())
    }

    fn group(
        &self,
        path: &[Entity<'a>],
        coverage: impl Fn(Entity<'a>) -> Option<f64>,
        client_impacting: bool,
    ) -> RootCause {
        // The path in runs of one service each; most paths stay in one. Their lists are boxed
        // slices, as a cached summary keeps them.
        let mut runs: Vec<(u32, Vec<RootCauseEntity>)> = Vec::with_capacity(1);
        for &e in path {
            let Some(service) = self.owner.get(e.id()) else { continue };
            let entity = RootCauseEntity {
                name: Text::from(e.name()),
                exceptions: exceptions(e),
                remote: e.namespace().is_some(),
                coverage: coverage(e),
            };
            match runs.last_mut() {
                Some((last, entities)) if *last == service => entities.push(entity),
                _ => runs.push((service, vec![entity])),
            }
        }
        let inferred = path.last().and_then(|&last| {
            let &service = self.inferred.get(&last.id())?;
            let entity = RootCauseEntity {
                name: Text::from(last.name()),
                exceptions: exceptions(last),
                remote: true,
                coverage: coverage(last),
            };
            Some(RootCauseService { service, inferred: true, entity_path: Box::new([entity]) })
        });
        let services = runs
            .into_iter()
            .map(|(service, entities)| RootCauseService { service, inferred: false, entity_path: exact(entities) })
            .chain(inferred)
            .collect();
        RootCause { services, client_impacting }
    }

    /// The fault or error root cause, following `flag`.
    pub fn flagged(&self, flag: impl Fn(Entity<'a>) -> bool) -> Option<RootCause> {
        let earliest = |a: &Entity<'_>, b: &Entity<'_>| a.start_time().total_cmp(&b.start_time());
        let (start, client_impacting) = match self.root {
            Some(root) if flag(root) => (root, true),
            _ => (self.all.iter().copied().filter(|&e| flag(e)).min_by(earliest)?, false),
        };
        let mut path = vec![start];
        let mut current = start;
        while let Some(next) = self.children(current).filter(|&c| flag(c)).min_by(earliest) {
            path.push(next);
            current = next;
        }
        Some(self.group(&path, |_| None, client_impacting))
    }

    /// The response-time root cause: the path of the calls that took most of the time.
    pub fn slowest(&self) -> Option<RootCause> {
        let root = self.root?;
        let total = duration(root).filter(|d| *d > 0.0)?;
        let mut path = vec![root];
        let mut current = root;
        while let Some(next) = self
            .children(current)
            .filter_map(|c| Some((c, duration(c)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|(_, d)| d / total >= 0.5)
            .map(|(c, _)| c)
        {
            path.push(next);
            current = next;
        }
        Some(self.group(&path, |e| duration(e).map(|d| ((d / total) * 1000.0).round() / 1000.0), true))
    }
}
