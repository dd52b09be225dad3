//! What the layers decide, as metrics (feature `metrics`) and as `tracing` events.
//!
//! Each layer calls one function here per decision, in one line; the function emits a
//! `DEBUG` event with the decision's `result` (always, through `tracing`, whose disabled
//! callsites cost one relaxed load), records the `result` on the layer's decision span
//! when that span is the current one (the span functions below; the layer opens its span
//! around the decision) and, with the feature `metrics`, increments a counter
//! through the [`metrics`](https://docs.rs/metrics) facade. Without the feature the
//! counter code is not compiled, and the crate does not depend on `metrics`.
//!
//! Every label value is a `&'static str` literal, so each counter call uses a static key:
//! no allocation per request. Labels never carry user data (no subject, key, token or
//! path parameter).
//!
//! The names and labels are a public contract, in one table in the crate docs
//! (`src/lib.rs`, "Metrics and traces") and the README; a test holds both to the code.

/// Defines an outcome enum whose variants map to `&'static str` label values, and, with
/// the feature, one counter call with a literal (static) key per variant.
macro_rules! outcomes {
    (
        $(#[$meta:meta])*
        $name:ident, $metric:literal, $target:literal, $message:literal {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every outcome, in the documented order.
            #[cfg(test)]
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The label value.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }

            /// The metric name.
            #[cfg(test)]
            pub(crate) const METRIC: &'static str = $metric;

            #[inline]
            fn record(self) {
                tracing::debug!(target: $target, result = self.as_str(), $message);
                on_decision_span($target, None, self.as_str());
                #[cfg(feature = "metrics")]
                match self {
                    $(Self::$variant => ::metrics::counter!($metric, "result" => $label).increment(1),)+
                }
            }
        }
    };
}

outcomes! {
    /// The JWT layer's verdict on a request (and `RequireScopeLayer`'s, when scopes exist).
    Jwt, "tower_stateless_jwt_total", "tower_stateless::jwt", "jwt decision" {
        /// A token verified.
        Ok => "ok",
        /// No token.
        Missing => "missing",
        /// A token that does not verify, or a malformed request.
        Invalid => "invalid",
        /// A genuinely signed token past its `exp`.
        Expired => "expired",
        /// A verified token without a scope the route requires.
        InsufficientScope => "insufficient_scope",
    }
}

outcomes! {
    /// The revocation check's verdict.
    Revocation, "tower_stateless_revocation_total", "tower_stateless::revocation", "revocation decision" {
        /// Not revoked.
        Ok => "ok",
        /// The token, its session or its subject is revoked.
        Revoked => "revoked",
        /// The store failed or answered something unreadable (fail-open included).
        StoreError => "store_error",
    }
}

outcomes! {
    /// What the idempotency layer did with a request that carries a key.
    Idempotency, "tower_stateless_idempotency_total", "tower_stateless::idempotency", "idempotency decision" {
        /// The handler ran and its response was recorded.
        Executed => "executed",
        /// The recorded response was replayed.
        Replayed => "replayed",
        /// `409`: a request with the key is still running.
        InProgress => "in_progress",
        /// `422`: the key was used for a different request.
        Mismatch => "mismatch",
        /// The handler ran, its answer was not final (or not storable): the key was freed.
        Released => "released",
        /// The claim failed, or the record is unreadable.
        StoreError => "store_error",
    }
}

outcomes! {
    /// The rate-limit layer's verdict.
    RateLimit, "tower_stateless_rate_limit_total", "tower_stateless::rate_limit", "rate limit decision" {
        /// Within the limit.
        Allowed => "allowed",
        /// `429`.
        Limited => "limited",
        /// The store failed (fail-open or fail-closed).
        StoreError => "store_error",
        /// The default key found no caller (no claims, trusted header or peer address):
        /// let through unlimited, with no store step.
        NoKey => "no_key",
    }
}

outcomes! {
    /// What `RefreshTokens` did.
    Refresh, "tower_stateless_refresh_total", "tower_stateless::refresh", "refresh decision" {
        /// A new family's first pair.
        Issued => "issued",
        /// A refresh token exchanged for the next pair.
        Rotated => "rotated",
        /// A consumed refresh token presented again: its family was revoked.
        Reused => "reused",
        /// A malformed, unknown, expired or revoked refresh token.
        Invalid => "invalid",
    }
}

#[cfg(feature = "redis")]
pub(crate) use cache::{local_cache, LocalCacheRead};

/// `LocalCache` exists only with the Redis backend.
#[cfg(feature = "redis")]
mod cache {
    use super::on_decision_span;

