//! `/websocket/v1/private`: Upbit's private WebSocket. The connection is
//! authenticated like a private REST request (a signed JWT in
//! `Authorization`, no parameters); it then streams `myOrder` (the key needs
//! `view_orders`) and `myAsset` (`view_accounts`). `/api/v1/websocket` is the
//! same stream for the web page, authenticated by an access token.
//!
//! `myOrder` is fed by the order service's update stream: each update of an
//! order becomes Upbit's events — `wait` when it opens, `trade` for each new
//! fill (with that fill's price, volume, fee and maker flag), then `done` or
//! `cancel`. `myAsset` sends the balances that changed: read from inventory
//! after each order event, and every [`ASSET_POLL`] for changes that come
//! from elsewhere (deposits).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use exchange_proto::inventory::v1 as inv;
use exchange_proto::order::v1 as pb;
use exchange_proto::user::v1::Permission;
use futures_util::{SinkExt, StreamExt};
use rust_decimal::Decimal;
use service_kit::ws::{Incoming, spawn_reader};
use tracing::Instrument;
use upbit::error::ErrorBody;
use upbit::private::{MyAsset, MyOrder, PrivateFrame, PrivateRequest, parse_private_request};
use upbit::request::{RequestWindow, too_many_requests};
use upbit::write::{self, Format, STATUS_UP};
use uuid::Uuid;

use crate::auth::{NativeUser, UpbitRequest};
use crate::error::ApiError;
use crate::state::{ClientIp, Shared};
use crate::views;
use crate::ws::{admit, binary, error_frame};

/// How often balances are read for changes no order event announced.
pub const ASSET_POLL: Duration = Duration::from_secs(2);

/// Orders remembered per connection (their fills seen so far); the oldest
/// finished ones are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// What a private connection was opened with, checked again every
/// `WS_RECHECK` while it is open.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An Upbit API key (its access key).
    Key(String),
    /// A page's access token.
    Token(String),
}

impl Credential {
    /// Whether it still lets `user` in: false once the key is revoked or
    /// expired, or the session ended or its token expired. True when the user
    /// service cannot say (away): the connection stays, degraded, rather than
    /// every private stream dropping with it.
    async fn holds(&self, gw: &Shared, user: Uuid) -> bool {
        match self {
            Credential::Token(token) => match NativeUser::verify(gw, token).await {
                Ok(NativeUser(verified)) => verified == user,
                Err(e) => e.status != StatusCode::UNAUTHORIZED,
            },
            Credential::Key(access_key) => {
                let listed = gw
                    .user
                    .clone()
                    .list_api_keys(exchange_proto::user::v1::ListApiKeysRequest {
                        user_id: user.to_string(),
                    })
                    .await;
                let Ok(listed) = listed else { return true };
                let now = chrono::Utc::now().timestamp_millis();
                listed.into_inner().api_keys.iter().any(|k| {
                    k.access_key == *access_key
                        && !k.revoked
                        && (k.expire_at == 0 || k.expire_at > now)
                })
            }
        }
    }
}

/// `/websocket/v1/private`: upgrades an Upbit-signed request within the
/// connection limits.
pub async fn upgrade_key(
    ws: WebSocketUpgrade,
    State(gw): State<Shared>,
    ip: ClientIp,
    headers: HeaderMap,
    req: UpbitRequest,
) -> Result<Response, ApiError> {
    let key = crate::auth::access_key(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "jwt_verification",
            "no access_key",
        )
    })?;
    Ok(upgrade(ws, gw, ip, req, Credential::Key(key)))
}

/// Upgrades an authenticated request within the connection limits.
fn upgrade(
    ws: WebSocketUpgrade,
    gw: Shared,
    ip: ClientIp,
    req: UpbitRequest,
    credential: Credential,
) -> Response {
    let slot = match admit(&gw, ip) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let (session, scope) = crate::ws::session("ws.private_session");
    crate::ws::bounded(ws, &gw.limits).on_upgrade(move |socket| {
        scope
            .run(async move {
                crate::ws::counted(serve(socket, &gw, req, credential)).await;
                drop(slot);
            })
            .instrument(session)
    })
}

