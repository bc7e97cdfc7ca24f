//! Upbit's endpoints that act on several orders, or on an order and its
//! replacement: `GET`/`DELETE /v1/orders/uuids`, `DELETE /v1/orders/open`,
//! `POST /v1/orders/cancel_and_new` and `POST /v1/orders/test`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use exchange_proto::order::v1 as pb;
use exchange_proto::user::v1::Permission;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::auth::UpbitRequest;
use crate::error::ApiError;
use crate::exchange::{admit, admit_window, cancel_one, get_one, order_params, place_order};
use crate::idempotency::{RequestKey, kept_by_retries};
use crate::private::{OrderParams, place_request};
use crate::state::Shared;
use crate::views;

/// Most orders named in one `uuids[]`/`identifiers[]` request.
const MAX_LISTED: usize = 100;
const MAX_CANCELLED_BY_ID: usize = 20;
/// Most orders one `DELETE /v1/orders/open` cancels (Upbit's).
const MAX_CANCEL_ALL: u32 = 300;
/// Most pairs in `pairs` or `excluded_pairs`.
const MAX_PAIRS: usize = 20;
/// Cancels run this many at a time.
const CANCEL_CONCURRENCY: usize = 8;

/// The orders a request names: `uuids[]` or `identifiers[]`, exactly one of
/// them, at most `max`.
fn named(req: &UpbitRequest, max: usize) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let uuids: Vec<String> = req.params("uuids").into_iter().map(str::to_owned).collect();
    let identifiers: Vec<String> = req
        .params("identifiers")
        .into_iter()
        .map(str::to_owned)
        .collect();
    match (uuids.len(), identifiers.len()) {
        (0, 0) => Err(ApiError::bad_request(
            "uuids[] or identifiers[] is required",
        )),
        (a, b) if a > 0 && b > 0 => Err(ApiError::bad_request(
            "give uuids[] or identifiers[], not both",
        )),
        (a, b) if a + b > max => Err(ApiError::bad_request(format!(
            "at most {max} uuids or identifiers"
        ))),
        _ => Ok((uuids, identifiers)),
    }
}

fn every_state() -> Vec<i32> {
    use pb::OrderState::*;
    [Pending, Wait, Done, Cancel, Rejected]
        .iter()
        .map(|s| *s as i32)
        .collect()
}

/// `GET /v1/orders/uuids`: the orders named, in any state.
pub async fn by_ids(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewOrders, "default").await?;
    let body = async {
        let (uuids, identifiers) = named(&req, MAX_LISTED)?;
        let request = pb::ListOrdersRequest {
            user_id: req.user.to_string(),
            market: req.param("market").unwrap_or_default().to_owned(),
            states: every_state(),
            limit: MAX_LISTED as u32,
            ascending: req.param("order_by") == Some("asc"),
            uuids,
            identifiers,
            ..Default::default()
        };
        let r = gw.order.clone().list_orders(request).await?.into_inner();
        Ok(Value::Array(
            r.orders
                .iter()
                .map(|o| views::upbit_order(o, false))
                .collect(),
        ))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// One order a batch cancel names, as Upbit lists it in its answer.
fn entry(uuid: &str, market: &str, identifier: &str) -> Value {
    json!({
        "uuid": uuid,
        "market": (!market.is_empty()).then_some(market),
        "identifier": (!identifier.is_empty()).then_some(identifier),
    })
}

/// Cancels each `(uuid, identifier)` (one of them set), a few at a time;
/// Upbit's answer: `{"success": {count, orders}, "failed": {count, orders}}`.
async fn cancel_each(gw: &Shared, user: &str, targets: Vec<(String, String, String)>) -> Value {
    let results: Vec<Result<pb::Order, (String, String, String)>> =
        futures_util::stream::iter(targets)
            .map(|(uuid, identifier, market)| {
                let mut order = gw.order.clone();
                let request = pb::CancelOrderRequest {
                    user_id: user.to_owned(),
                    uuid: uuid.clone(),
                    identifier: identifier.clone(),
                };
                async move {
                    match order.cancel_order(request).await {
                        Ok(r) => r.into_inner().order.ok_or((uuid, identifier, market)),
                        Err(_) => Err((uuid, identifier, market)),
                    }
                }
            })
            .buffered(CANCEL_CONCURRENCY)
            .collect()
            .await;
    let (mut success, mut failed) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(o) => success.push(entry(&o.uuid, &o.market, &o.identifier)),
            Err((uuid, identifier, market)) => {
                failed.push(entry(&uuid, &market, &identifier));
            }
        }
    }
    json!({
        "success": {"count": success.len(), "orders": success},
        "failed": {"count": failed.len(), "orders": failed},
    })
}

