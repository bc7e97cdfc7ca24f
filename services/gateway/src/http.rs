//! The HTTP router: probes, Upbit-compatible quotation and WebSocket, the
//! native JSON API. Every matched route is observed (span, RED metrics,
//! `x-served-by`).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::error::ApiError;
use crate::ratelimit::{self, Decision};
use crate::state::{ClientIp, Shared};
use crate::{batch, exchange, native, observe, private, quotation, wallet, web, ws, ws_private};

pub fn router(gw: Shared) -> Router {
    // Upbit-compatible quotation API and public WebSocket: what Upbit limits
    // further for requests that carry an Origin header (browsers).
    let public = Router::new()
        .route("/v1/market/all", get(quotation::market_all))
        .route("/v1/ticker", get(quotation::ticker))
        .route("/v1/ticker/all", get(quotation::ticker_all))
        .route("/v1/orderbook", get(quotation::orderbook))
        .route(
            "/v1/orderbook/instruments",
            get(quotation::orderbook_instruments),
        )
        .route(
            "/v1/orderbook/supported_levels",
            get(quotation::orderbook_levels),
        )
        .route("/v1/trades/ticks", get(quotation::trades))
        .route(
            "/v1/candles/minutes/{unit}",
            get(quotation::candles_minutes),
        )
        .route("/v1/candles/seconds", get(quotation::candles_seconds))
        .route("/v1/candles/days", get(quotation::candles_days))
        .route("/v1/candles/weeks", get(quotation::candles_weeks))
        .route("/v1/candles/months", get(quotation::candles_months))
        .route("/v1/candles/years", get(quotation::candles_years))
        .route("/websocket/v1", get(ws::upgrade))
        .route_layer(middleware::from_fn_with_state(gw.clone(), origin_limit));
    let api = Router::new()
        .merge(public)
        .route("/websocket/v1/private", get(ws_private::upgrade_key))
        // Native API.
        .route("/api/v1/markets", get(native::markets))
        .route("/api/v1/tickers", get(native::tickers))
        .route("/api/v1/orderbooks/{market}", get(native::orderbook))
        .route("/api/v1/trades/{market}", get(native::trades))
        .route("/api/v1/candles/{market}", get(native::candles))
        // Native private API.
        .route("/api/v1/auth/register", post(private::register))
        .route("/api/v1/auth/login", post(private::login))
        .route("/api/v1/auth/refresh", post(private::refresh))
        .route("/api/v1/auth/logout", post(private::logout))
        .route(
            "/api/v1/api-keys",
            post(private::create_api_key).get(private::list_api_keys),
        )
        .route(
            "/api/v1/api-keys/{access_key}",
            delete(private::revoke_api_key),
        )
        .route("/api/v1/accounts", get(private::accounts))
        .route("/api/v1/deposits", post(private::deposit))
        .route(
            "/api/v1/orders",
            post(private::place_order).get(private::list_orders),
        )
        .route(
            "/api/v1/orders/{uuid}",
            get(private::get_order).delete(private::cancel_order),
        )
        .route("/api/v1/websocket", get(ws_private::upgrade_page))
        // Upbit-compatible exchange API.
        .route("/v1/accounts", get(exchange::accounts))
        .route("/v1/orders/chance", get(exchange::chance))
        .route("/v1/orders", post(exchange::place).get(exchange::orders))
        .route("/v1/order", get(exchange::get).delete(exchange::cancel))
        .route(
            "/v1/orders/open",
            get(exchange::open).delete(batch::cancel_open),
        )
        .route(
            "/v1/orders/uuids",
            get(batch::by_ids).delete(batch::cancel_by_ids),
        )
        .route("/v1/orders/cancel_and_new", post(batch::cancel_and_new))
        .route("/v1/orders/test", post(batch::test))
        .route("/v1/orders/closed", get(exchange::closed))
        // Paper mode: what can be read is real, what would move funds is refused.
        .route("/v1/deposits", get(wallet::deposits))
        .route("/v1/deposit", get(wallet::deposit))
        .route("/v1/withdraws", get(wallet::withdraws))
        .route("/v1/withdraw", get(wallet::withdraw))
        .route("/v1/status/wallet", get(wallet::wallet_status))
        .route("/v1/api_keys", get(wallet::api_keys))
        .route(
            "/v1/withdraws/coin",
            post(wallet::withdraw_refused).delete(wallet::withdraw_refused),
        )
        .route("/v1/withdraws/krw", post(wallet::withdraw_refused))
        .route("/v1/withdraws/chance", get(wallet::withdraw_refused))
        .route(
            "/v1/withdraws/coin_addresses",
            get(wallet::withdraw_refused),
        )
        .route("/v1/deposits/krw", post(wallet::deposit_refused))
        .route("/v1/deposits/chance/coin", get(wallet::deposit_refused))
        .route(
            "/v1/deposits/generate_coin_address",
            post(wallet::address_refused),
        )
        .route("/v1/deposits/coin_addresses", get(wallet::address_refused))
        .route("/v1/deposits/coin_address", get(wallet::address_refused))
        .route_layer(middleware::from_fn_with_state(gw.clone(), admit))
        .route_layer(middleware::from_fn_with_state(gw.clone(), observe::observe));
    Router::new()
        .route("/", get(web::index))
        .route("/assets/{*path}", get(web::asset))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { ApiError::not_found() })
        .layer(middleware::map_response(crate::error::upbit_shape))
        .with_state(gw)
}

/// Upbit's rule for requests with an `Origin` header (browsers) on quotation
/// REST and the public WebSocket: `RATE_LIMIT_ORIGIN` per 10 s per IP.
async fn origin_limit(
    State(gw): State<Shared>,
    ip: ClientIp,
    request: Request,
    next: Next,
) -> Response {
    let limit = gw.limits.origin_per_10s;
    if limit > 0 && cross_origin(request.headers()) {
        let decision = gw
            .limiter
            .check_window("origin", &ip.0.to_string(), limit, 10)
            .await;
        if decision == Decision::Limited {
            return ratelimit::too_many(decision, "origin", limit);
        }
    }
    next.run(request).await
}

/// Whether a request carries an `Origin` other than the host it was sent to
/// (this exchange's own page is not a third-party site).
fn cross_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    !matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Every route's first step, before any other work for the request: requests
/// per second from the client's IP (`RATE_LIMIT_IP`); then the request must be
/// answered within `REQUEST_TIMEOUT`, body read included (a WebSocket is
/// answered at once with its upgrade).
async fn admit(State(gw): State<Shared>, ip: ClientIp, request: Request, next: Next) -> Response {
    let limit = gw.limits.per_ip;
    let decision = gw.limiter.check("ip", &ip.0.to_string(), limit).await;
    if matches!(decision, Decision::Limited | Decision::Blocked { .. }) {
        return ratelimit::too_many(decision, "ip", limit);
    }
    match tokio::time::timeout(gw.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request was not completed in time; one that places an order may have \
             placed it: look before repeating it",
        )
        .into_response(),
    }
}

async fn readyz(State(gw): State<Shared>) -> impl IntoResponse {
    if gw.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
