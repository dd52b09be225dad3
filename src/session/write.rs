//! Write-back: the request's session changes as one store write, after the handler.

use std::time::Duration;

use super::config::Config;
use super::handle::{store_key, State};
use super::transport::CookieAction;
use crate::id::session_id;
use crate::metrics::{self, SessionOp, SessionResult};
use crate::store::{
    HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StateStore, StoreError,
};

pub(crate) enum WriteError {
    Store(StoreError),
    /// The store refused the write: the session would have grown to this many bytes,
    /// past its limit.
    TooLarge(u64),
}

fn new_id() -> Result<String, StoreError> {
    session_id().map_err(|e| StoreError::Unexpected(Box::new(e)))
}

/// The request's changes as one store write.
fn changes_of(st: &State) -> HashChanges {
    let mut changes = HashChanges {
        clear: st.cleared,
        ..HashChanges::default()
    };
    for (key, change) in &st.changes {
        match change {
            Some(value) => changes.set.push((key.clone(), value.clone())),
            None => changes.delete.push(key.clone()),
        }
    }
    changes
}

/// The options of a session write: the idle timeout and its refresh interval (a write
/// rolls the expiry when a read would), the size limit, the write tag if any.
fn options(config: &Config, mode: HashMode, tag: Option<u64>) -> HashWriteOptions {
    let options = HashWriteOptions::new(mode, config.idle)
        .max_bytes(config.max_bytes)
        .refresh_interval(config.refresh_interval());
    match tag {
        Some(tag) => options.tag(tag),
        None => options,
    }
}

fn unexpected(outcome: HashWriteOutcome) -> WriteError {
    WriteError::Store(StoreError::Unexpected(
        format!("unexpected outcome of a session write: {outcome:?}").into(),
    ))
}

/// Writes `changes` as a new session under a fresh random id and returns the id.
async fn create<S: StateStore>(
    store: &S,
    config: &Config,
    changes: &HashChanges,
    lifetime: Duration,
    tag: Option<u64>,
) -> Result<String, WriteError> {
    let options = options(config, HashMode::New { lifetime }, tag);
    // 256 random bits do not collide; the retries only guard a broken generator.
    for _ in 0..3 {
        let id = new_id().map_err(WriteError::Store)?;
        let key = store_key(&config.prefix, &id);
        match store
            .hash_apply(&key, changes, options)
            .await
            .map_err(WriteError::Store)?
        {
            HashWriteOutcome::Written => {
                metrics::session(SessionOp::Write, SessionResult::Ok);
                return Ok(id);
            }
            HashWriteOutcome::Exists => {}
            HashWriteOutcome::TooLarge(size) => return Err(WriteError::TooLarge(size)),
            other => return Err(unexpected(other)),
        }
    }
    Err(WriteError::Store(StoreError::Unexpected(
        "three fresh session ids were all taken".into(),
    )))
}

/// A new session under a fresh random id holding the keys `changes` sets (a new session
/// has nothing to clear or remove); none when it sets no key (no empty session).
async fn create_from<S: StateStore>(
    store: &S,
    config: &Config,
    mut changes: HashChanges,
    otherwise: CookieAction,
    tag: Option<u64>,
) -> Result<CookieAction, WriteError> {
    changes.clear = false;
    changes.delete.clear();
    if changes.set.is_empty() {
        return Ok(otherwise);
    }
    Ok(CookieAction::Set(
        create(store, config, &changes, config.lifetime(), tag).await?,
    ))
}

/// The changes of a request that never loaded the session (it only inserted, removed or
/// cleared): one write into the session under the request's id, when it exists; a new
/// session otherwise, as after a load that found none.
async fn write_unread<S: StateStore>(
    store: &S,
    config: &Config,
    st: State,
    renew: bool,
    tag: Option<u64>,
) -> Result<CookieAction, WriteError> {
    let changes = changes_of(&st);
    let Some(id) = st.id.as_deref() else {
        return create_from(store, config, changes, CookieAction::None, tag).await;
    };
    // An id from the `sid` claim is created when absent (concurrent first writes merge),
    // as after a load that found no session under it.
    let mode = match st.sid {
        Some(_) => HashMode::Upsert {
            lifetime: config.lifetime(),
        },
        None => HashMode::Existing,
    };
    let key = store_key(&config.prefix, id);
    match store
        .hash_apply(&key, &changes, options(config, mode, tag))
        .await
        .map_err(WriteError::Store)?
    {
        HashWriteOutcome::Written => {
            metrics::session(SessionOp::Write, SessionResult::Ok);
            // A tagged cookie goes out after every write: the tag changed.
            Ok(if renew || st.tagged {
                CookieAction::Set(id.to_owned())
            } else {
                CookieAction::None
            })
        }
        // Unknown, expired or ended meanwhile: never resurrected; a new id holds the keys.
        HashWriteOutcome::Missing => {
            create_from(store, config, changes, CookieAction::None, tag).await
        }
        HashWriteOutcome::TooLarge(size) => Err(WriteError::TooLarge(size)),
        other => Err(unexpected(other)),
    }
}

