use std::time::Duration;

use tower_layer::Layer;

use super::RevocationService;

/// Applies [`RevocationService`]: refuses requests whose token, session or subject was
/// revoked. See the [module docs](super) for placement and behaviour.
#[derive(Debug, Clone)]
pub struct RevocationLayer<St> {
    pub(super) store: St,
    pub(super) fail_open: bool,
    pub(super) retry_after: Duration,
}

impl<St> RevocationLayer<St> {
    /// A layer checking the revocation list in `store`: fail closed, `Retry-After: 1`.
    pub fn new(store: St) -> Self {
        Self {
            store,
            fail_open: false,
            retry_after: Duration::from_secs(1),
        }
    }

    /// When the store cannot be reached, let requests through (logging a warning for each)
    /// instead of answering `503`.
    ///
    /// # Security
    ///
    /// While the store is down, revoked tokens are accepted: a logged-out or stolen token
    /// works again. Opt in only where availability matters more than that.
    #[must_use]
    pub fn fail_open(mut self) -> Self {
        self.fail_open = true;
        self
    }

    /// The `Retry-After` sent with a `503` when the store cannot be reached (whole
    /// seconds, at least 1; default 1 s).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl<S, St: Clone> Layer<S> for RevocationLayer<St> {
    type Service = RevocationService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RevocationService {
            inner,
            layer: self.clone(),
        }
    }
}
