//! Session configuration.

use crate::StoreFailure;
use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;

use crate::ConfigError;

/// Where the session id travels.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    Cookie,
    Header(HeaderName),
}

/// Shared configuration of [`SessionLayer`](super::SessionLayer).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) transport: Transport,
    pub(crate) cookie_name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    /// Cookie `Max-Age` in seconds, validated to fit the attribute.
    pub(crate) max_age_secs: Option<i64>,
    pub(crate) idle: Duration,
    /// How much of the idle expiry a read may leave used before it rolls it; `None`: the
    /// default.
    pub(crate) refresh: Option<Duration>,
    pub(crate) absolute: Duration,
    pub(crate) prefix: String,
    pub(crate) use_sid_claim: bool,
    pub(crate) max_retries: u32,
    /// Largest session, in bytes (keys plus JSON values).
    pub(crate) max_bytes: u64,
    pub(crate) on_store_failure: StoreFailure,
    /// The cookie carries the session's write tag, so that a `LocalCache` may answer reads.
    pub(crate) cached_reads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: Transport::Cookie,
            cookie_name: "id".to_owned(),
            path: "/".to_owned(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age_secs: None,
            idle: Duration::from_secs(24 * 3600),
            refresh: None,
            absolute: Duration::from_secs(30 * 24 * 3600),
            prefix: "sess:".to_owned(),
            use_sid_claim: false,
            max_retries: 8,
            max_bytes: DEFAULT_MAX_BYTES,
            on_store_failure: StoreFailure::closed(),
            cached_reads: false,
        }
    }
}

impl Config {
    /// The absolute lifetime of a new session, within the TTL range of the store (a
    /// century: longer is the same as unbounded).
    pub(crate) fn lifetime(&self) -> Duration {
        self.absolute.min(LONGEST_LIFETIME)
    }

    /// The refresh interval in effect: as set, or a tenth of the idle timeout up to a
    /// minute; never more than half the idle timeout.
    pub(crate) fn refresh_interval(&self) -> Duration {
        self.refresh
            .unwrap_or_else(|| (self.idle / 10).min(DEFAULT_REFRESH_INTERVAL_CAP))
            .min(self.idle / 2)
    }
}

/// The default refresh interval is a tenth of the idle timeout, at most this.
const DEFAULT_REFRESH_INTERVAL_CAP: Duration = Duration::from_secs(60);

/// The longest lifetime the store holds.
const LONGEST_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Default session size limit: 1 MiB.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// Largest accepted size limit: 512 MiB, the largest value Redis accepts in one request
/// by default (`proto-max-bulk-len`).
const LARGEST_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// A session size limit: at least one byte, at most 512 MiB.
pub(crate) fn check_max_size(bytes: usize) -> Result<u64, ConfigError> {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    if bytes == 0 {
        return Err(ConfigError::new(
            "max_size",
            "0 bytes; no session key could be stored",
        ));
    }
    if bytes > LARGEST_MAX_BYTES {
        return Err(ConfigError::new(
            "max_size",
            format!("{bytes} bytes is beyond the 512 MiB one store write can carry"),
        ));
    }
    Ok(bytes)
}

/// The shortest idle timeout, absolute lifetime and cookie `Max-Age`: the session's age and
/// the cookie's `Max-Age` count whole seconds, so anything shorter would end every session
/// at once.
const MIN_LIFETIME: Duration = Duration::from_secs(1);

fn at_least_a_second(setting: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value < MIN_LIFETIME {
        return Err(ConfigError::new(
            setting,
            format!("{value:?} is shorter than one second; no session could live that long"),
        ));
    }
    Ok(())
}

/// The cookie `Max-Age`, in the whole seconds of the attribute.
pub(crate) fn max_age_secs(max_age: Duration) -> Result<i64, ConfigError> {
    at_least_a_second("max_age", max_age)?;
    i64::try_from(max_age.as_secs()).map_err(|_| {
        ConfigError::new(
            "max_age",
            format!("{max_age:?} is beyond the cookie `Max-Age` range (i64 seconds)"),
        )
    })
}