    outcomes! {
        /// Whether [`LocalCache`](crate::store::LocalCache) answered a read of its prefixes
        /// from memory (one count per `get` / `get_many` call, not per key).
        LocalCacheRead, "tower_stateless_local_cache_total", "tower_stateless::cache", "local cache read" {
            /// Every key was in memory: no round trip.
            Hit => "hit",
            /// At least one key was not (or tracking is down): the read went to the store.
            Miss => "miss",
        }
    }

    /// A [`LocalCache`](crate::store::LocalCache) read of a cached prefix was answered.
    #[inline]
    pub(crate) fn local_cache(result: LocalCacheRead) {
        result.record();
    }
}

/// The JWT layer decided.
#[inline]
pub(crate) fn jwt(result: Jwt) {
    result.record();
}

/// The revocation check decided.
#[inline]
pub(crate) fn revocation(result: Revocation) {
    result.record();
}

/// The idempotency layer answered a keyed request.
#[inline]
pub(crate) fn idempotency(result: Idempotency) {
    result.record();
}

/// The rate-limit layer decided.
#[inline]
pub(crate) fn rate_limit(result: RateLimit) {
    result.record();
}

/// `RefreshTokens` answered.
#[inline]
pub(crate) fn refresh(result: Refresh) {
    result.record();
}

/// What the session layer did with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionOp {
    /// Read the session when the handler first touched it.
    Load,
    /// Wrote the handler's changes back (or a new session).
    Write,
    /// Deleted a destroyed (or cycled) session.
    Destroy,
}

impl SessionOp {
    #[cfg(test)]
    pub(crate) const ALL: &'static [Self] = &[Self::Load, Self::Write, Self::Destroy];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Write => "write",
            Self::Destroy => "destroy",
        }
    }
}

/// How a session store operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionResult {
    /// Done.
    Ok,
    /// `409`: concurrent writers, retries exhausted.
    Conflict,
    /// The store failed.
    StoreError,
}

impl SessionResult {
    #[cfg(test)]
    pub(crate) const ALL: &'static [Self] = &[Self::Ok, Self::Conflict, Self::StoreError];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Conflict => "conflict",
            Self::StoreError => "store_error",
        }
    }
}

/// The session layer did `op` on the store.
#[inline]
pub(crate) fn session(op: SessionOp, result: SessionResult) {
    tracing::debug!(
        target: "tower_stateless::session",
        op = op.as_str(),
        result = result.as_str(),
        "session decision"
    );
    on_decision_span(
        "tower_stateless::session",
        Some(op.as_str()),
        result.as_str(),
    );
    #[cfg(feature = "metrics")]
    {
        macro_rules! count {
            ($($op:ident => $o:literal),+) => {
                match (op, result) {
                    $(
                        (SessionOp::$op, SessionResult::Ok) => ::metrics::counter!(
                            "tower_stateless_session_total", "op" => $o, "result" => "ok"
                        ),
                        (SessionOp::$op, SessionResult::Conflict) => ::metrics::counter!(
                            "tower_stateless_session_total", "op" => $o, "result" => "conflict"
                        ),
                        (SessionOp::$op, SessionResult::StoreError) => ::metrics::counter!(
                            "tower_stateless_session_total", "op" => $o, "result" => "store_error"
                        ),
                    )+
                }
            };
        }
        count!(Load => "load", Write => "write", Destroy => "destroy").increment(1);
    }
}

// ---- spans ---------------------------------------------------------------------------
//
// One `DEBUG` span per layer decision, on the layer's target, named after the layer; its
// `result` (and the session's `op`) is recorded by the functions above when the decision
// is made inside it. The store's spans (`redis`, `memory`, `store`) nest under it. A
// disabled span is `Span::none()`: one callsite check, no allocation, no formatting.

/// Records a decision on the current span when that span is the deciding layer's own (its
/// target is the layer's): never on an application's span or a store span.
#[inline]
fn on_decision_span(target: &'static str, op: Option<&'static str>, result: &'static str) {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return;
    }
    let span = tracing::Span::current();
    if span.metadata().is_some_and(|m| m.target() == target) {
        if let Some(op) = op {
            span.record("op", op);
        }
        span.record("result", result);
    }
}

/// The span of the JWT layer's (or `RequireScopeLayer`'s) decision on one request.
#[inline]
pub(crate) fn jwt_span() -> tracing::Span {
    tracing::debug_span!(target: "tower_stateless::jwt", "jwt", result = tracing::field::Empty)
}

/// The span of one revocation check, its store read included.
#[inline]
pub(crate) fn revocation_span() -> tracing::Span {
    tracing::debug_span!(
        target: "tower_stateless::revocation",
        "revocation",
        result = tracing::field::Empty
    )
}

/// The span of one session store decision (`op`: load, write or destroy).
#[inline]
pub(crate) fn session_span() -> tracing::Span {
    tracing::debug_span!(
        target: "tower_stateless::session",
        "session",
        op = tracing::field::Empty,
        result = tracing::field::Empty
    )
}

