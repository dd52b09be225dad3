//! Orders and payments: `POST`/`GET /orders`, `GET /orders/{id}`, `POST`/`GET /payments`,
//! `GET /payments/{id}`. Each `201` names its record in `Location`, which `GET` answers for
//! its owner.

use super::*;

// Orders and payments live only in the store: one key per record and, per user, an index
// (a JSON list of ids) appended to by compare-and-set. Both carry the user in a hash tag,
// so listing is one `GET` of the index plus one `MGET` of the records, also on a cluster.

/// What can go wrong while storing or reading records.
pub(crate) enum RecordError {
    Store(StoreError),
    /// A stored value that is not what this example writes.
    Corrupt(serde_json::Error),
    /// Too many concurrent appends to one index; the client may retry.
    Contended,
    /// The record under this id (the caller's `Idempotency-Key`) was made by another
    /// request: the key was reused after the idempotency layer forgot it.
    KeyReused,
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl IntoResponse for RecordError {
    fn into_response(self) -> Response {
        match self {
            Self::Store(e) => failed(e),
            Self::Corrupt(e) => {
                tracing::error!(error = %e, "corrupt record in the store");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    rejection::INTERNAL_ERROR,
                    "internal server error",
                )
            }
            Self::Contended => unavailable(),
            Self::KeyReused => key_reused(),
        }
    }
}

pub(crate) fn record_key(collection: &str, sub: &str, id: &str) -> String {
    format!("{collection}:{{{sub}}}:{id}")
}

pub(crate) fn index_key(collection: &str, sub: &str) -> String {
    format!("{collection}:{{{sub}}}:index")
}

/// `422 idempotency_key_reused`, in the idempotency layer's words: the key names a record
/// that another request made.
pub(crate) fn key_reused() -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        rejection::IDEMPOTENCY_KEY_REUSED,
        "this idempotency key was used for a different request",
    )
}

/// Whether `stored` was made by the request that made `record`: the same values in the
/// fields taken from the request (`request_fields`; the id, status and time are not).
pub(crate) fn same_request(stored: &Value, record: &Value, request_fields: &[&str]) -> bool {
    request_fields
        .iter()
        .all(|field| stored.get(field) == record.get(field))
}

/// A record as `create` left it.
pub(crate) struct Stored {
    pub(crate) record: Value,
    /// Made by an earlier attempt with the same key, not by this request.
    pub(crate) earlier: bool,
}

/// Stores `record` under `id` unless a record with that id exists, then makes sure `id` is
/// in the caller's index. Returns the stored record: on a retry, the first one; when the
/// record there holds other values in `request_fields` (the key was reused for another
/// request once the idempotency layer had forgotten it), [`RecordError::KeyReused`] and
/// nothing changes.
///
/// Safe to run again with the same id after any failure or crash part way through, which
/// is what makes an id derived from the idempotency key exactly-once: a retry that runs
/// the handler again (the first attempt died after storing, before the idempotency layer
/// recorded the response) finds the record instead of making a second one.
pub(crate) async fn create<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
    id: &str,
    record: &Value,
    request_fields: &[&str],
) -> Result<Stored, RecordError> {
    let bytes = Bytes::from(serde_json::to_vec(record).map_err(RecordError::Corrupt)?);
    let stored = match store
        .set_if_absent(&record_key(collection, sub, id), bytes, RECORD_TTL)
        .await?
    {
        None => Stored {
            record: record.clone(),
            earlier: false,
        },
        Some(existing) => {
            let existing: Value =
                serde_json::from_slice(&existing).map_err(RecordError::Corrupt)?;
            if !same_request(&existing, record, request_fields) {
                return Err(RecordError::KeyReused);
            }
            Stored {
                record: existing,
                earlier: true,
            }
        }
    };
    append_to_index(store, &index_key(collection, sub), id).await?;
    Ok(stored)
}

