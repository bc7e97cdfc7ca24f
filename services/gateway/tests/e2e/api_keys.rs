//! Upbit API keys: what a key may do, what its signature covers, and public
//! Upbit client libraries (ccxt, pyupbit) trading through the gateway as
//! published.

use serde_json::{Value, json};
use test_support::TestDb;

use crate::market::wait_rest_price;
use crate::stack::{Options, Stack};
use crate::trading::{PASSWORD, upbit_jwt};

/// `(status, body)` of an Upbit-signed request: `query` is sent as written
/// and hashed decoded, as Upbit's examples hash `unquote(urlencode(params))`.
pub(crate) async fn signed(
    stack: &Stack,
    key: &(String, String),
    method: reqwest::Method,
    path: &str,
    query: &str,
) -> (u16, Value) {
    signed_with(stack, key, method, path, query, &[]).await
}

/// [`signed`] with more headers.
pub(crate) async fn signed_with(
    stack: &Stack,
    key: &(String, String),
    method: reqwest::Method,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let decoded = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let token = upbit_jwt(&key.0, &key.1, &decoded);
    let url = if query.is_empty() {
        format!("{}{path}", stack.gw())
    } else {
        format!("{}{path}?{query}", stack.gw())
    };
    let mut request = stack.http.request(method, url).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A stack where KRW-ETH has traded at 4,000,000 (market orders have a price).
pub(crate) async fn stack_trading_eth(db: &TestDb) -> Stack {
    let stack = Stack::start(db, Options::default()).await;
    stack
        .sim_trade("KRW-ETH", "4000000", "0.01", "BID", None)
        .await;
    wait_rest_price(&stack, "KRW-ETH", "4000000").await;
    stack
}

pub(crate) fn key_of(made: &Value) -> (String, String) {
    (
        made["access_key"].as_str().unwrap().to_owned(),
        made["secret_key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_does_only_what_its_permissions_allow() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let grace = stack.client("grace@example.com").await;
    let (status, made) = grace
        .post(
            "/api/v1/api-keys",
            json!({"label": "watcher", "permissions": ["view_accounts", "view_orders"], "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["permissions"], json!(["view_accounts", "view_orders"]));
    let year = 365 * 86_400_000_i64;
    let expires = made["expire_at"].as_i64().unwrap() - chrono::Utc::now().timestamp_millis();
    assert!((expires - year).abs() < 60_000, "{made}");
    let watcher = key_of(&made);

    let (status, body) = signed(&stack, &watcher, reqwest::Method::GET, "/v1/accounts", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = signed(
        &stack,
        &watcher,
        reqwest::Method::GET,
        "/v1/orders/open",
        "market=KRW-ETH",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (method, path, query) in [
        (
            reqwest::Method::POST,
            "/v1/orders",
            "market=KRW-ETH&side=bid&volume=0.01&price=4000000&ord_type=limit",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/order",
            "uuid=00000000-0000-0000-0000-000000000000",
        ),
    ] {
        let (status, body) = signed(&stack, &watcher, method.clone(), path, query).await;
        assert_eq!(
            (status, body["error"]["name"].as_str()),
            (401, Some("out_of_scope")),
            "{method} {path}: {body}"
        );
    }
    // A trading-only key cannot read balances.
    let (_, made) = grace
        .post(
            "/api/v1/api-keys",
            json!({"permissions": ["make_orders"], "password": PASSWORD}),
        )
        .await;
    let trader = key_of(&made);
    let (status, body) = signed(&stack, &trader, reqwest::Method::GET, "/v1/accounts", "").await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (401, Some("out_of_scope"))
    );
    for bad in [json!([]), json!(["withdraw"]), json!("view_orders")] {
        let (status, body) = grace
            .post(
                "/api/v1/api-keys",
                json!({"permissions": bad, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Listed keys show what they may do and until when.
    let (_, listed) = grace.get("/api/v1/api-keys").await;
    let listed = listed["api_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k["expire_at"].as_i64().unwrap() > 0 && k["permissions"].is_array())
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_take_the_password_and_signing_out_ends_the_session_at_once() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let kate = stack.client("kate@example.com").await;
    let (status, _) = kate.get("/api/v1/accounts").await;
    assert_eq!(status, 200, "the token is verified (and remembered)");
    let (status, body) = kate.post("/api/v1/api-keys", json!({"label": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("password"), "{body}");
    let (status, body) = kate
        .post(
            "/api/v1/api-keys",
            json!({"label": "x", "password": "a stolen token only"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (401, Some("invalid_credentials")),
        "{body}"
    );
    let (status, made) = kate
        .post("/api/v1/api-keys", json!({"password": PASSWORD}))
        .await;
    assert_eq!(status, 201, "{made}");

    let (status, body) = kate.post("/api/v1/auth/logout", json!({})).await;
    assert_eq!(
        (status, &body["sessions_ended"]),
        (200, &json!(1)),
        "{body}"
    );
    let (status, body) = kate.get("/api/v1/accounts").await;
    assert_eq!(
        status, 401,
        "signed out: refused at once, not when the gateway's cache expires: {body}"
    );
    // The API key is not a session: it goes on until revoked or expired.
    let key = key_of(&made);
    let (status, _) = signed(&stack, &key, reqwest::Method::GET, "/v1/accounts", "").await;
    assert_eq!(status, 200);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_covers_one_reading_of_the_request() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let heidi = stack.client("heidi@example.com").await;
    let (_, made) = heidi
        .post("/api/v1/api-keys", json!({"password": PASSWORD}))
        .await;
    let key = key_of(&made);
    // `market` = "KRW-ETH&x=1" would hash as two parameters: refused before
    // any signature is looked at.
    let token = upbit_jwt(&key.0, &key.1, "market=KRW-ETH&x=1");
    let resp = stack
        .http
        .get(format!(
            "{}/v1/orders/chance?market=KRW-ETH%26x%3D1",
            stack.gw()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["name"], "validation_error", "{body}");
    // The same token on the request it was made for works.
    let (status, body) = signed(
        &stack,
        &key,
        reqwest::Method::GET,
        "/v1/orders/chance",
        "market=KRW-ETH",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A token signed over parameters is no good for a request without any.
    let token = upbit_jwt(&key.0, &key.1, "market=KRW-ETH");
    let resp = stack
        .http
        .get(format!("{}/v1/accounts", stack.gw()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["name"], "invalid_query_payload", "{body}");
    stack.stop().await;
}

/// The Python that has ccxt and pyupbit (`scripts/test` makes it).
fn client_python() -> Option<String> {
    std::env::var("UPBIT_CLIENTS_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_upbit_client_libraries_trade_through_the_gateway() {
    let Some(python) = client_python() else {
        assert!(
            std::env::var("CI").is_err(),
            "UPBIT_CLIENTS_PYTHON must name a Python with ccxt and pyupbit in CI"
        );
        eprintln!("skipped: UPBIT_CLIENTS_PYTHON is not set (scripts/test sets it)");
        return;
    };
    let db = TestDb::create().await.unwrap();
    let stack = stack_trading_eth(&db).await;
    let ivan = stack.client("ivan@example.com").await;
    let (_, made) = ivan
        .post(
            "/api/v1/api-keys",
            json!({"label": "bots", "password": PASSWORD}),
        )
        .await;
    let key = key_of(&made);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/upbit-clients/check.py"
    );
    let mut checker = tokio::process::Command::new(&python);
    checker
        .arg(script)
        .env("BASE_URL", stack.gw())
        .env("ACCESS_KEY", &key.0)
        .env("SECRET_KEY", &key.1);
    crate::stack::run_checker(checker, "all client checks passed").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_listed_cancelled_replaced_and_tested_in_batches_as_upbit_does() {
    let db = TestDb::create().await.unwrap();
    let stack = stack_trading_eth(&db).await;
    let judy = stack.client("judy@example.com").await;
    let (_, made) = judy
        .post("/api/v1/api-keys", json!({"password": PASSWORD}))
        .await;
    let key = key_of(&made);
    let call = |method: reqwest::Method, path: &'static str, query: String| {
        let (stack, key) = (&stack, &key);
        async move { signed(stack, key, method, path, &query).await }
    };
    // Three resting bids well under the market.
    let mut uuids = Vec::new();
    for (i, price) in ["3000000", "3001000", "3002000"].iter().enumerate() {
        let (status, o) = call(
            reqwest::Method::POST,
            "/v1/orders",
            format!(
                "market=KRW-ETH&side=bid&ord_type=limit&price={price}&volume=0.01&identifier=b{i}"
            ),
        )
        .await;
        assert_eq!((status, o["state"].as_str()), (201, Some("wait")), "{o}");
        uuids.push(o["uuid"].as_str().unwrap().to_owned());
    }
    let (status, listed) = call(
        reqwest::Method::GET,
        "/v1/orders/uuids",
        format!("uuids[]={}&uuids[]={}", uuids[0], uuids[1]),
    )
    .await;
    assert_eq!(
        (status, listed.as_array().map(Vec::len)),
        (200, Some(2)),
        "{listed}"
    );
    let (_, by_identifier) = call(
        reqwest::Method::GET,
        "/v1/orders/uuids",
        "identifiers[]=b2".into(),
    )
    .await;
    assert_eq!(
        by_identifier[0]["uuid"],
        uuids[2].as_str(),
        "{by_identifier}"
    );

    // Cancel by uuid: one of ours and one that is nobody's.
    let nobody = uuid::Uuid::new_v4();
    let (status, cancelled) = call(
        reqwest::Method::DELETE,
        "/v1/orders/uuids",
        format!("uuids[]={}&uuids[]={nobody}", uuids[0]),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (
            cancelled["success"]["count"].as_u64(),
            cancelled["failed"]["count"].as_u64()
        ),
        (Some(1), Some(1)),
        "{cancelled}"
    );
    assert_eq!(cancelled["success"]["orders"][0]["uuid"], uuids[0].as_str());
    assert_eq!(cancelled["success"]["orders"][0]["market"], "KRW-ETH");
    assert_eq!(cancelled["failed"]["orders"][0]["uuid"], nobody.to_string());

    // A replacement that would be refused is refused before the cancel: b1 stays.
    let (status, refused) = call(
        reqwest::Method::POST,
        "/v1/orders/cancel_and_new",
        format!(
            "prev_order_uuid={}&new_ord_type=limit&new_price=3100500&new_volume=remain_only",
            uuids[1]
        ),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["name"].as_str()),
        (400, Some("invalid_price_bid")),
        "{refused}"
    );
    let (_, kept) = call(
        reqwest::Method::GET,
        "/v1/order",
        format!("uuid={}", uuids[1]),
    )
    .await;
    assert_eq!(kept["state"], "wait", "{kept}");

    // Cancel and replace what is left of b1 at a new price.
    let replace = format!(
        "prev_order_uuid={}&new_ord_type=limit&new_price=3100000&new_volume=remain_only&new_identifier=b1-new",
        uuids[1]
    );
    let keyed = |idempotency: &'static str| {
        let (stack, key, replace) = (&stack, &key, replace.clone());
        async move {
            signed_with(
                stack,
                key,
                reqwest::Method::POST,
                "/v1/orders/cancel_and_new",
                &replace,
                &[("idempotency-key", idempotency)],
            )
            .await
        }
    };
    let (status, replaced) = keyed("replace-b1").await;
    assert_eq!(status, 201, "{replaced}");
    // Its retry (the answer was lost) gets the same answer, placing nothing;
    // the same request under another key is refused: b1 is cancelled.
    let (status, again) = keyed("replace-b1").await;
    assert_eq!(
        (status, &again["new_order_uuid"]),
        (201, &replaced["new_order_uuid"]),
        "{again}"
    );
    let (status, refused) = keyed("replace-b1-other").await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        (replaced["uuid"].as_str(), replaced["state"].as_str()),
        (Some(uuids[1].as_str()), Some("cancel")),
        "{replaced}"
    );
    assert_eq!(replaced["new_order_identifier"], "b1-new");
    let (_, new) = call(
        reqwest::Method::GET,
        "/v1/order",
        "identifier=b1-new".into(),
    )
    .await;
    assert_eq!(
        (
            new["uuid"].as_str(),
            new["state"].as_str(),
            new["volume"].as_str(),
            new["price"].as_str()
        ),
        (
            replaced["new_order_uuid"].as_str(),
            Some("wait"),
            Some("0.01"),
            Some("3100000")
        ),
        "{new}"
    );

    // A test order is planned, answered, and never placed.
    let (_, before) = call(reqwest::Method::GET, "/v1/accounts", String::new()).await;
    let (status, tested) = call(
        reqwest::Method::POST,
        "/v1/orders/test",
        "market=KRW-ETH&side=bid&ord_type=limit&price=3000000&volume=0.01".into(),
    )
    .await;
    assert_eq!(
        (status, tested["state"].as_str()),
        (201, Some("wait")),
        "{tested}"
    );
    let (status, _) = call(
        reqwest::Method::GET,
        "/v1/order",
        format!("uuid={}", tested["uuid"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 404, "a test order does not exist");
    let (_, after) = call(reqwest::Method::GET, "/v1/accounts", String::new()).await;
    assert_eq!(before, after, "nothing reserved");
    let (status, refused) = call(
        reqwest::Method::POST,
        "/v1/orders/test",
        "market=KRW-ETH&side=bid&ord_type=limit&price=3000500&volume=0.01".into(),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["name"].as_str()),
        (400, Some("invalid_price_bid"))
    );

    // Cancel every open bid on KRW-ETH: b2 and b1-new. At most once per 2 s.
    let (status, all) = call(
        reqwest::Method::DELETE,
        "/v1/orders/open",
        "cancel_side=bid&pairs=KRW-ETH".into(),
    )
    .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["success"]["count"], 2, "{all}");
    let again = stack
        .http
        .delete(format!("{}/v1/orders/open", stack.gw()))
        .bearer_auth(upbit_jwt(&key.0, &key.1, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);
    let header = again.headers()["remaining-req"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(header.starts_with("group=order-cancel-all;"), "{header}");
    let (_, open) = call(
        reqwest::Method::GET,
        "/v1/orders/open",
        "market=KRW-ETH".into(),
    )
    .await;
    assert_eq!(open, json!([]));

    // Closed orders: Upbit's limit of 1,000 and a window of at most 7 days.
    let (status, closed) = call(
        reqwest::Method::GET,
        "/v1/orders/closed",
        "limit=1000".into(),
    )
    .await;
    assert_eq!(
        (status, closed.as_array().map(Vec::len)),
        (200, Some(4)),
        "{closed}"
    );
    for query in [
        "limit=1001",
        "start_time=2026-01-10T00:00:00%2B09:00&end_time=2026-01-01T00:00:00%2B09:00",
        "start_time=1700000000000&end_time=1800000000000",
    ] {
        let (status, body) = call(reqwest::Method::GET, "/v1/orders/closed", query.into()).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let long_ago = "start_time=2020-01-01T00:00:00Z";
    let (status, none) = call(reqwest::Method::GET, "/v1/orders/closed", long_ago.into()).await;
    assert_eq!((status, none), (200, json!([])));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_wallets_and_keys_read_real_data_and_withdrawals_say_why_not() {
    let db = TestDb::create().await.unwrap();
    let stack = stack_trading_eth(&db).await;
    let liam = stack.client("liam@example.com").await;
    let (status, body) = liam
        .post(
            "/api/v1/deposits",
            json!({"currency": "KRW", "amount": "12345", "idempotency_key": "faucet-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, made) = liam
        .post("/api/v1/api-keys", json!({"password": PASSWORD}))
        .await;
    let key = key_of(&made);
    let get = |path: &'static str, query: &'static str| {
        let (stack, key) = (&stack, &key);
        async move { signed(stack, key, reqwest::Method::GET, path, query).await }
    };

    let (status, deposits) = get("/v1/deposits", "currency=KRW").await;
    assert_eq!(status, 200, "{deposits}");
    let amounts: Vec<&str> = deposits
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["amount"].as_str().unwrap())
        .collect();
    assert_eq!(
        amounts,
        ["12345", "10000000"],
        "the faucet's, then the opening balance"
    );
    let newest = &deposits[0];
    assert_eq!(
        (
            newest["type"].as_str(),
            newest["state"].as_str(),
            newest["currency"].as_str()
        ),
        (Some("deposit"), Some("ACCEPTED"), Some("KRW"))
    );
    let (status, one) = signed(
        &stack,
        &key,
        reqwest::Method::GET,
        "/v1/deposit",
        &format!("uuid={}", newest["uuid"].as_str().unwrap()),
    )
    .await;
    assert_eq!((status, &one["amount"]), (200, &json!("12345")), "{one}");
    let (status, limited) = get("/v1/deposits", "limit=1&order_by=asc").await;
    assert_eq!(
        (status, limited[0]["amount"].as_str()),
        (200, Some("10000000")),
        "{limited}"
    );

    let (status, withdraws) = get("/v1/withdraws", "").await;
    assert_eq!((status, withdraws), (200, json!([])));
    let (status, wallets) = get("/v1/status/wallet", "").await;
    assert_eq!(status, 200, "{wallets}");
    for currency in ["KRW", "BTC", "ETH"] {
        assert!(
            wallets
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["currency"] == currency && w["wallet_state"] == "working"),
            "{currency}: {wallets}"
        );
    }
    let (status, keys) = get("/v1/api_keys", "").await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys[0]["access_key"].as_str(), Some(key.0.as_str()));
    assert!(keys[0]["expire_at"].as_str().unwrap().ends_with("+09:00"));

    for (method, path) in [
        (reqwest::Method::POST, "/v1/withdraws/coin"),
        (reqwest::Method::POST, "/v1/withdraws/krw"),
        (reqwest::Method::POST, "/v1/deposits/krw"),
        (reqwest::Method::GET, "/v1/deposits/coin_addresses"),
    ] {
        let (status, body) = signed(&stack, &key, method.clone(), path, "").await;
        assert_eq!(
            (status, body["error"]["name"].as_str()),
            (400, Some("not_supported_in_paper_trading")),
            "{method} {path}: {body}"
        );
        assert!(body["error"]["message"].as_str().unwrap().contains("paper"));
    }

    // Tick sizes before ordering, as Upbit recommends fetching them.
    let resp = stack
        .get(&format!(
            "{}/v1/orderbook/instruments?markets=KRW-ETH",
            stack.gw()
        ))
        .await;
    let instruments: Value = resp.json().await.unwrap();
    assert_eq!(
        instruments,
        json!([{"market": "KRW-ETH", "quote_currency": "KRW", "tick_size": "1000",
                "supported_levels": ["0", "10000", "100000", "1000000", "10000000", "100000000"]}])
    );
    stack.stop().await;
}
