//! `/websocket/v1/private`: a bot's own orders and balances, live, over a real
//! WebSocket authenticated as Upbit authenticates it.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::{TestDb, eventually};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::stack::{Options, Stack, Ws, ws_close_code, ws_next, ws_send};
use crate::trading::{PASSWORD, upbit_jwt};

async fn private_ws(stack: &Stack, key: &(String, String)) -> Result<Ws, u16> {
    let mut request = format!("ws://{}/websocket/v1/private", stack.gateways[0].http)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", upbit_jwt(&key.0, &key.1, ""))
            .parse()
            .unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The next frame as JSON that satisfies `want`, skipping others.
async fn next_where(ws: &mut Ws, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws_next(ws, left)
            .await
            .unwrap_or_else(|| panic!("no {what} within 15 s"));
        let v: Value = serde_json::from_slice(&frame).unwrap();
        if want(&v) {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_sees_its_orders_open_fill_and_its_balances_move() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let pat = stack.client("pat@example.com").await;
    eventually(Duration::from_secs(20), "a KRW-BTC orderbook", || async {
        let (s, b) = pat.get("/api/v1/orderbooks/KRW-BTC").await;
        (s == 200 && !b["asks"].as_array()?.is_empty()).then_some(())
    })
    .await
    .unwrap();
    let key_with = |permissions: Value| {
        let pat = &pat;
        async move {
            let (status, made) = pat
                .post(
                    "/api/v1/api-keys",
                    json!({"password": PASSWORD, "permissions": permissions}),
                )
                .await;
            assert_eq!(status, 201, "{made}");
            (
                made["access_key"].as_str().unwrap().to_owned(),
                made["secret_key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let key = key_with(json!(["view_orders", "view_accounts", "make_orders"])).await;

    // No token, a bad token: refused at the upgrade, in Upbit's shape.
    let plain = tokio_tungstenite::connect_async(format!(
        "ws://{}/websocket/v1/private",
        stack.gateways[0].http
    ))
    .await;
    assert!(
        matches!(plain, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{plain:?}"
    );
    let forged = (key.0.clone(), "not-the-secret".to_owned());
    assert_eq!(private_ws(&stack, &forged).await.err(), Some(401));

    let mut ws = private_ws(&stack, &key).await.unwrap();
    ws_send(
        &mut ws,
        r#"[{"ticket":"bot"},{"type":"myOrder","codes":["KRW-BTC"]},{"type":"myAsset"}]"#,
    )
    .await;
    ws_send(&mut ws, "PING").await;
    next_where(&mut ws, "PING's answer", |v| v["status"] == "UP").await;

    // A resting bid: `wait`, and the KRW it locks.
    let (status, placed) = pat
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "140000000", "volume": "0.001", "identifier": "bot-1"}),
        )
        .await;
    assert_eq!(status, 201, "{placed}");
    let uuid = placed["uuid"].as_str().unwrap().to_owned();
    let opened = next_where(&mut ws, "myOrder wait", |v| v["type"] == "myOrder").await;
    assert_eq!(
        (
            opened["uuid"].as_str(),
            opened["state"].as_str(),
            opened["ask_bid"].as_str(),
            opened["order_type"].as_str(),
            opened["code"].as_str(),
            opened["identifier"].as_str(),
            opened["stream_type"].as_str(),
        ),
        (
            Some(uuid.as_str()),
            Some("wait"),
            Some("BID"),
            Some("limit"),
            Some("KRW-BTC"),
            Some("bot-1"),
            Some("REALTIME")
        ),
        "{opened}"
    );
    assert!(
        opened["price"].is_number() && opened["trade_uuid"].is_null(),
        "{opened}"
    );
    let locked = next_where(&mut ws, "myAsset with KRW locked", |v| {
        v["type"] == "myAsset"
            && v["assets"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["currency"] == "KRW" && x["locked"] != 0))
    })
    .await;
    assert!(
        locked["asset_uuid"].is_string() && locked["timestamp"].is_i64(),
        "{locked}"
    );

    // A live trade crosses it: one `trade` (this order made it), then `done`.
    stack
        .sim_trade("KRW-BTC", "139990000", "0.5", "ASK", None)
        .await;
    let fill = next_where(&mut ws, "myOrder trade", |v| v["state"] == "trade").await;
    assert_eq!(fill["uuid"].as_str(), Some(uuid.as_str()));
    assert_eq!(fill["price"], json!(140000000));
    assert_eq!(fill["volume"], json!(0.001));
    assert_eq!(fill["is_maker"], json!(true), "{fill}");
    assert_eq!(fill["trade_fee"], json!(70), "0.05% of 140,000 KRW: {fill}");
    assert!(fill["trade_uuid"].is_string() && fill["trade_timestamp"].is_i64());
    let done = next_where(&mut ws, "myOrder done", |v| v["type"] == "myOrder").await;
    assert_eq!(
        (done["state"].as_str(), done["executed_volume"].clone()),
        (Some("done"), json!(0.001)),
        "{done}"
    );
    next_where(&mut ws, "myAsset with the BTC bought", |v| {
        v["assets"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["currency"] == "BTC" && x["balance"] == json!(0.001))
        })
    })
    .await;

    // Orders in other markets are not this subscription's; SIMPLE keys on request.
    ws_send(
        &mut ws,
        r#"[{"ticket":"bot"},{"type":"myOrder","codes":["KRW-ETH"]},{"format":"SIMPLE"}]"#,
    )
    .await;
    ws_send(&mut ws, "PING").await;
    next_where(&mut ws, "PING's answer", |v| v["status"] == "UP").await;
    let (_, btc) = pat
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "100000000", "volume": "0.001"}),
        )
        .await;
    let (_, eth) = pat
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-ETH", "side": "bid", "ord_type": "limit", "price": "1000000", "volume": "0.01"}),
        )
        .await;
    let simple = next_where(&mut ws, "a SIMPLE myOrder", |v| v["ty"] == "myOrder").await;
    assert_eq!(
        (
            simple["uid"].as_str(),
            simple["cd"].as_str(),
            simple["s"].as_str()
        ),
        (eth["uuid"].as_str(), Some("KRW-ETH"), Some("wait")),
        "only KRW-ETH, not {}: {simple}",
        btc["uuid"]
    );

    // A revoked key's socket is closed (4001) within the recheck, not left
    // streaming to whoever holds it.
    let mut watching = private_ws(&stack, &key).await.unwrap();
    ws_send(&mut watching, r#"[{"ticket":"bot"},{"type":"myAsset"}]"#).await;
    ws_send(&mut watching, "PING").await;
    next_where(&mut watching, "PING's answer", |v| v["status"] == "UP").await;
    let (status, _) = pat.delete(&format!("/api/v1/api-keys/{}", key.0)).await;
    assert_eq!(status, 200);
    assert_eq!(
        ws_close_code(&mut watching, Duration::from_secs(10)).await,
        Some(4001)
    );
    // Counted by why it closed (the first socket on this key closes too).
    eventually(Duration::from_secs(5), "closes counted", || async {
        let closed = test_support::read_metric(
            stack.gateways[0].admin,
            "gateway_ws_closed_total",
            &["reason=\"credentials\""],
        )
        .await;
        (closed >= 1.0).then_some(())
    })
    .await
    .unwrap();

    // A key that may only trade cannot watch.
    let blind = key_with(json!(["make_orders"])).await;
    let mut ws = private_ws(&stack, &blind).await.unwrap();
    ws_send(&mut ws, r#"[{"ticket":"t"},{"type":"myOrder"}]"#).await;
    let refused = next_where(&mut ws, "an error", |v| v.get("error").is_some()).await;
    assert_eq!(refused["error"]["name"], "out_of_scope", "{refused}");
    // Public types belong to the public socket.
    ws_send(
        &mut ws,
        r#"[{"ticket":"t"},{"type":"ticker","codes":["KRW-BTC"]}]"#,
    )
    .await;
    let refused = next_where(&mut ws, "an error", |v| v.get("error").is_some()).await;
    assert_eq!(refused["error"]["name"], "INVALID_PARAM", "{refused}");
    stack.stop().await;
}

/// `/api/v1/websocket` for a page holding an access token, offered as a
/// subprotocol (a browser cannot set `Authorization` on a WebSocket).
async fn page_ws(stack: &Stack, protocols: &str) -> Result<Ws, u16> {
    let mut request = format!("ws://{}/api/v1/websocket", stack.gateways[0].http)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, resp)) => {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("exchange.v1"),
                "the page's protocol is selected, never the token"
            );
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_page_sees_its_own_orders_over_its_token() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let (pat, sam) = (
        stack.client("pat@example.com").await,
        stack.client("sam@example.com").await,
    );
    eventually(Duration::from_secs(20), "a KRW-BTC orderbook", || async {
        let (s, b) = pat.get("/api/v1/orderbooks/KRW-BTC").await;
        (s == 200 && !b["asks"].as_array()?.is_empty()).then_some(())
    })
    .await
    .unwrap();

    assert_eq!(page_ws(&stack, "exchange.v1").await.err(), Some(401));
    assert_eq!(
        page_ws(&stack, "exchange.v1, access_token.not-a-token")
            .await
            .err(),
        Some(401)
    );
    let mut ws = page_ws(&stack, &format!("exchange.v1, access_token.{}", pat.token))
        .await
        .unwrap();
    ws_send(
        &mut ws,
        r#"[{"ticket":"page"},{"type":"myOrder"},{"type":"myAsset"}]"#,
    )
    .await;
    ws_send(&mut ws, "PING").await;
    next_where(&mut ws, "PING's answer", |v| v["status"] == "UP").await;

    // Someone else's order is not pat's to see; pat's own is, with its balance.
    let (status, theirs) = sam
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "100000000", "volume": "0.001"}),
        )
        .await;
    assert_eq!(status, 201, "{theirs}");
    let (status, mine) = pat
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "100000000", "volume": "0.002"}),
        )
        .await;
    assert_eq!(status, 201, "{mine}");
    let opened = next_where(&mut ws, "myOrder", |v| v["type"] == "myOrder").await;
    assert_eq!(opened["uuid"], mine["uuid"], "only pat's: {opened}");
    // 200,000 KRW and its 0.05 % fee.
    next_where(&mut ws, "myAsset with KRW locked", |v| {
        v["assets"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["currency"] == "KRW" && x["locked"] == json!(200100))
        })
    })
    .await;
    // Still open after several rechecks while the session lasts...
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws_send(&mut ws, "PING").await;
    next_where(&mut ws, "PING's answer", |v| v["status"] == "UP").await;
    // ...and closed once pat signs out.
    let (status, _) = pat.post("/api/v1/auth/logout", json!({})).await;
    assert!(status < 300, "{status}");
    assert_eq!(
        ws_close_code(&mut ws, Duration::from_secs(10)).await,
        Some(4001)
    );
    stack.stop().await;
}
