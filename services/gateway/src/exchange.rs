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
struct Counted {
    group: &'static str,
    limit: u32,
    decision: Decision,
}

impl Counted {
    fn answer(
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
async fn admit(
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

fn no_order() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "no order returned")
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
                       "avg_buy_price_modified": false, "unit_currency": "KRW"})
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
                "order_types": ["limit"],
                "ord_types": ["limit", "price", "market"],
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
        let required = |k: &str| {
            req.param(k)
                .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
        };
        let request = place_request(
            req.user,
            OrderParams {
                market: required("market")?,
                side: required("side")?,
                ord_type: required("ord_type")?,
                price: req.param("price").unwrap_or_default().to_owned(),
                volume: req.param("volume").unwrap_or_default().to_owned(),
                identifier: req.param("identifier").map(str::to_owned),
                time_in_force: req.param("time_in_force"),
                smp_type: req.param("smp_type"),
            },
            request_key,
        )?;
        let r = gw.order.clone().place_order(request).await?.into_inner();
        let order = r.order.ok_or_else(no_order)?;
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
        let r = gw
            .order
            .clone()
            .get_order(pb::GetOrderRequest {
                user_id: req.user.to_string(),
                uuid,
                identifier,
            })
            .await?
            .into_inner();
        let order = r.order.ok_or_else(no_order)?;
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
        let r = gw
            .order
            .clone()
            .cancel_order(pb::CancelOrderRequest {
                user_id: req.user.to_string(),
                uuid,
                identifier,
            })
            .await?
            .into_inner();
        let order = r.order.ok_or_else(no_order)?;
        Ok::<_, ApiError>(views::upbit_order(&order, false))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

async fn list(
    gw: &Shared,
    req: &UpbitRequest,
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
        let limit = upbit::query::count(req.param("limit"), 100, 100)?;
        let mut wanted = states(&names)?;
        // Upbit shows orders still being opened as "wait".
        if wanted.contains(&(pb::OrderState::Wait as i32)) {
            wanted.push(pb::OrderState::Pending as i32);
        }
        let request = pb::ListOrdersRequest {
            user_id: req.user.to_string(),
            market: req.param("market").unwrap_or_default().to_owned(),
            states: wanted,
            limit,
            page,
            ascending: req.param("order_by") == Some("asc"),
            uuids: req.params("uuids").into_iter().map(str::to_owned).collect(),
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
    list(&gw, &req, &["wait"], &["wait", "watch"]).await
}

pub async fn closed(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    list(&gw, &req, &["done", "cancel"], &["done", "cancel"]).await
}

pub async fn orders(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    list(&gw, &req, &["wait"], &["wait", "watch", "done", "cancel"]).await
}
