//! Configuration from the environment, logging, metrics and the store connection.

use super::*;

/// Port, store, JWT secret, demo users, gateway latency and limits, from the environment.
pub(crate) struct Config {
    pub(crate) port: u16,
    pub(crate) redis_url: Option<String>,
    pub(crate) cluster_urls: Option<Vec<String>>,
    pub(crate) limits: Limits,
    pub(crate) secret: Vec<u8>,
    pub(crate) users: HashMap<String, String>,
    pub(crate) gateway_latency: Duration,
    pub(crate) oidc: Option<Oidc>,
}

/// An identity provider whose tokens are accepted next to the example's own.
#[cfg_attr(not(feature = "oidc"), allow(dead_code))]
pub(crate) struct Oidc {
    pub(crate) issuer: String,
    pub(crate) audience: Option<String>,
    pub(crate) allow_http: bool,
}

pub(crate) fn config() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = var("PORT").map_or(Ok(3000), |p| {
        p.parse()
            .map_err(|_| format!("PORT must be a port number, got {p:?}"))
    })?;
    let secret = match var("JWT_SECRET") {
        Some(s) => s.into_bytes(),
        None => {
            tracing::warn!("!!! JWT_SECRET is not set: using a RANDOM per-process secret. Tokens die with this process and other instances will NOT accept them. Set the same JWT_SECRET (32+ bytes) on every instance. !!!");
            let mut bytes = vec![0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
            bytes
        }
    };
    let mut users = HashMap::new();
    for pair in var("DEMO_USERS")
        .unwrap_or_else(|| "alice:wonderland,bob:builder".into())
        .split(',')
    {
        let (u, p) = pair
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("DEMO_USERS entries are user:password, got {pair:?}"))?;
        users.insert(u.to_owned(), p.to_owned());
    }
    let gateway_latency = var("GATEWAY_LATENCY_MS").map_or(Ok(0), |ms| {
        ms.parse()
            .map_err(|_| format!("GATEWAY_LATENCY_MS must be milliseconds, got {ms:?}"))
    })?;
    let per_minute = |name: &str, default: u32| {
        var(name).map_or(Ok(default), |n| match n.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name} must be a positive number, got {n:?}")),
        })
    };
    let limits = Limits {
        per_user: per_minute("RATE_LIMIT_PER_MINUTE", 600)?,
        login: per_minute("LOGIN_LIMIT_PER_MINUTE", 10)?,
    };
    let cluster_urls = var("REDIS_CLUSTER_URLS").map(|urls| {
        urls.split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    });
    let allow_http = match var("OIDC_ALLOW_HTTP").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "OIDC_ALLOW_HTTP must be true or false, got {other:?}"
            ))
        }
    };
    let oidc = var("OIDC_ISSUER").map(|issuer| Oidc {
        issuer,
        audience: var("OIDC_AUDIENCE"),
        allow_http,
    });
    Ok(Config {
        port,
        oidc,
        limits,
        cluster_urls,
        redis_url: var("REDIS_URL"),
        secret,
        users,
        gateway_latency: Duration::from_millis(gateway_latency),
    })
}

/// Logs (`LOG_FORMAT`: text lines, or JSON lines for a log collector) and the Prometheus
/// recorder behind `GET /metrics`.
pub(crate) fn observability() -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var("LOG_FORMAT")
        .ok()
        .filter(|v| !v.is_empty())
        .as_deref()
    {
        None | Some("text") => logs.init(),
        Some("json") => logs.json().init(),
        Some(other) => return Err(format!("LOG_FORMAT must be text or json, got {other:?}")),
    }
    // Store latencies as a Prometheus histogram (buckets in seconds), not a summary.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tower_stateless_store_duration_seconds".to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("metrics recorder: {e}"))?;
    // Histogram samples are folded into the buckets by the upkeep; run it now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    METRICS
        .set(handle)
        .map_err(|_| "metrics recorder installed twice".to_owned())
}

/// The recorder `GET /metrics` renders.
pub(crate) static METRICS: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// `GET /metrics`, in the Prometheus text format. Unauthenticated, like the probes: keep it
/// off the public ingress (README, "Metrics and traces").
pub(crate) fn metrics_routes() -> Router {
    async fn render() -> Response {
        match METRICS.get() {
            Some(handle) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
                .into_response(),
            None => error(StatusCode::NOT_FOUND, NOT_FOUND, "no metrics recorder"),
        }
    }
    Router::new()
        .route("/metrics", get(render))
        .method_not_allowed_fallback(wrong_method)
}

/// `keys` plus the provider's: discovery, then its JWKS, refreshed in the background.
/// Start-up fails (with the reason) when the provider gives no keys within 10 s.
#[cfg(feature = "oidc")]
pub(crate) async fn with_provider(keys: JwtKeySet, oidc: Oidc) -> Result<JwtKeySet, String> {
    let remote = tower_stateless::oidc::RemoteJwks::discover(&oidc.issuer)
        .allow_http(oidc.allow_http)
        .build()
        .await
        .map_err(|e| provider_error(&oidc.issuer, &e))?;
    tracing::info!(
        issuer = %oidc.issuer,
        audience = ?oidc.audience,
        "accepting tokens of the identity provider too"
    );
    keys.with_issuer(oidc.issuer, oidc.audience, remote.key_set())
        .map_err(|e| format!("OIDC_ISSUER: {e}"))
}

/// Why the provider gave no keys, in the example's words (where the crate advises
/// `allow_http(true)`, the example's switch is `OIDC_ALLOW_HTTP=true`), with every cause.
#[cfg(feature = "oidc")]
fn provider_error(issuer: &str, e: &tower_stateless::oidc::OidcError) -> String {
    // `build` returns this refusal as it is (never inside `Startup`), for the discovery
    // URL and for the `jwks_uri` it names alike.
    match e {
        tower_stateless::oidc::OidcError::HttpNotAllowed { url } => format!(
            "OIDC_ISSUER {issuer}: refusing plain http for {url}: use https, \
             or set OIDC_ALLOW_HTTP=true for a local provider"
        ),
        e => {
            // The whole chain: "no keys within 10 s" alone does not say that the
            // connection was refused or the document did not parse.
            let mut message = format!("OIDC_ISSUER {issuer}: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            message
        }
    }
}

#[cfg(not(feature = "oidc"))]
pub(crate) async fn with_provider(_: JwtKeySet, _: Oidc) -> Result<JwtKeySet, String> {
    Err("OIDC_ISSUER needs the oidc feature: \
         cargo run --example stateless_api --features axum,metrics,oidc"
        .to_owned())
}

/// A store on a Redis Cluster, from its seed node URLs.
#[cfg(feature = "redis-cluster")]
pub(crate) fn cluster_store(urls: Vec<String>) -> Result<RedisStore, String> {
    let shown: Vec<String> = urls.iter().map(|u| without_password(u)).collect();
    tracing::info!("store: Redis Cluster via {}", shown.join(", "));
    RedisStore::builder()
        .cluster_urls(urls)
        .build()
        .map_err(|e| format!("REDIS_CLUSTER_URLS: {e}"))
}

#[cfg(not(feature = "redis-cluster"))]
pub(crate) fn cluster_store(_: Vec<String>) -> Result<RedisStore, String> {
    Err("REDIS_CLUSTER_URLS needs the redis-cluster feature: \
         cargo run --example stateless_api --features axum,metrics,redis-cluster"
        .to_owned())
}

/// The URL with any password replaced, for the log.
pub(crate) fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}