pub(crate) async fn append_to_index<S: StateStore>(
    store: &S,
    index: &str,
    id: &str,
) -> Result<(), RecordError> {
    for attempt in 0..INDEX_ATTEMPTS {
        let current = store.get(index).await?;
        let mut ids: Vec<String> = match &current {
            Some(bytes) => serde_json::from_slice(bytes).map_err(RecordError::Corrupt)?,
            None => Vec::new(),
        };
        if ids.iter().any(|known| known == id) {
            return Ok(());
        }
        ids.push(id.to_owned());
        let new = Bytes::from(serde_json::to_vec(&ids).map_err(RecordError::Corrupt)?);
        let written = match &current {
            Some(old) => store.compare_and_set(index, old, new, RECORD_TTL).await?,
            None => store.set_if_absent(index, new, RECORD_TTL).await?.is_none(),
        };
        if written {
            return Ok(());
        }
        // Another request appended first: back off a little, with jitter, and retry.
        let ceiling = 1u64 << attempt.min(5);
        tokio::time::sleep(Duration::from_millis(1 + rand_u64() % ceiling)).await;
    }
    Err(RecordError::Contended)
}

/// The caller's records, oldest first.
pub(crate) async fn list<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
) -> Result<Vec<Value>, RecordError> {
    let Some(index) = store.get(&index_key(collection, sub)).await? else {
        return Ok(Vec::new());
    };
    let ids: Vec<String> = serde_json::from_slice(&index).map_err(RecordError::Corrupt)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids
        .iter()
        .map(|id| record_key(collection, sub, id))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    store
        .get_many(&keys)
        .await?
        .into_iter()
        .flatten()
        .map(|bytes| serde_json::from_slice(&bytes).map_err(RecordError::Corrupt))
        .collect()
}

pub(crate) async fn fetch<S: StateStore>(
    store: &S,
    collection: &str,
    sub: &str,
    id: &str,
) -> Result<Option<Value>, RecordError> {
    match store.get(&record_key(collection, sub, id)).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(RecordError::Corrupt),
        None => Ok(None),
    }
}

/// A new record id: derived from the caller and the idempotency key when there is one (so
/// a retry finds the record it made before), random otherwise.
///
/// `IdempotencyLayer` already runs a request once and replays its answer; this covers the
/// one gap no layer can: an instance killed after the handler stored the record but before
/// the layer recorded the response. The retry then runs the handler again, once the lease
/// has expired, and must not pay twice.
pub(crate) fn record_id(prefix: &str, sub: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(sub.as_bytes())
                .chain_update([0])
                .chain_update(key.as_bytes())
                .finalize();
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}_{hex}")
        }
        None => format!("{prefix}_{:024x}", rand_u128() >> 32),
    }
}