/// The subprotocol a page selects; the access token rides beside it as
/// `access_token.<token>`, since a browser cannot set `Authorization` on a
/// WebSocket.
pub const PAGE_PROTOCOL: &str = "exchange.v1";
const TOKEN_PROTOCOL: &str = "access_token.";

/// `/api/v1/websocket`: the same private stream for a signed-in page, which
/// holds an access token instead of an API key (and may see its own orders
/// and balances).
pub async fn upgrade_page(
    ws: WebSocketUpgrade,
    State(gw): State<Shared>,
    ip: ClientIp,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "no_authorization_token",
                format!(
                    "offer the subprotocols {PAGE_PROTOCOL} and {TOKEN_PROTOCOL}<access token>"
                ),
            )
        })?;
    let NativeUser(user) = NativeUser::verify(&gw, token).await?;
    let req = UpbitRequest {
        user,
        params: Vec::new(),
        permissions: vec![Permission::ViewOrders, Permission::ViewAccounts],
    };
    let credential = Credential::Token(token.to_owned());
    Ok(upgrade(
        ws.protocols([PAGE_PROTOCOL]),
        gw,
        ip,
        req,
        credential,
    ))
}

fn out_of_scope(what: &str) -> ErrorBody {
    ErrorBody {
        name: "out_of_scope".into(),
        message: format!("this API key may not {what}"),
    }
}

/// A decimal from the order or inventory service: empty means 0 (a market
/// order's remaining volume); a malformed one makes its message unusable
/// (skipped and counted, [`crate::convert::skipped`]), never a 0.
fn decimal(text: &str) -> Option<Decimal> {
    if text.is_empty() {
        Some(Decimal::ZERO)
    } else {
        exchange_proto::decimal::parse(text).ok()
    }
}