/// The idle timeout is the TTL of every session write and refresh: the store must hold it.
pub(crate) fn check_idle_timeout(idle: Duration) -> Result<Duration, ConfigError> {
    at_least_a_second("idle_timeout", idle)?;
    crate::store::ttl_millis(idle).map_err(|_| {
        ConfigError::new(
            "idle_timeout",
            format!("{idle:?} is beyond the longest TTL the store accepts"),
        )
    })?;
    Ok(idle)
}

/// The absolute lifetime only caps TTLs (never a TTL of its own), so any length from one
/// second up works.
pub(crate) fn check_absolute_lifetime(absolute: Duration) -> Result<Duration, ConfigError> {
    at_least_a_second("absolute_lifetime", absolute)?;
    Ok(absolute)
}

/// A cookie name is an RFC 6265 token: visible ASCII except separators. Any other name is
/// percent-encoded on the way out and never matches on the way back in, so every request
/// would start a new session.
pub(crate) fn check_cookie_name(name: &str) -> Result<(), ConfigError> {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={} \t";
    if name.is_empty() {
        return Err(ConfigError::new("cookie_name", "the name is empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
    {
        return Err(ConfigError::new(
            "cookie_name",
            format!("{name:?} is not a cookie token (visible ASCII without separators)"),
        ));
    }
    Ok(())
}

/// A cookie attribute value (`Path`, `Domain`): visible ASCII or space, without `;`, which
/// would end the attribute and start another.
pub(crate) fn check_cookie_attribute(
    setting: &'static str,
    value: &str,
) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(setting, "the value is empty"));
    }
    if !value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b';')
    {
        return Err(ConfigError::new(
            setting,
            format!("{value:?} has a `;`, a control or a non-ASCII character"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_interval_defaults_and_bounds() {
        let with = |idle: u64, refresh: Option<Duration>| Config {
            idle: Duration::from_secs(idle),
            refresh,
            ..Config::default()
        };
        // Default: a tenth of the idle timeout, at most a minute.
        assert_eq!(
            with(24 * 3600, None).refresh_interval(),
            Duration::from_secs(60)
        );
        assert_eq!(with(100, None).refresh_interval(), Duration::from_secs(10));
        assert_eq!(with(1, None).refresh_interval(), Duration::from_millis(100));
        // As set, but never more than half the idle timeout.
        assert_eq!(
            with(100, Some(Duration::ZERO)).refresh_interval(),
            Duration::ZERO
        );
        let set = Some(Duration::from_secs(20));
        assert_eq!(with(100, set).refresh_interval(), Duration::from_secs(20));
        let long = Some(Duration::from_secs(80));
        assert_eq!(with(100, long).refresh_interval(), Duration::from_secs(50));
        assert_eq!(
            with(100, Some(Duration::MAX)).refresh_interval(),
            Duration::from_secs(50)
        );
    }

    #[test]
    fn cookie_names() {
        for ok in ["id", "sid", "__Host-id", "a.b_c-d!#$%&'*+^`|~"] {
            assert!(check_cookie_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a;b", "a=b", "a,b", "é", "a\tb", "a\"b", "{a}"] {
            let err = check_cookie_name(bad).unwrap_err();
            assert_eq!(err.setting(), "cookie_name", "{bad:?}");
        }
    }

    #[test]
    fn cookie_attributes() {
        assert!(check_cookie_attribute("cookie_path", "/app/v1").is_ok());
        assert!(check_cookie_attribute("cookie_domain", "example.com").is_ok());
        for bad in ["", "/a;Secure", "/a\r\nX: y", "/é"] {
            let err = check_cookie_attribute("cookie_path", bad).unwrap_err();
            assert_eq!(err.setting(), "cookie_path", "{bad:?}");
        }
    }
}
