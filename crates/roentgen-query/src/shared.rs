//! One copy of each service key, shared by every summary that names it.
//!
//! A trace names about four services, and a fleet has few: shared, a summary holds a pointer to
//! each key (8 bytes) rather than the key (72 bytes, and its texts when they are long). Summaries
//! stay in memory for as long as their blocks are queried: 244 of the 1,771 bytes a trace that
//! the load generator's summaries held.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use crate::summary::ServiceKey;

/// Keys the set holds before its first sweep.
const FIRST_SWEEP: usize = 1024;

struct SharedKeys {
    keys: HashSet<Arc<ServiceKey>, foldhash::fast::RandomState>,
    /// The set is swept when it reaches this size: keys no summary holds any more leave it, so
    /// names that come and go (inferred remote hosts, say) do not pile up. It is twice the size
    /// left by the last sweep, so sweeps cost a constant time a key.
    sweep_at: usize,
}

static SHARED: LazyLock<Mutex<SharedKeys>> =
    LazyLock::new(|| Mutex::new(SharedKeys { keys: HashSet::default(), sweep_at: FIRST_SWEEP }));

/// The shared copies of one summary's keys, under one lock.
pub fn shared(keys: Vec<ServiceKey>) -> Box<[Arc<ServiceKey>]> {
    let mut shared = SHARED.lock().expect("shared service keys lock");
    keys.into_iter().map(|key| shared.copy_of(key)).collect()
}

impl SharedKeys {
    fn copy_of(&mut self, key: ServiceKey) -> Arc<ServiceKey> {
        if let Some(found) = self.keys.get(&key) {
            return found.clone();
        }
        if self.keys.len() >= self.sweep_at {
            // Only this set hands out copies, under its lock: a count of one cannot grow meanwhile.
            self.keys.retain(|k| Arc::strong_count(k) > 1);
            self.sweep_at = (self.keys.len() * 2).max(FIRST_SWEEP);
        }
        let key = Arc::new(key);
        self.keys.insert(key.clone());
        key
    }
}

/// Service keys read through serde, shared.
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Box<[Arc<ServiceKey>]>, D::Error> {
    serde::Deserialize::deserialize(from).map(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey { name: name.into(), kind: Some("AWS::EC2::Instance".into()), account_id: None }
    }

    #[test]
    fn equal_keys_share_one_copy_and_keys_no_one_holds_are_swept() {
        let a = shared(vec![key("shared-test-a"), key("shared-test-b")]);
        let again = shared(vec![key("shared-test-a")]);
        assert!(Arc::ptr_eq(&a[0], &again[0]));
        assert!(!Arc::ptr_eq(&a[0], &a[1]));
        for n in 0..3 * FIRST_SWEEP {
            drop(shared(vec![key(&format!("shared-test-gone-{n}"))]));
        }
        let keys = SHARED.lock().unwrap().keys.len();
        assert!(keys <= 2 * FIRST_SWEEP, "{keys} keys held after sweeps");
        assert!(Arc::ptr_eq(&a[0], &shared(vec![key("shared-test-a")])[0]), "a key still held is kept");
    }
}
