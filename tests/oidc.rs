//! OIDC tests.
