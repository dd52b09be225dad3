//! Logins, tokens and devices: `POST /login`, `POST /token/refresh`, `GET /me`,
//! `POST /logout`, `POST /logout-all`, `GET /sessions`, `DELETE /sessions/others`.

use super::*;

#[derive(Deserialize)]
pub(crate) struct Credentials {
    username: String,
    password: String,
}

/// The most of a `User-Agent` a login keeps for `GET /sessions`.
const USER_AGENT_CHARS: usize = 256;

pub(crate) async fn login<S: StateStore>(
    State(app): State<Shared<S>>,
    session: Session,
    headers: HeaderMap,
    json: Result<Json<Credentials>, JsonRejection>,
) -> Response {
    let creds = match json {
        Ok(Json(creds)) => creds,
        Err(e) => return rejected(&e),
    };
    // Counted before the password is checked: guesses spend the quota too.
    match app.login_limiter.check(&creds.username).await {
        Ok(decision) if !decision.allowed() => {
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                rejection::RATE_LIMITED,
                "too many login attempts for this user; retry after the time in Retry-After",
            );
            res.headers_mut().extend(decision.headers());
            return res;
        }
        Ok(_) => {}
        // Fail open, as the layer does: a limiter must not lock every user out.
        Err(e) => tracing::warn!(error = %e, "login rate limit unavailable; attempt let through"),
    }
    if app.users.get(&creds.username) != Some(&creds.password) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong username or password",
        );
    }
    // A new session id at login, against session fixation, and nothing of the cookie
    // session's past: not the cart of a login that was ended (perhaps another user's, on
    // a shared browser; its cookie session is only dropped on its next cart request), nor
    // what was put in before logging in.
    let sid = format!("{:x}", rand_u128());
    let bound = async {
        session.clear().await?;
        session.cycle_id().await?;
        session.insert("user", &creds.username).await?;
        session.insert("sid", &sid).await
    };
    if let Err(e) = bound.await {
        return failed(e);
    }
    let pair = match app.tokens.issue_for_session(&creds.username, &sid).await {
        Ok(pair) => pair,
        Err(e) => return failed(e),
    };
    // Listed under `GET /sessions` (with the client's user agent, cut short), ended by
    // `DELETE /sessions/others`.
    let user_agent: Option<String> = headers
        .get(axum::http::header::USER_AGENT)
        // Lossy: a browser may send non-ASCII bytes (`Navigateur-été` as UTF-8).
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .map(|ua| ua.chars().take(USER_AGENT_CHARS).collect());
    if let Err(e) = app
        .devices
        .bind(&creds.username, &sid, user_agent.as_deref())
        .await
    {
        return failed(e);
    }
    // `200` with the token response, `Cache-Control: no-store` (RFC 6749 §5.1).
    pair.into_response()
}

/// `GET /sessions`: the caller's live logins, `current` marking the caller's own, with the
/// user agent each login sent (when it sent one).
pub(crate) async fn list_sessions<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match app.devices.list(&claims.sub, claims.sid.as_deref()).await {
        Ok(devices) => {
            let sessions: Vec<Value> = devices
                .iter()
                .map(|d| {
                    let mut entry = json!({"id": d.id, "created": d.created, "last_seen": d.last_seen, "current": d.current});
                    if let Some(ua) = &d.user_agent {
                        entry["user_agent"] = Value::from(ua.as_str());
                    }
                    entry
                })
                .collect();
            Json(json!({ "sessions": sessions })).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `DELETE /sessions/others`: ends every other login of the caller (its access and refresh
/// tokens, its session and cart); the caller's own login keeps working.
pub(crate) async fn end_other_sessions<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    let Some(sid) = claims.sid.as_deref() else {
        return error(
            StatusCode::BAD_REQUEST,
            "no_session",
            "the access token names no login (no `sid` claim)",
        );
    };
    match app.devices.end_others(&claims.sub, sid).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct RefreshRequest {
    refresh_token: String,
}

/// `POST /token/refresh`: a new access token and a new refresh token of the same family;
/// the one presented is used up. Presenting a used one again ends the family and its
/// login (a stolen token was replayed, RFC 9700): its access tokens, its cart, its entry
/// under `GET /sessions`.
pub(crate) async fn refresh<S: StateStore>(
    State(app): State<Shared<S>>,
    json: Result<Json<RefreshRequest>, JsonRejection>,
) -> Response {
    let request = match json {
        Ok(Json(request)) => request,
        Err(e) => return rejected(&e),
    };
    // Through the devices: "last seen" moves (at most once a minute), and a reused token
    // ends its whole login (tokens, cart, listing), as `DELETE /sessions/others` does.
    // The crate's answers, success or error, carry `Cache-Control: no-store`.
    match app.devices.rotate(&request.refresh_token).await {
        Ok(pair) => pair.into_response(),
        Err(e) => failed(e),
    }
}

pub(crate) fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap_or_default();
    u128::from_le_bytes(bytes)
}

pub(crate) fn rand_u64() -> u64 {
    // Truncation intended: any 64 of the 128 random bits.
    rand_u128() as u64
}

pub(crate) async fn me(Claims(claims): Claims<RegisteredClaims>) -> Json<serde_json::Value> {
    Json(json!({"sub": claims.sub, "jti": claims.jti, "sid": claims.sid, "exp": claims.exp}))
}

pub(crate) async fn logout<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    session: Session,
) -> Response {
    if let Err(e) = app.revoker.revoke_token(&claims).await {
        return failed(e);
    }
    // The login's refresh tokens and every access token of it; then no longer listed
    // under `GET /sessions`.
    if let Some(sid) = &claims.sid {
        if let Err(e) = app.devices.logout(&claims.sub, sid).await {
            return failed(e);
        }
    }
    match session.destroy().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

pub(crate) async fn logout_all<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    // Every refresh family of the user, every access token issued until now; unlists
    // every login and deletes their sessions.
    match app.devices.logout_everywhere(&claims.sub).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}