/// Whether `id` has the shape `record_id` gives (`{prefix}_` and 24 hex digits). Other
/// path segments name no record; `index`, the caller's list of ids, is one of them.
pub(crate) fn is_record_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `201` with the record and its `Location`. A record an earlier attempt with the same key
/// made is that attempt's answer again, marked as the idempotency layer marks a replay
/// (`Idempotent-Replayed: true`): the layer's own record of it had expired or was released.
pub(crate) fn created(location: String, stored: Stored) -> Response {
    let mut res = (StatusCode::CREATED, Json(stored.record)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        res.headers_mut().insert("location", value);
    }
    if stored.earlier {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

/// The fields of an order that its request chose.
const ORDER_REQUEST: &[&str] = &["sku", "qty"];
/// The fields of a payment that its request chose.
const PAYMENT_REQUEST: &[&str] = &["amount_cents", "currency"];

#[derive(Deserialize)]
pub(crate) struct NewOrder {
    sku: String,
    qty: i64,
}

pub(crate) fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) async fn create_order<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    headers: HeaderMap,
    json: Result<Json<NewOrder>, JsonRejection>,
) -> Response {
    let order = match json {
        Ok(Json(order)) => order,
        Err(e) => return rejected(&e),
    };
    if !valid_sku(&order.sku) {
        return invalid("sku must be 1 to 64 letters, digits, '-' or '_'");
    }
    if !(1..=1000).contains(&order.qty) {
        return invalid("qty must be between 1 and 1000");
    }
    let id = record_id("ord", &claims.sub, idempotency_key(&headers));
    let record = json!({
        "order_id": id,
        "sku": order.sku,
        "qty": order.qty,
        "status": "placed",
        "created_at": now_secs(),
    });
    match create(
        &app.store,
        "orders",
        &claims.sub,
        &id,
        &record,
        ORDER_REQUEST,
    )
    .await
    {
        Ok(stored) => created(format!("/orders/{id}"), stored),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn list_orders<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match list(&app.store, "orders", &claims.sub).await {
        Ok(orders) => Json(json!({ "orders": orders })).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn get_order<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    Path(id): Path<String>,
) -> Response {
    if !is_record_id("ord", &id) {
        return error(StatusCode::NOT_FOUND, NOT_FOUND, "no such order");
    }
    // Records are keyed by their owner, so another user's id is simply not found.
    match fetch(&app.store, "orders", &claims.sub, &id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, NOT_FOUND, "no such order"),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct NewPayment {
    amount_cents: i64,
    currency: String,
}

pub(crate) async fn create_payment<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    headers: HeaderMap,
    json: Result<Json<NewPayment>, JsonRejection>,
) -> Response {
    // `IdempotencyLayer::required` answers 400 before this; the key is needed here too.
    let Some(key) = idempotency_key(&headers) else {
        return error(
            StatusCode::BAD_REQUEST,
            rejection::IDEMPOTENCY_KEY_REQUIRED,
            "payments need an Idempotency-Key header",
        );
    };
    let payment = match json {
        Ok(Json(payment)) => payment,
        Err(e) => return rejected(&e),
    };
    if !(1..=100_000_000).contains(&payment.amount_cents) {
        return invalid("amount_cents must be between 1 and 100000000");
    }
    if payment.currency.len() != 3 || !payment.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return invalid("currency must be a three-letter ISO 4217 code, like EUR");
    }
    let id = record_id("pay", &claims.sub, Some(key));
    let record = json!({
        "payment_id": id,
        "amount_cents": payment.amount_cents,
        "currency": payment.currency,
        "status": "captured",
        "created_at": now_secs(),
    });
    // A payment stored by an earlier attempt with this key is not charged again; one that
    // another payment stored under the key (reused once the idempotency layer forgot it)
    // is refused, never answered as this payment's.
    match fetch(&app.store, "payments", &claims.sub, &id).await {
        Ok(Some(stored)) if !same_request(&stored, &record, PAYMENT_REQUEST) => {
            return key_reused();
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::debug!(payment_id = %id, "calling the payment gateway");
            tokio::time::sleep(app.gateway_latency).await;
        }
        Err(e) => return e.into_response(),
    }
    match create(
        &app.store,
        "payments",
        &claims.sub,
        &id,
        &record,
        PAYMENT_REQUEST,
    )
    .await
    {
        Ok(stored) => created(format!("/payments/{id}"), stored),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn list_payments<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
) -> Response {
    match list(&app.store, "payments", &claims.sub).await {
        Ok(payments) => Json(json!({ "payments": payments })).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn get_payment<S: StateStore>(
    State(app): State<Shared<S>>,
    Claims(claims): Claims<RegisteredClaims>,
    Path(id): Path<String>,
) -> Response {
    if !is_record_id("pay", &id) {
        return error(StatusCode::NOT_FOUND, NOT_FOUND, "no such payment");
    }
    // Keyed by their owner, as orders are: another user's id is not found.
    match fetch(&app.store, "payments", &claims.sub, &id).await {
        Ok(Some(payment)) => Json(payment).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, NOT_FOUND, "no such payment"),
        Err(e) => e.into_response(),
    }
}
