//! Hashes in the [`MemoryStore`]: the fields, deadline and size of a hash encoded in the
//! bytes of one entry, read and rewritten under the key's lock (one atomic step).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use moka::ops::compute::Op;

use super::{Entry, MemoryStore};
use crate::id::random_u64;
use crate::store::hash::{fields_size, HashMode, HashWriteOptions, HashWriteOutcome, StoredHash};
use crate::store::{ttl_millis, unix_millis, StoreError};

/// Marks an entry as a hash. Not UTF-8, so no plain value this crate writes starts with it.
const MAGIC: &[u8] = b"\xff\xfetower-stateless-hash\x01";

struct Hash {
    /// Absolute deadline, unix milliseconds.
    deadline: u64,
    /// The tag of the last write.
    tag: u64,
    fields: BTreeMap<String, Bytes>,
}

fn encode(hash: &Hash) -> Bytes {
    let mut out = BytesMut::with_capacity(
        MAGIC.len()
            + 20
            + hash
                .fields
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>(),
    );
    out.put_slice(MAGIC);
    out.put_u64(hash.deadline);
    out.put_u64(hash.tag);
    out.put_u32(u32::try_from(hash.fields.len()).unwrap_or(u32::MAX));
    for (name, value) in &hash.fields {
        out.put_u32(u32::try_from(name.len()).unwrap_or(u32::MAX));
        out.put_slice(name.as_bytes());
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value);
    }
    out.freeze()
}

/// The hash in `data`, or `None` when `data` is a plain value.
fn decode(data: &Bytes) -> Option<Hash> {
    let mut buf = data.strip_prefix(MAGIC)?;
    let take = |buf: &mut &[u8], n: usize| -> Option<Bytes> {
        let chunk = buf.get(..n)?;
        let bytes = Bytes::copy_from_slice(chunk);
        buf.advance(n);
        Some(bytes)
    };
    let deadline = buf.try_get_u64().ok()?;
    let tag = buf.try_get_u64().ok()?;
    let count = buf.try_get_u32().ok()?;
    let mut fields = BTreeMap::new();
    for _ in 0..count {
        let len = buf.try_get_u32().ok()? as usize;
        let name = String::from_utf8(take(&mut buf, len)?.to_vec()).ok()?;
        let len = buf.try_get_u32().ok()? as usize;
        let value = take(&mut buf, len)?;
        fields.insert(name, value);
    }
    Some(Hash {
        deadline,
        tag,
        fields,
    })
}

/// The live hash in `entry`: `None` when absent, a plain value, or past its deadline.
fn live_hash(entry: Option<&Entry>, now: u64) -> Option<Hash> {
    entry
        .and_then(|e| decode(&e.data))
        .filter(|h| h.deadline > now)
}

/// The entry holding `hash`, expiring in `ttl_ms` capped by the deadline; and that expiry.
fn entry(hash: &Hash, ttl_ms: u64, now: u64) -> (Entry, Duration) {
    let ms = Duration::from_millis(ttl_ms.min(hash.deadline.saturating_sub(now)).max(1));
    let entry = Entry {
        data: encode(hash),
        deadline: Instant::now() + ms,
    };
    (entry, ms)
}

impl MemoryStore {
    pub(super) fn hash_read_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        let ttl_ms = ttl_millis(ttl)?;
        Ok(self.compute(key, |current| {
            let now = unix_millis();
            match live_hash(current, now) {
                Some(hash) => {
                    let (entry, expires_in) = entry(&hash, ttl_ms, now);
                    let stored = StoredHash {
                        lifetime_left: Duration::from_millis(hash.deadline - now),
                        expires_in,
                        tag: Some(hash.tag),
                        fields: hash.fields,
                    };
                    (Op::Put(entry), Some(stored))
                }
                None => (Op::Nop, None),
            }
        }))
    }

    /// Runs `change` on the fields of the hash at `key` (created empty when the mode
    /// allows), under the key's lock, and stores the result unless `change` or the size
    /// limit refuses it.
    pub(super) fn hash_write(
        &self,
        key: &str,
        options: HashWriteOptions,
        change: impl FnOnce(&mut BTreeMap<String, Bytes>) -> Result<(), HashWriteOutcome>,
    ) -> Result<HashWriteOutcome, StoreError> {
        let ttl_ms = ttl_millis(options.ttl)?;
        let lifetime_ms = match options.mode {
            HashMode::Existing => None,
            HashMode::New { lifetime } | HashMode::Upsert { lifetime } => {
                Some(ttl_millis(lifetime)?)
            }
        };
        Ok(self.compute(key, |current| {
            let now = unix_millis();
            let existing = live_hash(current, now);
            let mut hash = match (options.mode, existing, lifetime_ms) {
                (HashMode::Existing, None, _) => return (Op::Nop, HashWriteOutcome::Missing),
                (HashMode::New { .. }, Some(_), _) => return (Op::Nop, HashWriteOutcome::Exists),
                (_, Some(hash), _) => hash,
                (_, None, lifetime) => Hash {
                    deadline: now + lifetime.unwrap_or(1),
                    tag: 0,
                    fields: BTreeMap::new(),
                },
            };
            let before = fields_size(&hash.fields);
            if let Err(refused) = change(&mut hash.fields) {
                return (Op::Nop, refused);
            }
            let after = fields_size(&hash.fields);
            if options
                .max_bytes
                .is_some_and(|max| after > max && after > before)
            {
                return (Op::Nop, HashWriteOutcome::TooLarge(after));
            }
            hash.tag = options.tag.unwrap_or_else(random_u64);
            (
                Op::Put(entry(&hash, ttl_ms, now).0),
                HashWriteOutcome::Written,
            )
        }))
    }
}
