//! Hashes: one key holding named fields, written field by field.
//!
//! The session layer keeps a session as one hash, so that a request writes only the fields
//! it changed (one atomic step, no conflict retries) and requests of one session on any
//! instance never overwrite each other's fields. A hash lives under one key, so on Redis
//! Cluster all of it is in one slot.
//!
//! Every hash carries a few things besides its fields, kept by the backend and never shown as
//! fields:
//!
//! - an **absolute deadline**, set when the hash is created (`now + lifetime`, on the
//!   store's clock): no refresh or write ever makes the hash outlive it;
//! - its **size**: the sum of the lengths of its field names and values, so that a write can
//!   be refused when it would grow the hash past a limit ([`HashWriteOptions::max_bytes`]);
//! - its **write tag**: an opaque number that every write replaces, with the one the writer
//!   chose ([`HashWriteOptions::tag`]) or a random one. Whoever knows the tag of the last
//!   write it made or saw can tell a copy of the hash that is at least that recent from an
//!   older one without reading the store; that is how a session read may be answered by a
//!   [`LocalCache`](super::LocalCache) and still see the client's own last write.
//!
//! A key that holds a plain value (written by [`set`](super::StateStore::set) and its kin)
//! is no hash: the hash operations see it as absent, and a hash creation replaces it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// Whether a hash write may create the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashMode {
    /// Write only into an existing hash. An absent hash (never created, deleted or expired)
    /// stays absent: the write answers [`HashWriteOutcome::Missing`]. A deleted hash is
    /// never resurrected by a write that started before the delete.
    Existing,
    /// Create the hash, living at most `lifetime` from now (its absolute deadline). When
    /// the key already holds a hash, nothing is written: [`HashWriteOutcome::Exists`].
    New {
        /// The absolute lifetime of the new hash.
        lifetime: Duration,
    },
    /// Write into the hash, creating it with `lifetime` when it is absent. Concurrent
    /// upserts of one absent hash create it once and all their fields are kept.
    Upsert {
        /// The absolute lifetime of the hash, if this write creates it.
        lifetime: Duration,
    },
}

/// How a hash write expires and limits the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct HashWriteOptions {
    pub(crate) mode: HashMode,
    pub(crate) ttl: Duration,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) tag: Option<u64>,
    pub(crate) refresh: Duration,
}

impl HashWriteOptions {
    /// A write in `mode` that sets the hash's expiry to `ttl` from now (capped by its
    /// absolute deadline), with no size limit.
    pub fn new(mode: HashMode, ttl: Duration) -> Self {
        Self {
            mode,
            ttl,
            max_bytes: None,
            tag: None,
            refresh: Duration::ZERO,
        }
    }

    /// Lets the write leave an existing hash's expiry as it is while a roll would lengthen
    /// it by less than `every` (the refresh interval of
    /// [`hash_get_all_and_refresh_lazily`](super::StateStore::hash_get_all_and_refresh_lazily)):
    /// the expiry is then at most `every` short of `ttl` (capped by the deadline), as
    /// after a lazy read. Default `Duration::ZERO`: every write rolls it. A write that
    /// creates or clears the hash always sets it; a store may roll on every write anyway.
    /// Keep `every` well below the TTL: an interval as long as the TTL never rolls (the
    /// session layer caps it at half the idle timeout).
    ///
    /// On Redis this saves the write's `PEXPIRE` (about a fifth of what the script costs
    /// Redis) on every write but one per interval.
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    /// The write tag the write leaves on the hash (see [`StoredHash::tag`]). Without one,
    /// the store leaves a random tag: every write changes the tag either way, so a copy of
    /// the hash that carries the tag a writer chose holds that write.
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = Some(tag);
        self
    }

    /// Refuses the write ([`HashWriteOutcome::TooLarge`], nothing written) when it would
    /// leave the hash larger than `max` bytes (field names plus values) **and** larger than
    /// it was. A write that shrinks an oversized hash is allowed.
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = Some(max);
        self
    }

    /// The mode.
    pub fn mode(&self) -> HashMode {
        self.mode
    }

    /// The TTL the write sets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The size limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.max_bytes
    }

    /// The write tag chosen, if any.
    pub fn write_tag(&self) -> Option<u64> {
        self.tag
    }

    /// The refresh interval (see [`refresh_interval`](Self::refresh_interval)).
    pub fn refresh_every(&self) -> Duration {
        self.refresh
    }
}

/// The fields one write changes. Applied in order: `clear` (every field removed), then
/// `delete`, then `set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashChanges {
    /// Remove every field first (the hash itself, its deadline and expiry, stay).
    pub clear: bool,
    /// Fields to remove.
    pub delete: Vec<String>,
    /// Fields to set, with their new values.
    pub set: Vec<(String, Bytes)>,
}

impl HashChanges {
    /// Whether the changes change nothing.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.delete.is_empty() && self.set.is_empty()
    }
}

/// What a hash write did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashWriteOutcome {
    /// The write was applied, and the expiry set.
    Written,
    /// [`HashMode::Existing`] and there is no hash: nothing written.
    Missing,
    /// [`HashMode::New`] and the key already holds a hash: nothing written.
    Exists,
    /// The hash would exceed [`HashWriteOptions::max_bytes`] (and grow): nothing written.
    /// Carries the size in bytes the hash would have had.
    TooLarge(u64),
    /// [`compare_and_set_field`](super::StateStore::hash_compare_and_set_field) only: the
    /// field did not hold the expected value; nothing written. Carries its current value
    /// (`None`: absent), so that the caller can retry without another read.
    Changed(Option<Bytes>),
}

/// A hash as read by [`hash_get_all_and_refresh`](super::StateStore::hash_get_all_and_refresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHash {
    /// Every field, by name.
    pub fields: BTreeMap<String, Bytes>,
    /// Time left until the hash's absolute deadline.
    pub lifetime_left: Duration,
    /// Time left until the hash expires (its idle expiry, after any roll this read made),
    /// as far as the store knows: at most `lifetime_left`, except after an eager Redis
    /// read, which rolls the expiry without the cap of the deadline.
    pub expires_in: Duration,
    /// The write tag of the last write ([`HashWriteOptions::tag`]); `None` for a hash no
    /// write of this version has touched (or a store that keeps no tags).
    pub tag: Option<u64>,
}

/// The size a hash write accounts for one field.
pub(crate) fn field_size(name: &str, value: &[u8]) -> u64 {
    (name.len() + value.len()) as u64
}

/// The size of a set of fields, as [`HashWriteOptions::max_bytes`] counts it.
pub(crate) fn fields_size<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Bytes)>) -> u64 {
    fields.into_iter().map(|(k, v)| field_size(k, v)).sum()
}

/// Applies `changes` to `fields` in the documented order.
pub(crate) fn apply_changes(fields: &mut BTreeMap<String, Bytes>, changes: &HashChanges) {
    if changes.clear {
        fields.clear();
    }
    for name in &changes.delete {
        fields.remove(name);
    }
    for (name, value) in &changes.set {
        fields.insert(name.clone(), value.clone());
    }
}
