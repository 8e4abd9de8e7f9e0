//! [`KeyMap`]: the string-keyed lookup table of the scoring hot path.
//!
//! Feature extraction looks up every detector, title, category, technique, entity and
//! tenant × key of every incident in the fitted encoders and the global-signals snapshot: about
//! twenty lookups per incident. In a `BTreeMap<String, _>` each is a dozen string compares
//! (`memcmp`, keys of one tenant share their prefix) on cache lines far apart; a hash table
//! with a cheap hash reads one or two. Artifacts stay byte-identical: the map serializes as a
//! JSON object sorted by key, exactly as the `BTreeMap` it replaces did.

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fast, non-cryptographic, deterministic hasher for short string keys (the `FxHash`
/// multiply-rotate over 8-byte words, with a final avalanche so the high bits the table uses
/// depend on every input bit). Keys come from fitted artifacts, never from the input alone, so
/// no flooding resistance is needed: input only ever *looks up*.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3's fmix64
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The [`std::hash::BuildHasher`] of [`KeyMap`].
pub type BuildKeyHasher = BuildHasherDefault<KeyHasher>;

/// String key → value, hashed with [`KeyHasher`]; (de)serialized as a key-sorted map.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMap<V>(HashMap<String, V, BuildKeyHasher>);

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap(HashMap::default())
    }
}

impl<V> KeyMap<V> {
    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.get(key)
    }

    /// Inserts `value` under `key`, returning the value it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.0.insert(key, value)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries sorted by key (the serialized order).
    pub fn sorted(&self) -> Vec<(&str, &V)> {
        let mut v: Vec<(&str, &V)> = self.0.iter().map(|(k, v)| (k.as_str(), v)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }
}

impl<V> FromIterator<(String, V)> for KeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        KeyMap(iter.into_iter().collect())
    }
}

impl<V: Serialize> Serialize for KeyMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sorted = self.sorted();
        let mut m = serializer.serialize_map(Some(sorted.len()))?;
        for (k, v) in sorted {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for KeyMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A BTreeMap first: a key repeated in the file keeps its last value, as before.
        let m = std::collections::BTreeMap::<String, V>::deserialize(deserializer)?;
        Ok(m.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn serializes_exactly_as_the_sorted_map() {
        let pairs = [("b/2", 2u32), ("a", 1), ("10/x", 3), ("", 0), ("é", 4)];
        let km: KeyMap<u32> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let bt: BTreeMap<String, u32> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let a = serde_json::to_string(&km).unwrap();
        assert_eq!(a, serde_json::to_string(&bt).unwrap());
        let back: KeyMap<u32> = serde_json::from_str(&a).unwrap();
        assert_eq!(back, km);
        assert_eq!(back.get("10/x"), Some(&3));
        assert_eq!(back.get("10/"), None);
        assert_eq!(back.len(), 5);
    }

    #[test]
    fn hash_spreads_keys_sharing_a_prefix() {
        use std::hash::BuildHasher;
        // keys of one tenant differ only in their last bytes; the table uses the top 7 bits
        // as tags and the low bits as buckets: both must vary
        let b = BuildKeyHasher::default();
        let hashes: Vec<u64> = (0..4096)
            .map(|i| b.hash_one(format!("123456/{i}").as_str()))
            .collect();
        let low: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let top: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(
            low.len() > 2400,
            "{} distinct low 12-bit buckets",
            low.len()
        );
        assert_eq!(top.len(), 128);
    }
}