/// What [`write_back`] answers when it has nothing to write (the common read-only or
/// untouched request), decided without building the write's future: that future holds
/// the store operations' state, several kilobytes that every request would otherwise move
/// into its boxed response future. `None`: run `write_back`.
pub(crate) fn settled(st: &State, renew: bool) -> Option<CookieAction> {
    if st.modified() || st.cycle || st.destroyed.is_some() {
        return None;
    }
    // A tagged cookie goes out again when the read found another tag than it carries.
    let retag = st.tagged && st.tag != st.cookie_tag;
    Some(match st.id.as_deref() {
        Some(id) if st.loaded && (st.created || renew || retag) => CookieAction::Set(id.to_owned()),
        _ => CookieAction::None,
    })
}

/// Writes the request's changes back: one store write of the changed keys, never a
/// retry. `renew`: re-send the cookie of an existing session (a `Max-Age` cookie must roll
/// with the idle expiry, or the browser drops a live session). `tag`: the write tag every
/// write of it leaves (tagged cookies only).
pub(crate) async fn write_back<S: StateStore>(
    store: &S,
    config: &Config,
    st: State,
    renew: bool,
    tag: Option<u64>,
) -> Result<CookieAction, WriteError> {
    if !st.loaded {
        if !st.modified() {
            return Ok(CookieAction::None);
        }
        return write_unread(store, config, st, renew, tag).await;
    }
    // A destroyed session goes first: whatever the handler did afterwards, its id is gone.
    let mut action = CookieAction::None;
    if let Some(old) = &st.destroyed {
        store
            .delete(&store_key(&config.prefix, old))
            .await
            .map_err(WriteError::Store)?;
        metrics::session(SessionOp::Destroy, SessionResult::Ok);
        action = CookieAction::Remove;
    }
    let lifetime = config.lifetime();
    // After a load, `st.id` is `Some` only when the session exists.
    match (st.id.as_deref(), st.cycle) {
        (Some(id), false) => {
            // Created by `Session::update` in this request: its id goes out. A session
            // under the `sid` claim is never `created`: its id stays in the token. A
            // tagged cookie goes out after every write (the tag changed).
            let send = st.created || renew || st.tagged;
            if !st.modified() {
                return Ok(if send {
                    CookieAction::Set(id.to_owned())
                } else {
                    action
                });
            }
            let key = store_key(&config.prefix, id);
            let options = options(config, HashMode::Existing, tag);
            let outcome = store
                .hash_apply(&key, &changes_of(&st), options)
                .await
                .map_err(WriteError::Store)?;
            if matches!(outcome, HashWriteOutcome::Written) {
                metrics::session(SessionOp::Write, SessionResult::Ok);
            }
            match outcome {
                HashWriteOutcome::Written if send => Ok(CookieAction::Set(id.to_owned())),
                HashWriteOutcome::Written => Ok(action),
                // Destroyed or expired meanwhile: it is never resurrected.
                HashWriteOutcome::Missing => {
                    tracing::debug!("session ended during the request; changes dropped");
                    Ok(action)
                }
                HashWriteOutcome::TooLarge(size) => Err(WriteError::TooLarge(size)),
                other => Err(unexpected(other)),
            }
        }
        (Some(old), true) => {
            let changes = HashChanges {
                set: st
                    .view()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.clone()))
                    .collect(),
                ..HashChanges::default()
            };
            let left = st
                .lifetime_left
                .unwrap_or(lifetime)
                .max(Duration::from_millis(1));
            let id = create(store, config, &changes, left, tag).await?;
            store
                .delete(&store_key(&config.prefix, old))
                .await
                .map_err(WriteError::Store)?;
            metrics::session(SessionOp::Destroy, SessionResult::Ok);
            Ok(CookieAction::Set(id))
        }
        (None, _) => {
            let mut changes = changes_of(&st);
            // A new session has nothing to clear or remove.
            changes.clear = false;
            changes.delete.clear();
            // Nothing to keep (no write, only removals, a destroy): no empty session.
            if changes.set.is_empty() {
                return Ok(action);
            }
            match &st.sid {
                // The id travels in the token, not in a cookie or header. Concurrent first
                // writes under one `sid` create it once and all their keys are kept.
                Some(sid) => {
                    let key = store_key(&config.prefix, sid);
                    let options = options(config, HashMode::Upsert { lifetime }, tag);
                    match store
                        .hash_apply(&key, &changes, options)
                        .await
                        .map_err(WriteError::Store)?
                    {
                        HashWriteOutcome::Written => {
                            metrics::session(SessionOp::Write, SessionResult::Ok);
                            Ok(action)
                        }
                        HashWriteOutcome::TooLarge(size) => Err(WriteError::TooLarge(size)),
                        other => Err(unexpected(other)),
                    }
                }
                None => create_from(store, config, changes, action, tag).await,
            }
        }
    }
}
