//! The session cart: `GET /cart`, `PUT /cart/items/{sku}`, one session key per SKU.

use super::*;

/// The cart is one session key per SKU (`cart:<sku>` → quantity), so concurrent changes of
/// different items, on any instance, never overwrite each other.
pub(crate) const CART: &str = "cart:";

/// The cart as this request sees it: the `cart:` keys, read from the session loaded once.
pub(crate) async fn cart_items(session: &Session) -> Result<BTreeMap<String, u32>, SessionError> {
    let mut items = BTreeMap::new();
    for key in session.keys_with_prefix(CART).await? {
        if let Some(qty) = session.get::<u32>(&key).await? {
            items.insert(key[CART.len()..].to_owned(), qty);
        }
    }
    Ok(items)
}

/// A cart of a login that was ended (`DELETE /sessions/others` from another device) is
/// gone: the cookie session of an ended login is destroyed on its next use. One read of
/// the user's login index for a logged-in cart.
pub(crate) async fn drop_ended_login<S: StateStore>(
    app: &App<S>,
    session: &Session,
) -> Result<(), Response> {
    let user = session.get::<String>("user").await;
    let sid = session.get::<String>("sid").await;
    let (user, sid) = match (user, sid) {
        (Ok(Some(user)), Ok(Some(sid))) => (user, sid),
        (Err(e), _) | (_, Err(e)) => return Err(failed(e)),
        _ => return Ok(()),
    };
    match app.devices.is_live(&user, &sid).await {
        Ok(true) => Ok(()),
        Ok(false) => session.destroy().await.map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

pub(crate) async fn cart<S: StateStore>(
    State(app): State<Shared<S>>,
    session: Session,
) -> Response {
    if let Err(res) = drop_ended_login(&app, &session).await {
        return res;
    }
    match cart_items(&session).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct Quantity {
    qty: u32,
}

pub(crate) async fn put_item<S: StateStore>(
    State(app): State<Shared<S>>,
    session: Session,
    Path(sku): Path<String>,
    json: Result<Json<Quantity>, JsonRejection>,
) -> Response {
    let q = match json {
        Ok(Json(q)) => q,
        Err(e) => return rejected(&e),
    };
    if let Err(res) = drop_ended_login(&app, &session).await {
        return res;
    }
    let key = format!("{CART}{sku}");
    let changed = if q.qty == 0 {
        session.remove(&key).await
    } else {
        session.insert(&key, q.qty).await
    };
    if let Err(e) = changed {
        return failed(e);
    }
    match cart_items(&session).await {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => failed(e),
    }
}
