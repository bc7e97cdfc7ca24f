//! The native private API (`/api/v1/...`): accounts, API keys, balances,
//! deposits and orders, with bearer access tokens.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use exchange_proto::inventory::v1 as inv;
use exchange_proto::order::v1 as pb;
use exchange_proto::user::v1 as user_pb;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::auth::{NativeUser, private_limit};
use crate::error::ApiError;
use crate::idempotency::RequestKey;
use crate::ratelimit::Decision;
use crate::state::{ClientIp, Shared};
use crate::views;

/// A JSON body whose errors answer in Upbit's error shape.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad_request(
                "Content-Type: application/json is required",
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is too large",
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

fn user_json(u: Option<user_pb::User>) -> Value {
    u.map(|u| json!({"id": u.id, "email": u.email, "created_at": u.created_at}))
        .unwrap_or(Value::Null)
}

fn tokens_json(t: Option<user_pb::TokenPair>) -> Value {
    t.map(|t| {
        json!({"access_token": t.access_token, "refresh_token": t.refresh_token, "token_type": t.token_type, "expires_in": t.expires_in})
    })
    .unwrap_or(Value::Null)
}

/// Refuses the request (429) when its IP sent more than `limit` sign-ins,
/// sign-ups and refreshes this minute.
async fn auth_budget(gw: &Shared, ip: ClientIp) -> Result<(), ApiError> {
    let decision = gw
        .limiter
        .check_window("auth", &ip.0.to_string(), gw.limits.auth_per_minute, 60)
        .await;
    if decision == Decision::Limited {
        return Err(too_many(
            "too many sign-in requests from this address; retry in a minute",
        ));
    }
    Ok(())
}

fn too_many(message: &str) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
}

/// The key failed logins of an email are counted under (the email itself is
/// not written to Redis).
fn account_key(email: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(email.trim().to_lowercase().as_bytes())[..16])
}

/// Window over which failed logins of an account are counted.
const LOGIN_FAILURE_WINDOW: u64 = 15 * 60;

/// Signs up. The answer is the same whether the email was free or taken (it
/// tells nothing about which accounts exist): log in to use the account.
/// Throttled per client IP (`RATE_LIMIT_AUTH` a minute, `RATE_LIMIT_SIGNUP` an
/// hour: each account is paper money).
pub async fn register(
    State(gw): State<Shared>,
    ip: ClientIp,
    Body(c): Body<Credentials>,
) -> Result<Response, ApiError> {
    auth_budget(&gw, ip).await?;
    let decision = gw
        .limiter
        .check_window("signup", &ip.0.to_string(), gw.limits.signup_per_hour, 3600)
        .await;
    if decision == Decision::Limited {
        return Err(too_many(
            "too many sign-ups from this address; try again later",
        ));
    }
    let email = c.email.trim().to_lowercase();
    let result = gw
        .user
        .clone()
        .register(user_pb::RegisterRequest {
            email: c.email,
            password: c.password,
        })
        .await;
    match result {
        Ok(_) => {}
        // Taken: answered as a new one would be.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(status.into()),
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"email": email, "status": "registered: log in with this email and password"})),
    )
        .into_response())
}

/// Logs in. Throttled per client IP, and per account once it failed
/// `LOGIN_FAILURES` times in 15 minutes (counted for any email, known or not),
/// all before a password is hashed.
pub async fn login(
    State(gw): State<Shared>,
    ip: ClientIp,
    Body(c): Body<Credentials>,
) -> Result<Json<Value>, ApiError> {
    auth_budget(&gw, ip).await?;
    let account = account_key(&c.email);
    let limit = gw.limits.login_failures;
    if limit > 0
        && gw
            .limiter
            .count("loginfail", &account, limit, LOGIN_FAILURE_WINDOW)
            .await
            >= u64::from(limit)
    {
        // The count drops by one every window / limit.
        let minutes = (LOGIN_FAILURE_WINDOW / u64::from(limit)).div_ceil(60);
        return Err(too_many(&format!(
            "too many failed logins for this account; retry in {minutes} minutes"
        )));
    }
    let result = gw
        .user
        .clone()
        .login(user_pb::LoginRequest {
            email: c.email,
            password: c.password,
        })
        .await;
    let r = match result {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if status.code() == tonic::Code::Unauthenticated {
                gw.limiter
                    .check_window("loginfail", &account, limit, LOGIN_FAILURE_WINDOW)
                    .await;
            }
            return Err(status.into());
        }
    };
    let mut body = tokens_json(r.tokens);
    body["user"] = user_json(r.user);
    Ok(Json(body))
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(
    State(gw): State<Shared>,
    ip: ClientIp,
    Body(b): Body<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    auth_budget(&gw, ip).await?;
    let r = gw
        .user
        .clone()
        .refresh(user_pb::RefreshRequest {
            refresh_token: b.refresh_token,
        })
        .await?
        .into_inner();
    Ok(Json(tokens_json(r.tokens)))
}