/// An optional decimal: `Some(None)` when empty, `None` when malformed.
fn optional(text: &str) -> Option<Option<Decimal>> {
    if text.is_empty() {
        Some(None)
    } else {
        exchange_proto::decimal::parse(text).ok().map(Some)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What a connection has told its client about one order.
#[derive(Clone, Copy, Default)]
struct Told {
    fills: u32,
    opened: bool,
    finished: bool,
}

/// Upbit's events for an update of `o`, given what was told before; `None`
/// (and nothing told) when a decimal in it is malformed.
fn order_events(o: &pb::Order, told: &mut Told) -> Option<Vec<MyOrder>> {
    let state = views::state(o.state);
    let executed = decimal(&o.executed_volume)?;
    let funds = decimal(&o.executed_funds)?;
    let base = MyOrder {
        code: o.market.clone(),
        uuid: o.uuid.clone(),
        ask_bid: if views::side(o.side) == "ask" {
            "ASK"
        } else {
            "BID"
        },
        order_type: views::ord_type(o.ord_type).to_owned(),
        state: "wait",
        trade_uuid: None,
        price: optional(&o.price)?,
        avg_price: if executed.is_zero() {
            Decimal::ZERO
        } else {
            (funds / executed).round_dp(8).normalize()
        },
        volume: optional(&o.volume)?,
        remaining_volume: decimal(&o.remaining_volume)?,
        executed_volume: executed,
        trades_count: i64::from(o.trades_count),
        reserved_fee: decimal(&o.reserved_fee)?,
        remaining_fee: decimal(&o.remaining_fee)?,
        paid_fee: decimal(&o.paid_fee)?,
        locked: decimal(&o.locked)?,
        executed_funds: funds,
        time_in_force: views::time_in_force(o.time_in_force).map(str::to_owned),
        trade_fee: None,
        is_maker: None,
        identifier: (!o.identifier.is_empty()).then(|| o.identifier.clone()),
        smp_type: Some(views::smp_type(o).to_owned()),
        prevented_volume: Decimal::ZERO,
        prevented_locked: Decimal::ZERO,
        trade_timestamp: None,
        order_timestamp: o.created_at,
        timestamp: now_ms(),
    };
    let before = told.fills;
    let fills = o
        .trades
        .iter()
        .filter(|t| t.seq > before)
        .map(|t| {
            Some(MyOrder {
                state: "trade",
                trade_uuid: Some(crate::views::trade_uuid(&o.uuid, t.seq)),
                price: Some(decimal(&t.price)?),
                volume: Some(decimal(&t.volume)?),
                trade_fee: Some(decimal(&t.fee)?),
                // The fill's taker was the other side: this order made it.
                is_maker: Some(t.trend != o.side),
                trade_timestamp: Some(t.created_at),
                ..base.clone()
            })
        })
        .collect::<Option<Vec<_>>>()?;
    // Everything read: from here on, what is told is remembered.
    let mut events = Vec::new();
    if !told.opened && state != "pending" {
        told.opened = true;
        events.push(base.clone());
    }
    told.fills = o.trades.iter().map(|t| t.seq).fold(before, u32::max);
    events.extend(fills);
    let last = match state {
        "done" => Some("done"),
        "cancel" | "rejected" => Some("cancel"),
        _ => None,
    };
    if let Some(last) = last
        && !told.finished
    {
        told.finished = true;
        events.push(MyOrder {
            state: last,
            ..base
        });
    }
    Some(events)
}

/// Balances by currency: `(balance, locked)`.
type Assets = HashMap<String, (Decimal, Decimal)>;

async fn balances(gw: &Shared, user: Uuid) -> Option<Assets> {
    let r = gw
        .inventory
        .clone()
        .get_balances(inv::GetBalancesRequest {
            user_id: user.to_string(),
        })
        .await
        .ok()?
        .into_inner();
    let assets = r
        .balances
        .into_iter()
        .map(|b| Some((b.currency, (decimal(&b.balance)?, decimal(&b.locked)?))))
        .collect();
    crate::convert::skipped(assets, "balances", "")
}

/// The `myAsset` event for what changed from `known` to `now` (and remembers
/// `now`), if anything did.
fn asset_event(known: &mut Assets, now: Assets) -> Option<MyAsset> {
    let mut changed: Vec<(String, Decimal, Decimal)> = now
        .iter()
        .filter(|(c, v)| known.get(*c) != Some(v))
        .map(|(c, (b, l))| (c.clone(), *b, *l))
        .collect();
    changed.extend(
        known
            .keys()
            .filter(|c| !now.contains_key(*c))
            .map(|c| (c.clone(), Decimal::ZERO, Decimal::ZERO)),
    );
    *known = now;
    if changed.is_empty() {
        return None;
    }
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    let at = now_ms();
    Some(MyAsset {
        asset_uuid: Uuid::new_v4().to_string(),
        assets: changed,
        asset_timestamp: at,
        timestamp: at,
    })
}

async fn order_updates(
    gw: &Shared,
    user: Uuid,
) -> Option<tonic::Streaming<pb::StreamOrderUpdatesResponse>> {
    match gw
        .order
        .clone()
        .stream_order_updates(pb::StreamOrderUpdatesRequest {
            user_id: user.to_string(),
        })
        .await
    {
        Ok(s) => Some(s.into_inner()),
        Err(e) => {
            tracing::debug!(error = %e, "order updates unavailable; retrying in a second");
            None
        }
    }
}

async fn next_update(
    stream: &mut Option<tonic::Streaming<pb::StreamOrderUpdatesResponse>>,
) -> Option<Result<Option<pb::StreamOrderUpdatesResponse>, tonic::Status>> {
    match stream {
        Some(s) => Some(s.message().await),
        None => std::future::pending().await,
    }
}

/// Serves one private connection; why it ended.
async fn serve(
    socket: WebSocket,
    gw: &Shared,
    req: UpbitRequest,
    credential: Credential,
) -> &'static str {
    let user = req.user;
    // At least a second apart (an interval of zero would not be one).
    let mut recheck = tokio::time::interval(gw.ws_recheck.max(Duration::from_secs(1)));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.reset();
    let (mut sink, stream) = socket.split();
    let mut incoming = spawn_reader(stream);
    let mut window = RequestWindow::default();
    let mut format = Format::Default;
    let mut subscribed: Option<PrivateRequest> = None;
    let mut orders: Option<tonic::Streaming<pb::StreamOrderUpdatesResponse>> = None;
    let mut told: HashMap<String, Told> = HashMap::new();
    let mut assets: Option<Assets> = None;
    let mut poll = tokio::time::interval(ASSET_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut reconnect = false;
    let idle = tokio::time::sleep(gw.limits.ws_idle);
    tokio::pin!(idle);
    loop {
        let mut out: Vec<Message> = Vec::new();
        tokio::select! {
            received = incoming.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + gw.limits.ws_idle);
                let text = match received {
                    None => break "client",
                    Some(Incoming::Heard) => continue,
                    Some(Incoming::Text(t)) => t,
                };
                match parse_private_request(&text) {
                    Err(e) => out.push(error_frame(&e)),
                    Ok(PrivateFrame::Ping) => out.push(binary(STATUS_UP.to_owned())),
                    Ok(PrivateFrame::Subscribe(_)) if !window.allow() => {
                        out.push(error_frame(&too_many_requests()));
                    }
                    Ok(PrivateFrame::Subscribe(request)) => {
                        if request.my_order.is_some() && req.require(Permission::ViewOrders).is_err() {
                            out.push(error_frame(&out_of_scope("view orders (myOrder)")));
                        } else if request.my_asset && req.require(Permission::ViewAccounts).is_err() {
                            out.push(error_frame(&out_of_scope("view accounts (myAsset)")));
                        } else {
                            if let Some(f) = request.format {
                                format = f;
                            }
                            if request.my_order.is_some() && orders.is_none() {
                                // Streaming before the next frame is read: an order
                                // placed after a PING's answer is never missed.
                                orders = order_updates(gw, user).await;
                                reconnect = orders.is_none();
                                retry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                            }
                            if request.my_order.is_none() {
                                orders = None;
                                reconnect = false;
                            }
                            assets = if request.my_asset { balances(gw, user).await.or(Some(Assets::new())) } else { None };
                            subscribed = Some(request);
                        }
                    }
                }
            }
            () = &mut retry, if reconnect => {
                orders = order_updates(gw, user).await;
                reconnect = orders.is_none();
                retry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            update = next_update(&mut orders) => {
                match update {
                    Some(Ok(Some(u))) => {
                        let Some(o) = u.order else { continue };
                        let codes = subscribed.as_ref().and_then(|s| s.my_order.as_ref());
                        if codes.is_some_and(|c| c.is_empty() || c.contains(&o.market)) {
                            if told.len() >= MAX_TRACKED {
                                told.retain(|_, t| !t.finished);
                                if told.len() >= MAX_TRACKED { told.clear(); }
                            }
                            let seen = told.entry(o.uuid.clone()).or_default();
                            let events = crate::convert::skipped(order_events(&o, seen), "order", &o.market);
                            for e in events.into_iter().flatten() {
                                out.push(binary(write::my_order(&e, format)));
                            }
                        }
                        if assets.is_some()
                            && let (Some(now), Some(known)) = (balances(gw, user).await, assets.as_mut())
                            && let Some(e) = asset_event(known, now)
                        {
                            out.push(binary(write::my_asset(&e, format)));
                        }
                    }
                    _ => {
                        // The order service went away (or restarted): stream again.
                        orders = None;
                        reconnect = true;
                        retry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            _ = poll.tick(), if assets.is_some() => {
                if let (Some(now), Some(known)) = (balances(gw, user).await, assets.as_mut())
                    && let Some(e) = asset_event(known, now)
                {
                    out.push(binary(write::my_asset(&e, format)));
                }
            }
            _ = &mut idle => {
                crate::ws::close(&mut sink, gw, 1000, "idle timeout").await;
                break "idle";
            }
            _ = recheck.tick() => {
                if !credential.holds(gw, user).await {
                    crate::ws::close(&mut sink, gw, 4001, "the credentials no longer verify").await;
                    break "credentials";
                }
            }
            _ = gw.draining.cancelled() => {
                crate::ws::close(&mut sink, gw, 1001, "server shutting down").await;
                break "shutdown";
            }
        }
        if out.is_empty() {
            continue;
        }
        // A client that reads nothing for the stall timeout is let go.
        let written = tokio::time::timeout(gw.ws_stall, async {
            for m in out {
                sink.feed(m).await?;
            }
            sink.flush().await
        });
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break "client",
            Err(_stalled) => break "slow",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0192d4c8-8f5e-7c3a-9b1d-2e4f6a8b0c1d";

    fn order(state: pb::OrderState, fills: u32) -> pb::Order {
        pb::Order {
            uuid: ORDER.into(),
            market: "KRW-ETH".into(),
            side: pb::Side::Bid as i32,
            ord_type: pb::OrderType::Limit as i32,
            price: "4000000".into(),
            volume: "0.01".into(),
            executed_volume: "0.01".into(),
            executed_funds: "40000".into(),
            state: state as i32,
            trades: (1..=fills)
                .map(|seq| pb::Execution {
                    seq,
                    price: "4000000".into(),
                    volume: "0.005".into(),
                    fee: "10".into(),
                    trend: pb::Side::Ask as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_order_opens_fills_and_finishes_once_each() {
        let mut told = Told::default();
        let states = |events: Vec<MyOrder>| events.iter().map(|e| e.state).collect::<Vec<_>>();
        assert!(
            order_events(&order(pb::OrderState::Pending, 0), &mut told)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            states(order_events(&order(pb::OrderState::Wait, 1), &mut told).unwrap()),
            ["wait", "trade"]
        );
        let events = order_events(&order(pb::OrderState::Done, 2), &mut told).unwrap();
        assert_eq!(states(events.clone()), ["trade", "done"]);
        let trade = events[0].trade_uuid.clone().unwrap();
        assert!(
            uuid::Uuid::parse_str(&trade).is_ok(),
            "a UUID, as Upbit's: {trade}"
        );
        assert_eq!(
            trade,
            crate::views::trade_uuid(ORDER, 2),
            "the same on every read"
        );
        assert_ne!(trade, crate::views::trade_uuid(ORDER, 1));
        assert_eq!(events[0].volume, Some(Decimal::new(5, 3)));
        assert_eq!(events[0].is_maker, Some(true), "a seller took: we made");
        assert_eq!(events[1].avg_price, Decimal::new(4_000_000, 0));
        assert!(
            order_events(&order(pb::OrderState::Done, 2), &mut told)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_decimal_skips_the_update_and_tells_nothing() {
        let mut told = Told::default();
        let mut bad = order(pb::OrderState::Wait, 1);
        bad.trades[0].fee = "1e3".into();
        assert!(order_events(&bad, &mut told).is_none());
        let mut bad = order(pb::OrderState::Wait, 1);
        bad.locked = "NaN".into();
        assert!(order_events(&bad, &mut told).is_none());
        // Nothing was remembered: the next good update tells it all.
        let events = order_events(&order(pb::OrderState::Wait, 1), &mut told).unwrap();
        assert_eq!(
            events.iter().map(|e| e.state).collect::<Vec<_>>(),
            ["wait", "trade"]
        );
    }

    #[test]
    fn assets_report_what_changed() {
        let mut known: Assets = [("KRW".to_owned(), (Decimal::ONE, Decimal::ZERO))].into();
        let same = known.clone();
        assert!(asset_event(&mut known, same).is_none());
        let now: Assets = [
            ("KRW".to_owned(), (Decimal::ONE, Decimal::ZERO)),
            ("ETH".to_owned(), (Decimal::TWO, Decimal::ZERO)),
        ]
        .into();
        let e = asset_event(&mut known, now).unwrap();
        assert_eq!(e.assets, [("ETH".to_owned(), Decimal::TWO, Decimal::ZERO)]);
    }
}