/// Records a session outcome on `span` only: an attempt that is traced but not counted
/// (a `Session::update` attempt that lost a race and is retried, or failed in the store).
#[inline]
pub(crate) fn session_span_only(span: &tracing::Span, op: SessionOp, result: SessionResult) {
    span.record("op", op.as_str());
    span.record("result", result.as_str());
}

/// The span of one keyed request through the idempotency layer: claim, handler, record.
#[inline]
pub(crate) fn idempotency_span() -> tracing::Span {
    tracing::debug_span!(
        target: "tower_stateless::idempotency",
        "idempotency",
        result = tracing::field::Empty
    )
}

/// The span of one rate-limit step.
#[inline]
pub(crate) fn rate_limit_span() -> tracing::Span {
    tracing::debug_span!(
        target: "tower_stateless::rate_limit",
        "rate_limit",
        result = tracing::field::Empty
    )
}

// `RefreshTokens::issue_for_session` and `rotate` run in a `refresh` span of their own
// (`#[tracing::instrument]`, no argument recorded).

/// The span of one operation of a built-in store backend (`redis` or `memory`), `result`
/// recorded by [`StoreResult::record`].
macro_rules! store_span {
    ($backend:literal, $op:expr) => {
        tracing::debug_span!(
            target: "tower_stateless::store",
            $backend,
            op = $op.as_str(),
            result = tracing::field::Empty
        )
    };
}
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use store_span;

/// Runs one synchronous store operation in its span (the in-memory store's).
#[inline]
pub(crate) fn in_memory_span<T>(
    op: StoreOp,
    operation: impl FnOnce() -> Result<T, crate::store::StoreError>,
) -> Result<T, crate::store::StoreError> {
    let span = store_span!("memory", op);
    let result = span.in_scope(operation);
    StoreResult::of(&result).record(&span);
    result
}

/// One [`StateStore`](crate::store::StateStore) method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreOp {
    Get,
    GetMany,
    Set,
    SetIfAbsent,
    CompareAndSet,
    CompareAndDelete,
    GetAndRefresh,
    Delete,
    Gcra,
    HashGetAllAndRefresh,
    HashGetAllAndRefreshLazily,
    HashGetAllCached,
    HashApply,
    HashCompareAndSetField,
}

impl StoreOp {
    /// Every method, in the documented order.
    #[cfg(test)]
    pub(crate) const ALL: &'static [Self] = &[
        Self::Get,
        Self::GetMany,
        Self::Set,
        Self::SetIfAbsent,
        Self::CompareAndSet,
        Self::CompareAndDelete,
        Self::GetAndRefresh,
        Self::Delete,
        Self::Gcra,
        Self::HashGetAllAndRefresh,
        Self::HashGetAllAndRefreshLazily,
        Self::HashGetAllCached,
        Self::HashApply,
        Self::HashCompareAndSetField,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::GetMany => "get_many",
            Self::Set => "set",
            Self::SetIfAbsent => "set_if_absent",
            Self::CompareAndSet => "compare_and_set",
            Self::CompareAndDelete => "compare_and_delete",
            Self::GetAndRefresh => "get_and_refresh",
            Self::Delete => "delete",
            Self::Gcra => "gcra",
            Self::HashGetAllAndRefresh => "hash_get_all_and_refresh",
            Self::HashGetAllAndRefreshLazily => "hash_get_all_and_refresh_lazily",
            Self::HashGetAllCached => "hash_get_all_cached",
            Self::HashApply => "hash_apply",
            Self::HashCompareAndSetField => "hash_compare_and_set_field",
        }
    }
}

/// How a store operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreResult {
    Ok,
    /// [`StoreError::is_unavailable`](crate::store::StoreError::is_unavailable).
    Unavailable,
    /// Any other error.
    Error,
}

impl StoreResult {
    pub(crate) fn of<T>(result: &Result<T, crate::store::StoreError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(e) if e.is_unavailable() => Self::Unavailable,
            Err(_) => Self::Error,
        }
    }

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
        }
    }

    /// Records this result on a store span (nothing when the span is disabled).
    #[inline]
    pub(crate) fn record(self, span: &tracing::Span) {
        span.record("result", self.as_str());
    }
}