#[derive(Deserialize, Default)]
pub struct LogoutBody {
    /// Every session of the user, not only this token's.
    #[serde(default)]
    everywhere: bool,
}

/// `POST /api/v1/auth/logout` with the access token as bearer: ends its
/// session (`{"everywhere": true}`: all of the user's), so its access and
/// refresh tokens stop working.
pub async fn logout(
    State(gw): State<Shared>,
    ip: ClientIp,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    auth_budget(&gw, ip).await?;
    let token = crate::auth::bearer(&headers)?.to_owned();
    let b: LogoutBody = if body.is_empty() {
        LogoutBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let r = gw
        .user
        .clone()
        .logout(user_pb::LogoutRequest {
            access_token: token.clone(),
            everywhere: b.everywhere,
        })
        .await?
        .into_inner();
    gw.tokens.forget(&token);
    Ok(Json(json!({"sessions_ended": r.sessions_ended})))
}

#[derive(Deserialize, Default)]
pub struct NewKey {
    /// The account's password again: a stolen access token alone makes no keys.
    #[serde(default)]
    password: String,
    #[serde(default)]
    label: String,
    /// Permission names; absent: all of them.
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

/// A permission's name in the native API (`view_accounts`, …).
fn permission_name(p: user_pb::Permission) -> String {
    p.as_str_name()
        .trim_start_matches("PERMISSION_")
        .to_lowercase()
}

fn permission_of(name: &str) -> Result<user_pb::Permission, ApiError> {
    user_pb::Permission::from_str_name(&format!("PERMISSION_{}", name.to_uppercase()))
        .filter(|p| *p != user_pb::Permission::Unspecified)
        .ok_or_else(|| {
            ApiError::bad_request("permissions are some of view_accounts, view_orders, make_orders")
        })
}

fn key_json(k: &user_pb::ApiKey) -> Value {
    let permissions: Vec<String> = k.permissions().map(permission_name).collect();
    let mut v = json!({
        "access_key": k.access_key, "label": k.label, "created_at": k.created_at,
        "expire_at": k.expire_at, "revoked": k.revoked, "permissions": permissions,
    });
    if !k.secret_key.is_empty() {
        v["secret_key"] = Value::from(k.secret_key.as_str());
    }
    v
}

/// `POST /api/v1/api-keys` `{"password": "...", "label": "...", "permissions":
/// ["view_orders"]}`: the password is checked again (one hash, so counted in
/// the sign-in budget of the client's IP).
pub async fn create_api_key(
    State(gw): State<Shared>,
    ip: ClientIp,
    NativeUser(user): NativeUser,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    auth_budget(&gw, ip).await?;
    let new = serde_json::from_slice::<NewKey>(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if new.password.is_empty() {
        return Err(ApiError::bad_request(
            "password is required to make an API key",
        ));
    }
    let permissions = match new.permissions {
        None => Vec::new(),
        Some(names) if names.is_empty() || names.len() > 8 => {
            return Err(ApiError::bad_request(
                "permissions must name at least one permission",
            ));
        }
        Some(names) => names
            .iter()
            .map(|n| permission_of(n).map(|p| p as i32))
            .collect::<Result<_, _>>()?,
    };
    let r = gw
        .user
        .clone()
        .create_api_key(user_pb::CreateApiKeyRequest {
            user_id: user.to_string(),
            label: new.label,
            permissions,
            password: new.password,
        })
        .await?
        .into_inner();
    let key = r
        .api_key
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "no key returned"))?;
    Ok((StatusCode::CREATED, Json(key_json(&key))).into_response())
}

pub async fn list_api_keys(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let r = gw
        .user
        .clone()
        .list_api_keys(user_pb::ListApiKeysRequest {
            user_id: user.to_string(),
        })
        .await?
        .into_inner();
    Ok(Json(
        json!({"api_keys": r.api_keys.iter().map(key_json).collect::<Vec<_>>()}),
    ))
}

pub async fn revoke_api_key(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let r = gw
        .user
        .clone()
        .revoke_api_key(user_pb::RevokeApiKeyRequest {
            user_id: user.to_string(),
            access_key: key,
        })
        .await?
        .into_inner();
    Ok(Json(
        r.api_key.as_ref().map(key_json).unwrap_or(Value::Null),
    ))
}

fn balance_json(b: &inv::Balance) -> Value {
    json!({"currency": b.currency, "balance": b.balance, "locked": b.locked, "avg_buy_price": b.avg_buy_price, "unit_currency": b.unit_currency})
}

pub async fn accounts(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let r = gw
        .inventory
        .clone()
        .get_balances(inv::GetBalancesRequest {
            user_id: user.to_string(),
        })
        .await?
        .into_inner();
    Ok(Json(
        json!({"accounts": r.balances.iter().map(balance_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
pub struct Deposit {
    currency: String,
    amount: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub async fn deposit(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    RequestKey(request_key): RequestKey,
    Body(d): Body<Deposit>,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let key = d.idempotency_key.unwrap_or(request_key);
    let r = gw
        .inventory
        .clone()
        .deposit(inv::DepositRequest {
            user_id: user.to_string(),
            currency: d.currency,
            amount: d.amount,
            idempotency_key: key,
        })
        .await?
        .into_inner();
    Ok(Json(
        json!({"balance": r.balance.as_ref().map(balance_json)}),
    ))
}

#[derive(Deserialize)]
pub struct NewOrder {
    market: String,
    side: String,
    ord_type: String,
    #[serde(default)]
    price: Option<Value>,
    #[serde(default)]
    volume: Option<Value>,
    #[serde(default)]
    identifier: Option<String>,
    #[serde(default)]
    time_in_force: Option<String>,
    #[serde(default)]
    smp_type: Option<String>,
}

/// A decimal field given as a JSON string or number, as its text.
fn decimal_text(v: Option<Value>, field: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field} must be a decimal string"
        ))),
    }
}

/// An order as a client wrote it, in Upbit's parameter names.
pub struct OrderParams<'a> {
    pub market: &'a str,
    pub side: &'a str,
    pub ord_type: &'a str,
    pub price: String,
    pub volume: String,
    pub identifier: Option<String>,
    pub time_in_force: Option<&'a str>,
    pub smp_type: Option<&'a str>,
}

/// The gRPC request for an order.
pub fn place_request(
    user: uuid::Uuid,
    o: OrderParams<'_>,
    request_key: String,
) -> Result<pb::PlaceOrderRequest, ApiError> {
    let side = match o.side {
        "bid" => pb::Side::Bid,
        "ask" => pb::Side::Ask,
        _ => return Err(ApiError::bad_request("side must be bid or ask")),
    };
    let ord_type = match o.ord_type {
        "limit" => pb::OrderType::Limit,
        "price" => pb::OrderType::Price,
        "market" => pb::OrderType::Market,
        "best" => pb::OrderType::Best,
        _ => {
            return Err(ApiError::bad_request(
                "ord_type must be limit, price, market or best",
            ));
        }
    };
    let time_in_force = match o.time_in_force.unwrap_or_default() {
        "" => pb::TimeInForce::Unspecified,
        "ioc" => pb::TimeInForce::Ioc,
        "fok" => pb::TimeInForce::Fok,
        "post_only" => pb::TimeInForce::PostOnly,
        _ => {
            return Err(ApiError::bad_request(
                "time_in_force must be ioc, fok or post_only",
            ));
        }
    };
    Ok(pb::PlaceOrderRequest {
        user_id: user.to_string(),
        market: o.market.to_owned(),
        side: side as i32,
        ord_type: ord_type as i32,
        price: o.price,
        volume: o.volume,
        identifier: o.identifier.unwrap_or_default(),
        request_key,
        time_in_force: time_in_force as i32,
        smp_type: o.smp_type.unwrap_or_default().to_owned(),
        test: false,
        only_existing: false,
    })
}

/// Places an order. 201 with the order; 202 with it when its outcome is not
/// known yet (state `pending`: it completes or is rejected shortly, never twice);
/// 200 with it for a retry of a request that made it already.
pub async fn place_order(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    RequestKey(request_key): RequestKey,
    Body(o): Body<NewOrder>,
) -> Result<Response, ApiError> {
    private_limit(&gw, "order", &user.to_string()).await?;
    let request = place_request(
        user,
        OrderParams {
            market: &o.market,
            side: &o.side,
            ord_type: &o.ord_type,
            price: decimal_text(o.price, "price")?,
            volume: decimal_text(o.volume, "volume")?,
            identifier: o.identifier,
            time_in_force: o.time_in_force.as_deref(),
            smp_type: o.smp_type.as_deref(),
        },
        request_key,
    )?;
    let r = gw
        .order
        .clone()
        .place_order(request)
        .await
        .map_err(ApiError::placement)?
        .into_inner();
    let order = r.order.ok_or_else(|| {
        ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "no order returned")
    })?;
    let status = match (r.created, order.state == pb::OrderState::Pending as i32) {
        (false, _) => StatusCode::OK,
        (true, true) => StatusCode::ACCEPTED,
        (true, false) => StatusCode::CREATED,
    };
    Ok((status, Json(views::native_order(&order))).into_response())
}

/// Maps state names (`wait`, `done`, `cancel`, `pending`, `rejected`, `open`, `closed`).
pub fn states(names: &[&str]) -> Result<Vec<i32>, ApiError> {
    let mut out = Vec::new();
    for name in names {
        match *name {
            "wait" => out.push(pb::OrderState::Wait as i32),
            // Reserved (stop) orders: there are none here, so `watch` adds no
            // state (a request for `watch` alone finds nothing).
            "watch" => {}
            "pending" => out.push(pb::OrderState::Pending as i32),
            "done" => out.push(pb::OrderState::Done as i32),
            "cancel" => out.push(pb::OrderState::Cancel as i32),
            "rejected" => out.push(pb::OrderState::Rejected as i32),
            "open" => out.extend([pb::OrderState::Pending as i32, pb::OrderState::Wait as i32]),
            "closed" => out.extend([pb::OrderState::Done as i32, pb::OrderState::Cancel as i32]),
            other => return Err(ApiError::bad_request(format!("unknown state `{other}`"))),
        }
    }
    Ok(out)
}

pub fn page_limit(q: &HashMap<String, String>) -> Result<(u32, u32), ApiError> {
    let page = match q.get("page") {
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::bad_request("page must be 1 or more"))?,
        None => 1,
    };
    let limit = upbit::query::count(q.get("limit").map(String::as_str), 100, 100)?;
    Ok((page, limit))
}

