//! Upbit's deposit, withdrawal, wallet and API-key endpoints, in paper mode.
//!
//! What can be read is real: deposits are the faucet's (`POST /api/v1/deposits`)
//! and each account's opening balance, read from inventory's ledger; there are
//! no withdrawals; every wallet is `working`; API keys are the user's. What
//! would move real funds (withdrawing, real deposits, deposit addresses) cannot
//! exist here and is refused with Upbit's error shape saying so.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use exchange_proto::inventory::v1 as inv;
use exchange_proto::user::v1 as user_pb;
use exchange_proto::user::v1::Permission;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::UpbitRequest;
use crate::error::ApiError;
use crate::exchange::admit;
use crate::state::Shared;
use crate::views;

/// Ledger entries read for one deposit listing (inventory's page maximum).
const LEDGER_PAGE: u32 = 500;

/// Upbit's page size maximum for deposits and withdrawals.
const MAX_LIMIT: usize = 100;

/// A refusal of what paper trading cannot do.
fn paper_only(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "not_supported_in_paper_trading",
        format!(
            "{what} cannot exist in paper trading: no real funds move. Paper KRW comes from POST /api/v1/deposits (the faucet)."
        ),
    )
}

pub async fn withdraw_refused() -> ApiError {
    paper_only("withdrawing")
}

pub async fn deposit_refused() -> ApiError {
    paper_only("depositing real funds")
}

pub async fn address_refused() -> ApiError {
    paper_only("a deposit address")
}

/// A ledger entry that brought money in, as Upbit writes a deposit.
fn deposit_json(e: &inv::LedgerEntry) -> Value {
    json!({
        "type": "deposit",
        "uuid": Uuid::from_u128(e.id as u128).to_string(),
        "currency": e.currency,
        "net_type": e.currency,
        "txid": format!("paper-{}", e.id),
        "state": "ACCEPTED",
        "created_at": views::kst(e.created_at),
        "done_at": views::kst(e.created_at),
        "amount": e.available_delta,
        "fee": "0",
        "transaction_type": "default",
    })
}

async fn deposits_of(gw: &Shared, req: &UpbitRequest) -> Result<Vec<Value>, ApiError> {
    let entries = gw
        .inventory
        .clone()
        .list_ledger(inv::ListLedgerRequest {
            user_id: req.user.to_string(),
            currency: req.param("currency").unwrap_or_default().to_owned(),
            limit: LEDGER_PAGE,
            before_id: None,
        })
        .await?
        .into_inner()
        .entries;
    Ok(entries
        .iter()
        .filter(|e| e.kind == "deposit" || e.kind == "open_account")
        .map(deposit_json)
        .collect())
}

fn page(mut items: Vec<Value>, req: &UpbitRequest) -> Result<Vec<Value>, ApiError> {
    let number = |name: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match req.param(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("{name} must be 1 to {max}"))),
        }
    };
    let limit = number("limit", MAX_LIMIT, MAX_LIMIT)?;
    let page = number("page", 1, 1000)?;
    match req.param("order_by") {
        None | Some("desc") => {}
        Some("asc") => items.reverse(),
        Some(_) => return Err(ApiError::bad_request("order_by must be asc or desc")),
    }
    Ok(items
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect())
}

/// `GET /v1/deposits`: the faucet's deposits and the opening balance, newest
/// first (`currency`, `limit` ≤ 100, `page`, `order_by`).
pub async fn deposits(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    let body = async {
        let all = deposits_of(&gw, &req).await?;
        Ok::<_, ApiError>(Value::Array(page(all, &req)?))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// `GET /v1/deposit?uuid=…` (or `txid`).
pub async fn deposit(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    let body = async {
        let (uuid, txid) = (req.param("uuid"), req.param("txid"));
        if uuid.is_none() && txid.is_none() {
            return Err(ApiError::bad_request("uuid or txid is required"));
        }
        deposits_of(&gw, &req)
            .await?
            .into_iter()
            .find(|d| uuid.is_some_and(|u| d["uuid"] == u) || txid.is_some_and(|t| d["txid"] == t))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "deposit_not_found",
                    "no such deposit",
                )
            })
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// `GET /v1/withdraws`: none — nothing leaves a paper exchange.
pub async fn withdraws(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    counted.answer(StatusCode::OK, Ok(Value::Array(Vec::new())))
}

/// `GET /v1/withdraw`: never found.
pub async fn withdraw(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    counted.answer(
        StatusCode::OK,
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "withdraw_not_found",
            "no such withdrawal: nothing is withdrawn in paper trading",
        )),
    )
}

/// `GET /v1/status/wallet`: every currency of a listed market, `working`.
pub async fn wallet_status(
    State(gw): State<Shared>,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    let body = async {
        let markets = gw.markets().await?;
        let mut currencies: Vec<&str> = markets.iter().flat_map(|m| m.market.split('-')).collect();
        currencies.sort_unstable();
        currencies.dedup();
        Ok::<_, ApiError>(Value::Array(
            currencies
                .into_iter()
                .map(|c| {
                    json!({
                        "currency": c, "wallet_state": "working", "block_state": "normal",
                        "block_height": null, "block_updated_at": null,
                        "block_elapsed_minutes": null, "net_type": c, "network_name": c,
                    })
                })
                .collect(),
        ))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}

/// `GET /v1/api_keys`: the user's usable keys with their expiry.
pub async fn api_keys(State(gw): State<Shared>, req: UpbitRequest) -> Result<Response, ApiError> {
    let counted = admit(&gw, &req, Permission::ViewAccounts, "default").await?;
    let body = async {
        let keys = gw
            .user
            .clone()
            .list_api_keys(user_pb::ListApiKeysRequest {
                user_id: req.user.to_string(),
            })
            .await?
            .into_inner()
            .api_keys;
        let now = chrono::Utc::now().timestamp_millis();
        Ok::<_, ApiError>(Value::Array(
            keys.iter()
                .filter(|k| !k.revoked && k.expire_at > now)
                .map(|k| json!({"access_key": k.access_key, "expire_at": views::kst(k.expire_at)}))
                .collect(),
        ))
    }
    .await;
    counted.answer(StatusCode::OK, body)
}
