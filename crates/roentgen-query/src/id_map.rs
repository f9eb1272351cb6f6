//! Maps keyed by the entity ids of one trace.
//!
//! A trace has a few entities as a rule (8.4 on the load generator's traces), and a summary
//! keeps six maps of them. Hashing their ids took 15% of the summaries' instructions, and each
//! table an allocation; comparing ids one after another in a vector is faster up to a few dozen.
//! A map that grows past [`LINEAR_LIMIT`] entries becomes a hash map.

use roentgen_model::SegmentId;

use crate::summary::Map;

/// Entries up to which a linear scan beats hashing.
const LINEAR_LIMIT: usize = 32;

#[derive(Debug, Clone)]
pub(crate) enum IdMap<V> {
    Linear(Vec<(SegmentId, V)>),
    Hashed(Map<SegmentId, V>),
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        Self::Linear(Vec::new())
    }
}

impl<V> IdMap<V> {
    /// A map that will hold about `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Self {
        if n <= LINEAR_LIMIT {
            Self::Linear(Vec::with_capacity(n))
        } else {
            Self::Hashed(Map::with_capacity_and_hasher(n, Default::default()))
        }
    }

    pub(crate) fn get(&self, id: &SegmentId) -> Option<&V> {
        match self {
            Self::Linear(entries) => entries.iter().find(|(k, _)| k == id).map(|(_, v)| v),
            Self::Hashed(map) => map.get(id),
        }
    }

    pub(crate) fn contains_key(&self, id: &SegmentId) -> bool {
        self.get(id).is_some()
    }

    /// Sets `id`'s value, replacing the one it had; true when `id` is new, as
    /// `HashSet::insert` answers.
    pub(crate) fn insert(&mut self, id: SegmentId, value: V) -> bool {
        self.make_room(id);
        match self {
            Self::Linear(entries) => match entries.iter_mut().find(|(k, _)| *k == id) {
                Some(entry) => {
                    entry.1 = value;
                    false
                }
                None => {
                    entries.push((id, value));
                    true
                }
            },
            Self::Hashed(map) => map.insert(id, value).is_none(),
        }
    }

    /// `id`'s value, the default one added if it has none.
    pub(crate) fn get_or_default(&mut self, id: SegmentId) -> &mut V
    where
        V: Default,
    {
        self.make_room(id);
        match self {
            Self::Linear(entries) => {
                let i = match entries.iter().position(|(k, _)| *k == id) {
                    Some(i) => i,
                    None => {
                        entries.push((id, V::default()));
                        entries.len() - 1
                    }
                };
                &mut entries[i].1
            }
            Self::Hashed(map) => map.entry(id).or_default(),
        }
    }

    /// Turns a full vector that lacks `id` into a hash map, so that `id` can be added.
    fn make_room(&mut self, id: SegmentId) {
        if let Self::Linear(entries) = self
            && entries.len() >= LINEAR_LIMIT
            && !entries.iter().any(|(k, _)| *k == id)
        {
            *self = Self::Hashed(entries.drain(..).collect());
        }
    }
}

/// A set of a trace's entity ids.
pub(crate) type IdSet = IdMap<()>;

impl FromIterator<SegmentId> for IdSet {
    fn from_iter<I: IntoIterator<Item = SegmentId>>(ids: I) -> Self {
        let mut set = IdSet::default();
        for id in ids {
            set.insert(id, ());
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whether linear or hashed, the map answers as a `HashMap` given the same calls.
        #[test]
        fn answers_as_a_hash_map(calls in prop::collection::vec((0u8..3, 0u64..80, any::<u32>()), 0..200)) {
            let mut map = IdMap::default();
            let mut model = HashMap::new();
            for (call, id, value) in calls {
                let id = SegmentId::from_u64(id);
                match call {
                    0 => prop_assert_eq!(map.insert(id, value), model.insert(id, value).is_none()),
                    1 => {
                        *map.get_or_default(id) += 1;
                        *model.entry(id).or_default() += 1;
                    }
                    _ => prop_assert_eq!(map.get(&id), model.get(&id)),
                }
            }
            for (id, value) in &model {
                prop_assert_eq!(map.get(id), Some(value));
            }
            prop_assert_eq!(matches!(map, IdMap::Hashed(_)), model.len() > LINEAR_LIMIT);
        }
    }

    #[test]
    fn a_set_adds_each_id_once() {
        let mut set: IdSet = (0..40).map(SegmentId::from_u64).chain([SegmentId::from_u64(3)]).collect();
        assert!(!set.insert(SegmentId::from_u64(39), ()));
        assert!(set.insert(SegmentId::from_u64(40), ()));
        assert!((0..=40).all(|n| set.contains_key(&SegmentId::from_u64(n))));
        assert!(!set.contains_key(&SegmentId::from_u64(41)));
    }
}