pub async fn list_orders(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let names: Vec<&str> = q
        .get("state")
        .map(|s| s.split(',').collect())
        .unwrap_or_else(|| vec!["open"]);
    let (page, limit) = page_limit(&q)?;
    let request = pb::ListOrdersRequest {
        user_id: user.to_string(),
        market: q.get("market").cloned().unwrap_or_default(),
        states: states(&names)?,
        limit,
        page,
        ascending: q.get("order_by").is_some_and(|o| o == "asc"),
        ..Default::default()
    };
    let r = gw.order.clone().list_orders(request).await?.into_inner();
    Ok(Json(
        json!({"orders": r.orders.iter().map(views::native_order).collect::<Vec<_>>()}),
    ))
}

pub async fn get_order(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let r = gw
        .order
        .clone()
        .get_order(pb::GetOrderRequest {
            user_id: user.to_string(),
            uuid: id,
            identifier: String::new(),
        })
        .await?
        .into_inner();
    Ok(Json(
        r.order
            .as_ref()
            .map(views::native_order)
            .unwrap_or(Value::Null),
    ))
}

pub async fn cancel_order(
    State(gw): State<Shared>,
    NativeUser(user): NativeUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    private_limit(&gw, "default", &user.to_string()).await?;
    let r = gw
        .order
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            user_id: user.to_string(),
            uuid: id,
            identifier: String::new(),
        })
        .await?
        .into_inner();
    Ok(Json(
        r.order
            .as_ref()
            .map(views::native_order)
            .unwrap_or(Value::Null),
    ))
}
