//! Upbit-compatible exchange API: `/v1/accounts`, `/v1/orders/chance`,
//! `POST /v1/orders`, `GET`/`DELETE /v1/order`, `/v1/orders/open`,
//! `/v1/orders/closed` and `GET /v1/orders`, authenticated with Upbit-style
//! signed JWTs, limited per user (`default` 30/s, `order` 12/s) with
//! `Remaining-Req` on every answer.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use exchange_proto::inventory::v1 as inv;
use exchange_proto::order::v1 as pb;
use exchange_proto::user::v1::Permission;
use serde_json::{Value, json};

use crate::auth::{UpbitRequest, private_limit};
use crate::error::ApiError;
use crate::idempotency::RequestKey;
use crate::private::{OrderParams, place_request, states};
use crate::ratelimit::Decision;
use crate::state::Shared;
use crate::views;

/// A request admitted and counted in its group: every answer to it, error or
/// not, carries the group's `Remaining-Req`, as Upbit's do.
pub(crate) struct Counted {
    group: &'static str,
    limit: u32,
    decision: Decision,
}

impl Counted {
    pub(crate) fn answer(
        self,
        status: StatusCode,
        body: Result<Value, ApiError>,
    ) -> Result<Response, ApiError> {
        let header = self.decision.header(self.group, self.limit);
        match body {
            Ok(body) => {
                let mut resp = (status, Json(body)).into_response();
                if let Some(v) = header {
                    resp.headers_mut().insert("remaining-req", v);
                }
                Ok(resp)
            }
            Err(e) => Err(e.with_remaining_req(header)),
        }
    }
}

/// A verified request's next steps: its key must have `permission`, then it
/// is counted in `group` (per user, whichever of its keys or the native API
/// it uses).
pub(crate) async fn admit(
    gw: &Shared,
    req: &UpbitRequest,
    permission: Permission,
    group: &'static str,
) -> Result<Counted, ApiError> {
    req.require(permission)?;
    Ok(Counted {
        group,
        limit: gw.limits.private(group),
        decision: private_limit(gw, group, &req.user.to_string()).await?,
    })
}

/// Upbit's `Remaining-Req` for a request counted in a group whose window is
/// longer than a second (`order-cancel-all`: 1 per 2 s).
pub(crate) async fn admit_window(
    gw: &Shared,
    req: &UpbitRequest,
    permission: Permission,
    group: &'static str,
    limit: u32,
    window_secs: u64,
) -> Result<Counted, ApiError> {
    req.require(permission)?;
    let decision = gw
        .limiter
        .check_window(group, &req.user.to_string(), limit, window_secs)
        .await;
    if decision == Decision::Limited {
        return Err(crate::ratelimit::refusal(decision, group, limit));
    }
    Ok(Counted {
        group,
        limit,
        decision,
    })
}

pub(crate) fn no_order() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "no order returned")
}

/// Cancels one of `user`'s orders by uuid or identifier; the order as it is
/// once cancelled (or was, when already done).
pub(crate) async fn cancel_one(
    gw: &Shared,
    user: uuid::Uuid,
    uuid: String,
    identifier: String,
) -> Result<pb::Order, ApiError> {
    gw.order
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            user_id: user.to_string(),
            uuid,
            identifier,
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(no_order)
}

/// One of `user`'s orders by uuid or identifier.
pub(crate) async fn get_one(
    gw: &Shared,
    user: uuid::Uuid,
    uuid: String,
    identifier: String,
) -> Result<pb::Order, ApiError> {
    gw.order
        .clone()
        .get_order(pb::GetOrderRequest {
            user_id: user.to_string(),
            uuid,
            identifier,
        })
        .await?
        .into_inner()
        .order
        .ok_or_else(no_order)
}