/// `DELETE /v1/orders/uuids`: cancels up to 20 named open orders.
pub async fn cancel_by_ids(
    State(gw): State<Shared>,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::MakeOrders, "default").await?;
    let body = async {
        let (uuids, identifiers) = named(&req, MAX_CANCELLED_BY_ID)?;
        let targets = uuids
            .into_iter()
            .map(|u| (u, String::new(), String::new()))
            .chain(
                identifiers
                    .into_iter()
                    .map(|i| (String::new(), i, String::new())),
            )
            .collect();
        Ok(cancel_each(&gw, &req.user.to_string(), targets).await)
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// A comma-separated list of market codes, at most [`MAX_PAIRS`].
fn pairs(req: &UpbitRequest, name: &str) -> Result<Vec<String>, ApiError> {
    let Some(text) = req.param(name) else {
        return Ok(Vec::new());
    };
    let pairs: Vec<String> = text.split(',').map(|p| p.trim().to_owned()).collect();
    if pairs.len() > MAX_PAIRS {
        return Err(ApiError::bad_request(format!(
            "{name} takes at most {MAX_PAIRS} pairs"
        )));
    }
    for p in &pairs {
        upbit::market::MarketCode::parse(p)
            .map_err(|_| ApiError::bad_request(format!("{name}: `{p}` is not a pair")))?;
    }
    Ok(pairs)
}

/// `DELETE /v1/orders/open`: cancels up to `count` (20, at most 300) open
/// orders, newest first unless `order_by=asc`, filtered by `cancel_side`,
/// `pairs` or `quote_currencies`, and `excluded_pairs`. Query parameters only,
/// 1 request per 2 seconds (Upbit's `order-cancel-all` group).
pub async fn cancel_open(
    State(gw): State<Shared>,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let counted = admit_window(&gw, &req, Permission::MakeOrders, "order-cancel-all", 1, 2).await?;
    let body = async {
        let side = match req.param("cancel_side").unwrap_or("all") {
            "all" => None,
            "bid" => Some(pb::Side::Bid as i32),
            "ask" => Some(pb::Side::Ask as i32),
            _ => return Err(ApiError::bad_request("cancel_side must be all, bid or ask")),
        };
        let wanted = pairs(&req, "pairs")?;
        let excluded = pairs(&req, "excluded_pairs")?;
        let quotes: Vec<&str> = req
            .param("quote_currencies")
            .map(|q| q.split(',').map(str::trim).collect())
            .unwrap_or_default();
        if !wanted.is_empty() && !quotes.is_empty() {
            return Err(ApiError::bad_request(
                "give pairs or quote_currencies, not both",
            ));
        }
        let count = upbit::query::count(req.param("count"), 20, MAX_CANCEL_ALL)?;
        let ascending = match req.param("order_by").unwrap_or("desc") {
            "desc" => false,
            "asc" => true,
            _ => return Err(ApiError::bad_request("order_by must be asc or desc")),
        };
        // Every open order (a user has at most a few hundred), then the filters.
        let request = pb::ListOrdersRequest {
            user_id: req.user.to_string(),
            states: vec![pb::OrderState::Wait as i32],
            limit: 1000,
            ascending,
            ..Default::default()
        };
        let open = gw
            .order
            .clone()
            .list_orders(request)
            .await?
            .into_inner()
            .orders;
        let targets = open
            .into_iter()
            .filter(|o| side.is_none_or(|s| o.side == s))
            .filter(|o| wanted.is_empty() || wanted.contains(&o.market))
            .filter(|o| {
                quotes.is_empty() || quotes.iter().any(|q| o.market.split('-').next() == Some(q))
            })
            .filter(|o| !excluded.contains(&o.market))
            .take(count as usize)
            .map(|o| (o.uuid, String::new(), o.market))
            .collect();
        Ok(cancel_each(&gw, &req.user.to_string(), targets).await)
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// `POST /v1/orders/cancel_and_new`: cancels an open order and places its
/// replacement (`new_ord_type`, `new_price`, `new_volume` — `remain_only` for
/// what the cancelled order had left — `new_identifier`,
/// `new_time_in_force`, `new_smp_type`). Answers the cancelled order with
/// `new_order_uuid` and `new_order_identifier`. A replacement that would be
/// refused whatever the funds (its price, total, identifier, the book) is
/// refused before the cancel, which then does not happen; one refused after
/// the cancel (say, for funds) leaves the cancel standing, and the refusal is
/// the answer. A retry (the same `Idempotency-Key`, or `X-Request-Id`) of a
/// request that went through gets the same answer, not a refusal to cancel
/// the order again.
pub async fn cancel_and_new(
    State(gw): State<Shared>,
    RequestKey(request_key): RequestKey,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::MakeOrders, "order").await?;
    let body = async {
        let uuid = req.param("prev_order_uuid").unwrap_or_default().to_owned();
        let identifier = req
            .param("prev_order_identifier")
            .unwrap_or_default()
            .to_owned();
        if uuid.is_empty() == identifier.is_empty() {
            return Err(ApiError::bad_request(
                "give prev_order_uuid or prev_order_identifier",
            ));
        }
        let new_ord_type = req
            .param("new_ord_type")
            .ok_or_else(|| ApiError::bad_request("new_ord_type is required"))?;
        // The replacement of `prev`, as the request describes it.
        let replacement = |prev: &pb::Order, request_key: String| {
            let volume = match req.param("new_volume") {
                Some("remain_only") => prev.remaining_volume.clone(),
                other => other.unwrap_or_default().to_owned(),
            };
            place_request(
                req.user,
                OrderParams {
                    market: &prev.market,
                    side: views::side(prev.side),
                    ord_type: new_ord_type,
                    price: req.param("new_price").unwrap_or_default().to_owned(),
                    volume,
                    identifier: req.param("new_identifier").map(str::to_owned),
                    time_in_force: req.param("new_time_in_force"),
                    smp_type: req.param("new_smp_type"),
                },
                request_key,
            )
        };
        // A replacement that would be refused (off tick, under the minimum, a
        // used identifier, a stale book) is refused before anything is
        // cancelled: the order the client has stays.
        let prev = get_one(&gw, req.user, uuid.clone(), identifier.clone()).await?;
        if prev.state == pb::OrderState::Wait as i32 {
            let mut test = replacement(&prev, String::new())?;
            test.test = true;
            place_order(&gw, test).await?;
        }
        let mut new_key = format!("{request_key}:new");
        new_key.truncate(128);
        let (cancelled, placed) = match cancel_one(&gw, req.user, uuid, identifier).await {
            Ok(cancelled) => {
                let request = replacement(&cancelled, new_key)?;
                (cancelled, place_order(&gw, request).await?)
            }
            // A retry of a request whose first attempt cancelled the order:
            // the replacement that attempt placed, if it did (placing none).
            Err(refused)
                if kept_by_retries(&request_key) && prev.state == pb::OrderState::Cancel as i32 =>
            {
                let mut request = replacement(&prev, new_key)?;
                request.only_existing = true;
                match place_order(&gw, request).await {
                    Ok(placed) => (prev, placed),
                    Err(_) => return Err(refused),
                }
            }
            Err(refused) => return Err(refused),
        };
        let mut body = views::upbit_order(&cancelled, false);
        body["new_order_uuid"] = Value::from(placed.uuid);
        body["new_order_identifier"] = (!placed.identifier.is_empty())
            .then_some(placed.identifier)
            .into();
        Ok(body)
    }
    .await;
    counted.answer(StatusCode::CREATED, body)
}

/// `POST /v1/orders/test`: validates an order and plans it against the live
/// book as `POST /v1/orders` would, and answers what it would be, without
/// placing it (Upbit's `order-test` group).
pub async fn test(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::MakeOrders, "order-test").await?;
    let body = async {
        let mut request = place_request(req.user, order_params(&req)?, String::new())?;
        request.test = true;
        Ok(views::upbit_order(&place_order(&gw, request).await?, false))
    }
    .await;
    counted.answer(StatusCode::CREATED, body)
}
