//! A gRPC service (tonic) behind `JwtAuthLayer` with its revocation check: every call needs a
//! valid bearer token in the `authorization` metadata, and `Logout` revokes it for every
//! instance that shares the store.
//!
//! Run with:
//!
//! ```sh
//! cargo run --example tonic_auth                        # prints TOKEN=... for alice
//! grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
//!     -proto account.proto localhost:50051 demo.Account/WhoAmI   # the .proto below
//! ```
//!
//! Environment: `PORT` (50051), `JWT_SECRET` (HS256; unset: a fixed demo secret),
//! `REDIS_URL` (unset: in-memory store, so a revocation is seen by this process only).
//!
//! The messages are plain Rust structs with prost derives, and the service is written by
//! hand as the generated code would be: no `.proto` compilation, no `protoc`, no build
//! script. The equivalent `.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package demo;
//! service Account {
//!   rpc WhoAmI (Empty) returns (Identity);   // who the token speaks for
//!   rpc Logout (Empty) returns (Empty);      // revoke the token
//! }
//! message Empty {}
//! message Identity { string sub = 1; string jti = 2; uint64 exp = 3; }
//! ```
//!
//! A missing, invalid or revoked token is refused by the layers before the service runs.
//! The layers see that the request is gRPC (`content-type: application/grpc`) and answer
//! with a gRPC status (`UNAUTHENTICATED`, `UNAVAILABLE`, ...) in a trailers-only response,
//! which a gRPC client reads like any other status.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
use tower_stateless::revocation::Revoker;
use tower_stateless::store::{MemoryStore, RedisStore, StateStore};
use tower_stateless::RegisteredClaims;

const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// `demo.Empty`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// `demo.Identity`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Identity {
    /// The token's subject.
    #[prost(string, tag = "1")]
    pub sub: String,
    /// The token's id.
    #[prost(string, tag = "2")]
    pub jti: String,
    /// The token's expiry, seconds since the Unix epoch.
    #[prost(uint64, tag = "3")]
    pub exp: u64,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The caller's claims, which `JwtAuthLayer` put into the request extensions (tonic keeps
/// the HTTP request's extensions).
fn claims<T>(request: &Request<T>) -> Result<RegisteredClaims, Status> {
    request
        .extensions()
        .get::<RegisteredClaims>()
        .cloned()
        .ok_or_else(|| Status::new(Code::Unauthenticated, "no verified token"))
}

/// The `demo.Account` service.
struct Account<S> {
    revoker: Revoker<S>,
}

impl<S: Clone> Clone for Account<S> {
    fn clone(&self) -> Self {
        Self {
            revoker: self.revoker.clone(),
        }
    }
}

impl<S> NamedService for Account<S> {
    const NAME: &'static str = "demo.Account";
}

struct WhoAmI;

impl UnaryService<Empty> for WhoAmI {
    type Response = Identity;
    type Future = BoxFuture<Response<Identity>, Status>;

    fn call(&mut self, request: Request<Empty>) -> Self::Future {
        let claims = claims(&request);
        Box::pin(async move {
            let claims = claims?;
            Ok(Response::new(Identity {
                sub: claims.sub,
                jti: claims.jti.unwrap_or_default(),
                exp: claims.exp,
            }))
        })
    }
}

struct Logout<S>(Revoker<S>);

impl<S: StateStore> UnaryService<Empty> for Logout<S> {
    type Response = Empty;
    type Future = BoxFuture<Response<Empty>, Status>;

    fn call(&mut self, request: Request<Empty>) -> Self::Future {
        let claims = claims(&request);
        let revoker = self.0.clone();
        Box::pin(async move {
            revoker
                .revoke_token(&claims?)
                .await
                .map_err(|_| Status::unavailable("the state store is unavailable"))?;
            Ok(Response::new(Empty {}))
        })
    }
}

impl<S: StateStore> tower::Service<http::Request<tonic::body::Body>> for Account<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let revoker = self.revoker.clone();
        Box::pin(async move {
            // What the generated server does: route by path, decode, call, encode.
            Ok(match request.uri().path() {
                "/demo.Account/WhoAmI" => {
                    let codec = ProstCodec::<Identity, Empty>::default();
                    Grpc::new(codec).unary(WhoAmI, request).await
                }
                "/demo.Account/Logout" => {
                    let codec = ProstCodec::<Empty, Empty>::default();
                    Grpc::new(codec).unary(Logout(revoker), request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn serve<S: StateStore>(
    store: S,
    policy: TokenPolicy,
    port: u16,
) -> Result<(), Box<dyn std::error::Error>> {
    let account = Account {
        revoker: Revoker::new(store.clone(), &policy),
    };
    println!("listening on 127.0.0.1:{port}");
    tonic::transport::Server::builder()
        // Verify the token, then check in the same layer that it was not revoked.
        .layer(policy.auth_layer().revocation(store))
        .add_service(account)
        .serve(([127, 0, 0, 1], port).into())
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let port = var("PORT").map_or(Ok(50051), |p| p.parse())?;
    let secret =
        var("JWT_SECRET").unwrap_or_else(|| "tonic-auth-demo-secret-not-for-production".to_owned());
    let keys = JwtKeySet::new().with_hmac("main", Algorithm::HS256, secret.as_bytes())?;
    let policy = TokenPolicy::builder(keys)
        .signing_key("main")
        .access_ttl(TOKEN_TTL)
        .build()?;
    let token = policy.token_issuer()?.issue("alice")?.token;
    println!("TOKEN={token}");
    match var("REDIS_URL") {
        Some(url) => serve(RedisStore::from_url(url)?, policy, port).await,
        None => serve(MemoryStore::new(), policy, port).await,
    }
}