pub async fn accounts(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    let body = async {
        let r = gw
            .inventory
            .clone()
            .get_balances(inv::GetBalancesRequest {
                user_id: req.user.to_string(),
            })
            .await?
            .into_inner();
        let body = Value::Array(r.balances.iter().map(views::upbit_account).collect());
        Ok::<_, ApiError>(body)
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

pub async fn chance(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewOrders, "default").await?;
    let body = async {
        let market = req
            .param("market")
            .ok_or_else(|| ApiError::bad_request("market is required"))?;
        let c = gw
            .order
            .clone()
            .get_order_chance(pb::GetOrderChanceRequest {
                market: market.to_owned(),
            })
            .await?
            .into_inner();
        let balances = gw
            .inventory
            .clone()
            .get_balances(inv::GetBalancesRequest {
                user_id: req.user.to_string(),
            })
            .await?
            .into_inner()
            .balances;
        let account = |currency: &str| {
            balances
            .iter()
            .find(|b| b.currency == currency)
            .map(views::upbit_account)
            .unwrap_or_else(|| {
                json!({"currency": currency, "balance": "0", "locked": "0", "avg_buy_price": "0",
                       "avg_buy_price_modified": false, "unit_currency": c.quote_currency})
            })
        };
        let body = json!({
            "bid_fee": c.bid_fee,
            "ask_fee": c.ask_fee,
            "maker_bid_fee": c.bid_fee,
            "maker_ask_fee": c.ask_fee,
            "market": {
                "id": c.market,
                "name": format!("{}/{}", c.base_currency, c.quote_currency),
                // Upbit's deprecated list, and the current ones by side.
                "order_types": ["limit"],
                "bid_types": ["best_fok", "best_ioc", "limit", "limit_fok", "limit_ioc", "price"],
                "ask_types": ["best_fok", "best_ioc", "limit", "limit_fok", "limit_ioc", "market"],
                "order_sides": ["ask", "bid"],
                "bid": {"currency": c.quote_currency, "price_unit": null, "min_total": c.min_total},
                "ask": {"currency": c.base_currency, "price_unit": null, "min_total": c.min_total},
                "max_total": c.max_total,
                "state": "active",
            },
            "bid_account": account(&c.quote_currency),
            "ask_account": account(&c.base_currency),
        });
        Ok::<_, ApiError>(body)
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// An order as a signed request gives it, in Upbit's parameter names.
pub(crate) fn order_params(req: &UpbitRequest) -> Result<OrderParams<'_>, ApiError> {
    let required = |k: &str| {
        req.param(k)
            .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
    };
    Ok(OrderParams {
        market: required("market")?,
        side: required("side")?,
        ord_type: required("ord_type")?,
        price: req.param("price").unwrap_or_default().to_owned(),
        volume: req.param("volume").unwrap_or_default().to_owned(),
        identifier: req.param("identifier").map(str::to_owned),
        time_in_force: req.param("time_in_force"),
        smp_type: req.param("smp_type"),
    })
}

/// The order service's answer to a placement (or a test of one).
pub(crate) async fn place_order(
    gw: &Shared,
    request: pb::PlaceOrderRequest,
) -> Result<pb::Order, ApiError> {
    gw.order
        .clone()
        .place_order(request)
        .await
        .map_err(ApiError::placement)?
        .into_inner()
        .order
        .ok_or_else(no_order)
}

/// Upbit answers 201 with the order; an order whose outcome is not known yet
/// shows as `wait` (as Upbit shows orders being opened) and a retry of a request
/// gets the order it made.
pub async fn place(
    State(gw): State<Shared>,
    RequestKey(request_key): RequestKey,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::MakeOrders, "order").await?;
    let body = async {
        let request = place_request(req.user, order_params(&req)?, request_key)?;
        let order = place_order(&gw, request).await?;
        Ok::<_, ApiError>(views::upbit_order(&order, false))
    }
    .await;
    counted.answer(StatusCode::CREATED, body)
}

fn which(req: &UpbitRequest) -> Result<(String, String), ApiError> {
    let uuid = req.param("uuid").unwrap_or_default().to_owned();
    let identifier = req.param("identifier").unwrap_or_default().to_owned();
    if uuid.is_empty() && identifier.is_empty() {
        return Err(ApiError::bad_request("uuid or identifier is required"));
    }
    Ok((uuid, identifier))
}

pub async fn get(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewOrders, "default").await?;
    let body = async {
        let (uuid, identifier) = which(&req)?;
        let order = get_one(&gw, req.user, uuid, identifier).await?;
        Ok::<_, ApiError>(views::upbit_order(&order, true))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// Upbit counts a cancel in the `default` group, not `order` (which is
/// placements only).
pub async fn cancel(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::MakeOrders, "default").await?;
    let body = async {
        let (uuid, identifier) = which(&req)?;
        let order = cancel_one(&gw, req.user, uuid, identifier).await?;
        Ok::<_, ApiError>(views::upbit_order(&order, false))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// Upbit's longest window for closed orders.
const CLOSED_WINDOW_MS: i64 = 7 * 86_400_000;

/// `start_time`/`end_time` of closed orders (ISO 8601 or Unix ms), as Upbit
/// reads them: a window of at most 7 days, ending now when neither is given.
fn closed_window(req: &UpbitRequest, now_ms: i64) -> Result<(i64, i64), ApiError> {
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        match req.param(name) {
            None => Ok(None),
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 15 => Ok(v.parse().ok()),
            Some(v) => upbit::query::to_time(Some(v))
                .map_err(|_| ApiError::bad_request(format!("{name} must be ISO 8601 or Unix ms"))),
        }
    };
    let (from, to) = match (time("start_time")?, time("end_time")?) {
        (None, None) => (now_ms - CLOSED_WINDOW_MS, now_ms),
        (Some(from), None) => (from, from.saturating_add(CLOSED_WINDOW_MS)),
        (None, Some(to)) => (to.saturating_sub(CLOSED_WINDOW_MS), to),
        (Some(from), Some(to)) => (from, to),
    };
    if to < from || to - from > CLOSED_WINDOW_MS {
        return Err(ApiError::bad_request(
            "start_time must come before end_time, at most 7 days before it",
        ));
    }
    Ok((from, to))
}

/// Which list: open orders (`limit` up to 100, paged) or closed ones (up to
/// 1,000 in a window of at most 7 days).
#[derive(Clone, Copy, PartialEq)]
enum Listing {
    Open,
    Closed,
    Any,
}

async fn list(
    gw: &Shared,
    req: &UpbitRequest,
    listing: Listing,
    default_states: &[&str],
    allowed: &[&str],
) -> Result<Response, ApiError> {
    let counted = admit(gw, req, Permission::ViewOrders, "default").await?;
    let body = async {
        let mut names: Vec<&str> = req.params("states");
        if let Some(s) = req.param("state") {
            names.push(s);
        }
        if names.is_empty() {
            names = default_states.to_vec();
        }
        if let Some(bad) = names.iter().find(|n| !allowed.contains(n)) {
            return Err(ApiError::bad_request(format!(
                "state `{bad}` is not allowed here"
            )));
        }
        let page = match req.param("page") {
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| ApiError::bad_request("page must be 1 or more"))?,
            None => 1,
        };
        let max = if listing == Listing::Closed {
            1000
        } else {
            100
        };
        let limit = upbit::query::count(req.param("limit"), 100, max)?;
        let mut wanted = states(&names)?;
        if wanted.is_empty() {
            // Only `watch` (reserved orders), which paper trading has none of.
            return Ok(Value::Array(Vec::new()));
        }
        // Upbit shows orders still being opened as "wait".
        if wanted.contains(&(pb::OrderState::Wait as i32)) {
            wanted.push(pb::OrderState::Pending as i32);
        }
        let (created_from, created_to) = if listing == Listing::Closed {
            closed_window(req, chrono::Utc::now().timestamp_millis())?
        } else {
            (0, 0)
        };
        let request = pb::ListOrdersRequest {
            user_id: req.user.to_string(),
            market: req.param("market").unwrap_or_default().to_owned(),
            states: wanted,
            limit,
            page,
            ascending: req.param("order_by") == Some("asc"),
            uuids: req.params("uuids").into_iter().map(str::to_owned).collect(),
            identifiers: req
                .params("identifiers")
                .into_iter()
                .map(str::to_owned)
                .collect(),
            created_from,
            created_to,
        };
        let r = gw.order.clone().list_orders(request).await?.into_inner();
        let body = Value::Array(
            r.orders
                .iter()
                .map(|o| views::upbit_order(o, false))
                .collect(),
        );
        Ok::<_, ApiError>(body)
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

pub async fn open(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    list(&gw, &req, Listing::Open, &["wait"], &["wait", "watch"]).await
}

pub async fn closed(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    list(
        &gw,
        &req,
        Listing::Closed,
        &["done", "cancel"],
        &["done", "cancel"],
    )
    .await
}

pub async fn orders(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    list(
        &gw,
        &req,
        Listing::Any,
        &["wait"],
        &["wait", "watch", "done", "cancel"],
    )
    .await
}