/// When a store operation started; a zero-sized nothing without the feature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreTimer {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl StoreTimer {
    #[inline]
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }

    /// Records the operation's duration in `tower_stateless_store_duration_seconds`.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self))]
    pub(crate) fn stop(self, op: StoreOp, result: StoreResult) {
        #[cfg(feature = "metrics")]
        {
            let seconds = self.start.elapsed().as_secs_f64();
            macro_rules! histogram {
                ($($op:ident => $o:literal),+) => {
                    match (op, result) {
                        $(
                            (StoreOp::$op, StoreResult::Ok) => ::metrics::histogram!(
                                "tower_stateless_store_duration_seconds", "op" => $o, "result" => "ok"
                            ),
                            (StoreOp::$op, StoreResult::Unavailable) => ::metrics::histogram!(
                                "tower_stateless_store_duration_seconds", "op" => $o, "result" => "unavailable"
                            ),
                            (StoreOp::$op, StoreResult::Error) => ::metrics::histogram!(
                                "tower_stateless_store_duration_seconds", "op" => $o, "result" => "error"
                            ),
                        )+
                    }
                };
            }
            histogram!(
                Get => "get",
                GetMany => "get_many",
                Set => "set",
                SetIfAbsent => "set_if_absent",
                CompareAndSet => "compare_and_set",
                CompareAndDelete => "compare_and_delete",
                GetAndRefresh => "get_and_refresh",
                Delete => "delete",
                Gcra => "gcra",
                HashGetAllAndRefresh => "hash_get_all_and_refresh",
                HashGetAllAndRefreshLazily => "hash_get_all_and_refresh_lazily",
                HashGetAllCached => "hash_get_all_cached",
                HashApply => "hash_apply",
                HashCompareAndSetField => "hash_compare_and_set_field"
            )
            .record(seconds);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (op, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate docs' table and the README's list exactly the labels the code emits.
    #[test]
    fn documented_table_matches_the_labels() {
        let docs = include_str!("lib.rs");
        let readme = include_str!("../README.md");
        let row = |metric: &str, values: Vec<&str>| {
            for text in [docs, readme] {
                let line = text
                    .lines()
                    .find(|l| l.contains(&format!("| `{metric}` |")))
                    .unwrap_or_else(|| panic!("no table row for {metric}"));
                for v in &values {
                    assert!(
                        line.contains(&format!("`{v}`")),
                        "{metric}: {v} undocumented"
                    );
                }
                assert_eq!(
                    line.matches('`').count() / 2,
                    values.len()
                        + 1
                        + line.matches("`op`").count()
                        + line.matches("`result`").count(),
                    "{metric}: the row lists other values: {line}"
                );
            }
        };
        row(Jwt::METRIC, Jwt::ALL.iter().map(|o| o.as_str()).collect());
        row(
            Revocation::METRIC,
            Revocation::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row(
            Idempotency::METRIC,
            Idempotency::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row(
            RateLimit::METRIC,
            RateLimit::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row(
            Refresh::METRIC,
            Refresh::ALL.iter().map(|o| o.as_str()).collect(),
        );
        #[cfg(feature = "redis")]
        row(
            LocalCacheRead::METRIC,
            LocalCacheRead::ALL.iter().map(|o| o.as_str()).collect(),
        );
        let mut session: Vec<_> = SessionOp::ALL.iter().map(|o| o.as_str()).collect();
        session.extend(SessionResult::ALL.iter().map(|o| o.as_str()));
        row("tower_stateless_session_total", session);
        // The store histogram names each `StateStore` method it times as itself.
        for text in [docs, readme] {
            let line = text
                .lines()
                .find(|l| l.contains("| `tower_stateless_store_duration_seconds` |"))
                .expect("a table row for the store histogram");
            for op in StoreOp::ALL {
                let op = op.as_str();
                assert!(
                    line.contains(&format!("`{op}`")),
                    "store op {op} undocumented"
                );
            }
        }
    }

    /// The span table of the crate docs and the README names each layer's span, its
    /// target, and exactly the result values the metrics use.
    #[test]
    fn documented_span_table_matches_the_vocabulary() {
        let docs = include_str!("lib.rs");
        let readme = include_str!("../README.md");
        let row = |span: &str, values: Vec<&str>| {
            for text in [docs, readme] {
                let prefix = format!("| `{span}` | `tower_stateless::{span}` |");
                let line = text
                    .lines()
                    .find(|l| l.trim_start_matches("//! ").starts_with(&prefix))
                    .unwrap_or_else(|| panic!("no span row for {span}"));
                let result = line.rsplit('|').nth(1).unwrap_or_default();
                for v in &values {
                    assert!(
                        result.contains(&format!("`{v}`")),
                        "{span}: {v} undocumented"
                    );
                }
            }
        };
        row("jwt", Jwt::ALL.iter().map(|o| o.as_str()).collect());
        row(
            "revocation",
            Revocation::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row(
            "idempotency",
            Idempotency::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row(
            "rate_limit",
            RateLimit::ALL.iter().map(|o| o.as_str()).collect(),
        );
        row("refresh", Refresh::ALL.iter().map(|o| o.as_str()).collect());
        let mut session: Vec<_> = SessionOp::ALL.iter().map(|o| o.as_str()).collect();
        session.extend(SessionResult::ALL.iter().map(|o| o.as_str()));
        row("session", session);
    }
}
