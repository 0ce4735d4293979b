//! The cross-attention keys/values of the conditionings a DiT has seen (upstream's
//! `EncoderDecoderCache`, kept across steps and across generations): keyed by the conditioning's
//! content, so two conditionings with the same states and mask share one entry whoever built
//! them, with a least-recently-used bound.
//!
//! A conditioning's content is hashed once: the engine's `Conditioning::id` (unique per value,
//! shared by clones) maps to its content key, so later steps read nothing back. Hashing reads the
//! states back to the host, which on a GPU would stall the tick that meets a new conditioning
//! (a crossfade makes one every tick), so off the fused CPU path entries are keyed by the id
//! alone ([`CrossKvCache::get_or_compute`]'s `by_content`): equal content under two ids is then
//! computed twice, and nothing is ever read.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::layers::CrossKv;
use crate::error::Result;

/// Conditionings kept by default.
pub const DEFAULT_CAPACITY: usize = 64;

/// What an entry is keyed by: shapes and a 128-bit hash of the bits of a conditioning's states
/// and mask, or (off the CPU) the caller's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ContentKey {
    Content {
        states: Vec<usize>,
        mask: Vec<usize>,
        hash: (u64, u64),
    },
    Id(u64),
}

impl ContentKey {
    /// The key of `states` and `mask` (copied to the host once, counted by
    /// `demon_engine::host`).
    pub fn of(states: &Tensor, mask: Option<&Tensor>) -> Result<Self> {
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(demon_engine::host::flat::<f32>(&t.to_dtype(DType::F32)?)?
                .into_iter()
                .map(f32::to_bits)
                .collect())
        };
        let s = bits(states)?;
        let m = mask.map(bits).transpose()?.unwrap_or_default();
        let hash = |seed: u8| {
            let mut h = DefaultHasher::new();
            seed.hash(&mut h);
            s.hash(&mut h);
            m.hash(&mut h);
            h.finish()
        };
        Ok(Self::Content {
            states: states.dims().to_vec(),
            mask: mask.map(|m| m.dims().to_vec()).unwrap_or_default(),
            hash: (hash(0), hash(1)),
        })
    }
}

/// Cross K/V by content, least recently used evicted beyond the capacity.
pub struct CrossKvCache {
    capacity: usize,
    /// Content → (last use, K/V).
    entries: HashMap<ContentKey, (u64, Arc<CrossKv>)>,
    /// `Conditioning::id` → (last use, content key): the memo that spares re-hashing.
    ids: HashMap<u64, (u64, ContentKey)>,
    clock: u64,
}

impl Default for CrossKvCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl CrossKvCache {
    /// A cache keeping at most `capacity` conditionings (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            ids: HashMap::new(),
            clock: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Change the bound, evicting the least recently used entries beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.entries.len() > self.capacity {
            evict_oldest(&mut self.entries);
        }
        while self.ids.len() > 4 * self.capacity {
            evict_oldest(&mut self.ids);
        }
    }

    /// Conditionings cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.ids.clear();
    }

    /// The K/V of the conditioning with caller id `id` and `states`/`mask`, computed by
    /// `compute` on the first use of that content (`by_content`) or of that id (otherwise:
    /// nothing is read back).
    pub fn get_or_compute(
        &mut self,
        id: u64,
        states: &Tensor,
        mask: Option<&Tensor>,
        by_content: bool,
        compute: impl FnOnce() -> Result<CrossKv>,
    ) -> Result<Arc<CrossKv>> {
        self.clock += 1;
        let now = self.clock;
        let key = match self.ids.get_mut(&id) {
            Some((used, key)) => {
                *used = now;
                key.clone()
            }
            None => {
                let key = if by_content {
                    ContentKey::of(states, mask)?
                } else {
                    ContentKey::Id(id)
                };
                if self.ids.len() >= 4 * self.capacity {
                    evict_oldest(&mut self.ids);
                }
                self.ids.insert(id, (now, key.clone()));
                key
            }
        };
        if let Some((used, kv)) = self.entries.get_mut(&key) {
            *used = now;
            return Ok(kv.clone());
        }
        let kv = Arc::new(compute()?);
        if self.entries.len() >= self.capacity {
            evict_oldest(&mut self.entries);
        }
        self.entries.insert(key, (now, kv.clone()));
        Ok(kv)
    }
}

/// Remove the entry with the smallest last-use stamp.
fn evict_oldest<K: Clone + Eq + Hash, V>(map: &mut HashMap<K, (u64, V)>) {
    if let Some(k) = map
        .iter()
        .min_by_key(|(_, (used, _))| *used)
        .map(|(k, _)| k.clone())
    {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use candle_core::Device;

    use super::*;

    fn kv() -> CrossKv {
        CrossKv {
            layers: Vec::new(),
            mask: None,
        }
    }

    fn states(v: f32) -> Tensor {
        Tensor::full(v, (1, 3, 4), &Device::Cpu).unwrap()
    }

    /// Equal content under different ids shares one entry; the K/V are computed once.
    #[test]
    fn keyed_by_content_not_by_id() {
        let mut c = CrossKvCache::new(4);
        let computed = Cell::new(0);
        let get = |c: &mut CrossKvCache, id: u64, s: &Tensor, m: Option<&Tensor>| {
            c.get_or_compute(id, s, m, true, || {
                computed.set(computed.get() + 1);
                Ok(kv())
            })
            .unwrap()
        };
        let a = get(&mut c, 1, &states(1.0), None);
        let b = get(&mut c, 2, &states(1.0), None);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((c.len(), computed.get()), (1, 1));
        // Other values, or the same values under another mask, are other content.
        get(&mut c, 3, &states(2.0), None);
        let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &Device::Cpu).unwrap();
        get(&mut c, 4, &states(1.0), Some(&mask));
        assert_eq!((c.len(), computed.get()), (3, 3));
    }

    /// Beyond the capacity the least recently used entry goes, not the whole cache.
    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = CrossKvCache::new(2);
        let get = |c: &mut CrossKvCache, id: u64, v: f32| {
            c.get_or_compute(id, &states(v), None, true, || Ok(kv()))
                .unwrap()
        };
        let a = get(&mut c, 1, 1.0);
        let b = get(&mut c, 2, 2.0);
        assert!(Arc::ptr_eq(&a, &get(&mut c, 1, 1.0))); // a used after b
        get(&mut c, 3, 3.0); // evicts b
        assert_eq!(c.len(), 2);
        assert!(Arc::ptr_eq(&a, &get(&mut c, 1, 1.0)));
        assert!(
            !Arc::ptr_eq(&b, &get(&mut c, 2, 2.0)),
            "b was evicted and recomputed"
        );
        c.set_capacity(1);
        assert_eq!(c.len(), 1);
    }

    /// Keyed by id (off the CPU), equal content under two ids is two entries and the id alone
    /// decides (the values are never read; `tests/host_reads.rs` counts that).
    #[test]
    fn by_id_the_id_decides() {
        let mut c = CrossKvCache::new(4);
        let a = c
            .get_or_compute(1, &states(1.0), None, false, || Ok(kv()))
            .unwrap();
        let b = c
            .get_or_compute(2, &states(1.0), None, false, || Ok(kv()))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        let again = c
            .get_or_compute(1, &states(9.0), None, false, || Ok(kv()))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again), "the id decides, not the values");
        assert_eq!(c.len(), 2);
    }
}
