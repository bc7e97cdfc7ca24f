//! Trading end to end through the gateway: the native API with bearer tokens
//! and the Upbit-compatible API with signed JWTs, against real user, order,
//! inventory and market-data services fed by upbit-sim.

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use sha2::Digest;
use test_support::{TestDb, eventually};
use user::jwt::{self, Alg};

use crate::stack::{Options, Stack};

fn dec(v: &Value) -> Decimal {
    match v {
        Value::String(s) => Decimal::from_str(s).unwrap(),
        Value::Number(n) => Decimal::from_str(&n.to_string()).unwrap(),
        other => panic!("not a decimal: {other}"),
    }
}

/// Every test user's password.
pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) struct Client<'a> {
    stack: &'a Stack,
    pub(crate) token: String,
}

impl Stack {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.gw()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Registers and logs in a new user (password [`PASSWORD`]).
    pub(crate) async fn client(&self, email: &str) -> Client<'_> {
        let creds = json!({"email": email, "password": PASSWORD});
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/register",
                None,
                Some(creds.clone()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(creds),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        Client {
            stack: self,
            token: body["access_token"].as_str().unwrap().to_owned(),
        }
    }

    async fn ledger_mismatches(&self, db: &TestDb) -> i64 {
        let mut admin = db.admin().await.unwrap();
        sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM inventory.balances b
                LEFT JOIN inventory.ledger l ON l.user_id = b.user_id AND l.currency = b.currency
                GROUP BY b.user_id, b.currency, b.available, b.locked
                HAVING b.available <> coalesce(sum(l.available_delta), 0)
                    OR b.locked <> coalesce(sum(l.locked_delta), 0) OR b.available < 0 OR b.locked < 0) x",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }
}

impl Client<'_> {
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.stack
            .call(reqwest::Method::GET, path, Some(&self.token), None)
            .await
    }
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.stack
            .call(reqwest::Method::POST, path, Some(&self.token), Some(body))
            .await
    }
    async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        self.stack
            .call_with(
                reqwest::Method::POST,
                path,
                Some(&self.token),
                Some(body),
                headers,
            )
            .await
    }
    pub(crate) async fn delete(&self, path: &str) -> (u16, Value) {
        self.stack
            .call(reqwest::Method::DELETE, path, Some(&self.token), None)
            .await
    }

    /// (available, locked) of a currency.
    async fn balance(&self, currency: &str) -> (Decimal, Decimal) {
        let (status, body) = self.get("/api/v1/accounts").await;
        assert_eq!(status, 200, "{body}");
        body["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["currency"] == currency)
            .map(|a| (dec(&a["balance"]), dec(&a["locked"])))
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_buy_sell_and_cancel_with_every_won_accounted_for() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let alice = stack.client("alice@example.com").await;
    assert_eq!(
        alice.balance("KRW").await,
        (Decimal::from(10_000_000), Decimal::ZERO)
    );
    // The ingestor has delivered the simulator's KRW-BTC orderbook by now?
    eventually(Duration::from_secs(20), "a KRW-BTC orderbook", || async {
        let (s, b) = alice.get("/api/v1/orderbooks/KRW-BTC").await;
        (s == 200 && !b["asks"].as_array()?.is_empty()).then_some(())
    })
    .await
    .unwrap();

    // Market buy for 1,000,000 KRW.
    let (status, buy) = alice
        .post(
            "/api/v1/orders",
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "price", "price": "1000000"}),
        )
        .await;
    assert_eq!(status, 201, "{buy}");
    assert_eq!(buy["state"], "done", "{buy}");
    let trades = buy["trades"].as_array().unwrap();
    assert!(!trades.is_empty());
    let funds: Decimal = trades.iter().map(|t| dec(&t["funds"])).sum();
    let fees: Decimal = trades.iter().map(|t| dec(&t["fee"])).sum();
    assert_eq!(funds, dec(&buy["executed_funds"]));
    assert_eq!(fees, dec(&buy["paid_fee"]));
    assert_eq!(
        fees,
        trades
            .iter()
            .map(|t| (dec(&t["funds"]) * Decimal::new(5, 4)).trunc_with_scale(8))
            .sum::<Decimal>(),
        "0.05% per fill"
    );
    let krw = Decimal::from(10_000_000) - funds - fees;
    assert_eq!(alice.balance("KRW").await, (krw, Decimal::ZERO));
    let btc = dec(&buy["executed_volume"]);
    assert_eq!(alice.balance("BTC").await, (btc, Decimal::ZERO));

    // Sell it back.
    let (status, sell) = alice.post("/api/v1/orders", json!({"market": "KRW-BTC", "side": "ask", "ord_type": "market", "volume": btc.to_string()})).await;
    assert_eq!(
        (status, sell["state"].as_str()),
        (201, Some("done")),
        "{sell}"
    );
    let proceeds = dec(&sell["executed_funds"]) - dec(&sell["paid_fee"]);
    assert_eq!(alice.balance("KRW").await, (krw + proceeds, Decimal::ZERO));
    assert_eq!(alice.balance("BTC").await.0, Decimal::ZERO);

    // A resting limit order, then cancelled: the funds come back.
    let before = alice.balance("KRW").await.0;
    let (status, resting) = alice.post("/api/v1/orders", json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "100000000", "volume": "0.001"})).await;
    assert_eq!(
        (status, resting["state"].as_str()),
        (201, Some("wait")),
        "{resting}"
    );
    assert_eq!(
        alice.balance("KRW").await,
        (before - dec(&json!("100050")), dec(&json!("100050")))
    );
    let uuid = resting["uuid"].as_str().unwrap();
    let (status, cancelled) = alice.delete(&format!("/api/v1/orders/{uuid}")).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancel")),
        "{cancelled}"
    );
    assert_eq!(alice.balance("KRW").await, (before, Decimal::ZERO));

    // A resting limit that a live trade crosses fills at its price.
    let (_, limit) = alice.post("/api/v1/orders", json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "140000000", "volume": "0.001"})).await;
    assert_eq!(limit["state"], "wait");
    stack
        .sim_trade("KRW-BTC", "139990000", "0.5", "ASK", None)
        .await;
    let uuid = limit["uuid"].as_str().unwrap().to_owned();
    let filled = eventually(
        Duration::from_secs(20),
        "the limit order filled by a live trade",
        || async {
            let (_, o) = alice.get(&format!("/api/v1/orders/{uuid}")).await;
            (o["state"] == "done").then_some(o)
        },
    )
    .await
    .unwrap();
    assert_eq!(filled["trades"][0]["price"], "140000000");
    // A live fill is recorded on the order first and settled in the balances
    // right after (see services/order/src/service.rs), so the balance may lag
    // the order's state by a moment.
    eventually(
        Duration::from_secs(10),
        "the filled BTC in the balance",
        || async { (alice.balance("BTC").await.0 == dec(&json!("0.001"))).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(
        stack.ledger_mismatches(&db).await,
        0,
        "balances equal the ledger"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_only_their_own_orders_and_bad_tokens_are_refused() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let (alice, bob) = (
        stack.client("a@example.com").await,
        stack.client("b@example.com").await,
    );
    let (_, order) = alice.post("/api/v1/orders", json!({"market": "KRW-ETH", "side": "bid", "ord_type": "limit", "price": "1000000", "volume": "0.01"})).await;
    let uuid = order["uuid"].as_str().unwrap();
    let (status, body) = bob.get(&format!("/api/v1/orders/{uuid}")).await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (404, Some("order_not_found"))
    );
    assert_eq!(bob.delete(&format!("/api/v1/orders/{uuid}")).await.0, 404);
    assert_eq!(
        alice.get(&format!("/api/v1/orders/{uuid}")).await.1["state"],
        "wait",
        "still open"
    );

    let user_id = {
        let (_, me) = stack
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"email": "a@example.com", "password": "correct horse battery"})),
            )
            .await;
        me["user"]["id"].as_str().unwrap().to_owned()
    };
    let now = chrono::Utc::now().timestamp();
    let expired = jwt::sign(
        Alg::Hs256,
        b"test-jwt-secret-0123456789",
        &json!({"sub": user_id, "typ": "access", "exp": now - 10}),
    );
    let forged = jwt::sign(
        Alg::Hs256,
        b"guessed-secret",
        &json!({"sub": user_id, "typ": "access", "exp": now + 600}),
    );
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub": user_id, "typ": "access", "exp": now + 600}).to_string())
    );
    for (token, name) in [
        (expired, "expired_access_token"),
        (forged, "invalid_access_token"),
        (none, "invalid_access_token"),
    ] {
        let (status, body) = stack
            .call(reqwest::Method::GET, "/api/v1/accounts", Some(&token), None)
            .await;
        assert_eq!(
            (status, body["error"]["name"].as_str()),
            (401, Some(name)),
            "{body}"
        );
    }
    let (status, body) = stack
        .call(reqwest::Method::GET, "/api/v1/accounts", None, None)
        .await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (401, Some("no_authorization_token"))
    );
    // Upbit's API names a missing token as Upbit does.
    for auth in [None, Some("")] {
        let mut req = stack.http.get(format!("{}/v1/accounts", stack.gw()));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, body["error"]["name"].as_str()),
            (401, Some("jwt_verification")),
            "{body}"
        );
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_cannot_be_minted_or_overflowed_through_the_api() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let eve = stack.client("eve@example.com").await;
    // A price too large for a decimal product is a 400, not a 503.
    for (price, volume) in [
        ("79228162514264337593543950000", "2"),
        ("99999999999999999000", "99999999999999999999"),
    ] {
        let (status, body) = eve
            .post(
                "/api/v1/orders",
                json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": price, "volume": volume}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["name"].as_str()),
            (400, Some("validation_error")),
            "{body}"
        );
    }
    // The faucet gives KRW only, and at most 100,000,000 in a day.
    let (status, body) = eve
        .post(
            "/api/v1/deposits",
            json!({"currency": "BTC", "amount": "100000000"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = eve
        .post(
            "/api/v1/deposits",
            json!({"currency": "KRW", "amount": "60000000"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = eve
        .post(
            "/api/v1/deposits",
            json!({"currency": "KRW", "amount": "60000000"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (400, Some("deposit_limit_exceeded")),
        "{body}"
    );
    assert_eq!(eve.balance("KRW").await.0, Decimal::from(70_000_000));
    assert_eq!(eve.balance("BTC").await.0, Decimal::ZERO);
    // Sign-ups from one address are throttled (10 an hour by default).
    let mut statuses = Vec::new();
    for i in 0..11 {
        let (status, _) = stack
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({"email": format!("bot{i}@example.com"), "password": "correct horse battery"})),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        9,
        "eve's sign-up was the first of ten: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(stack.ledger_mismatches(&db).await, 0);
    stack.stop().await;
}

/// Signs an Upbit-style request as Upbit's own clients do.
pub(crate) fn upbit_jwt(access: &str, secret: &str, query: &str) -> String {
    let mut claims = json!({"access_key": access, "nonce": uuid::Uuid::new_v4().to_string()});
    if !query.is_empty() {
        claims["query_hash"] = hex::encode(sha2::Sha512::digest(query.as_bytes())).into();
        claims["query_hash_alg"] = "SHA512".into();
    }
    jwt::sign(Alg::Hs256, secret.as_bytes(), &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upbit_client_trades_by_changing_only_the_base_url() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            private_limits: (30, 8),
            ..Options::default()
        },
    )
    .await;
    let carol = stack.client("carol@example.com").await;
    let (status, key) = carol
        .post(
            "/api/v1/api-keys",
            json!({"label": "bot", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (access, secret) = (
        key["access_key"].as_str().unwrap().to_owned(),
        key["secret_key"].as_str().unwrap().to_owned(),
    );
    let upbit = |method: reqwest::Method, path: &str, query: &str, body: Option<Value>| {
        let (access, secret) = (access.clone(), secret.clone());
        let stack = &stack;
        let url = if query.is_empty() || body.is_some() {
            format!("{}{path}", stack.gw())
        } else {
            format!("{}{path}?{query}", stack.gw())
        };
        let token = upbit_jwt(&access, &secret, query);
        async move {
            let mut req = stack.http.request(method, url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let header = resp
                .headers()
                .get("remaining-req")
                .map(|h| h.to_str().unwrap().to_owned());
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
                header,
            )
        }
    };
    let (status, accounts, header) = upbit(reqwest::Method::GET, "/v1/accounts", "", None).await;
    assert_eq!(status, 200, "{accounts}");
    assert_eq!(accounts[0]["currency"], "KRW");
    assert_eq!(accounts[0]["balance"], "10000000");
    assert!(header.unwrap().starts_with("group=default; min="));

    let (status, chance, _) = upbit(
        reqwest::Method::GET,
        "/v1/orders/chance",
        "market=KRW-ETH",
        None,
    )
    .await;
    assert_eq!(status, 200, "{chance}");
    assert_eq!(
        (
            chance["bid_fee"].as_str(),
            chance["market"]["bid"]["min_total"].as_str()
        ),
        (Some("0.0005"), Some("5000"))
    );
    // The order types by side, as Upbit lists them now (ccxt reads them).
    for (side, kind) in [("bid_types", "price"), ("ask_types", "market")] {
        let types = chance["market"][side].as_array().unwrap();
        for t in [
            "limit",
            "limit_ioc",
            "limit_fok",
            "best_ioc",
            "best_fok",
            kind,
        ] {
            assert!(types.iter().any(|x| x == t), "{side} lacks {t}: {chance}");
        }
    }

    // Place with a JSON body: query_hash covers its fields in order.
    let body = json!({"market": "KRW-ETH", "side": "bid", "volume": "0.01", "price": "4000000", "ord_type": "limit"});
    let query = "market=KRW-ETH&side=bid&volume=0.01&price=4000000&ord_type=limit";
    let (status, order, header) = upbit(
        reqwest::Method::POST,
        "/v1/orders",
        query,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert!(header.unwrap().starts_with("group=order;"));
    for field in [
        "uuid",
        "side",
        "ord_type",
        "price",
        "state",
        "market",
        "created_at",
        "volume",
        "remaining_volume",
        "reserved_fee",
        "remaining_fee",
        "paid_fee",
        "locked",
        "executed_volume",
        "trades_count",
    ] {
        assert!(
            order.get(field).is_some(),
            "Upbit order field {field} missing: {order}"
        );
    }
    assert_eq!(
        (order["state"].as_str(), order["locked"].as_str()),
        (Some("wait"), Some("40020"))
    );
    assert!(order["created_at"].as_str().unwrap().ends_with("+09:00"));
    let uuid = order["uuid"].as_str().unwrap().to_owned();
    let (status, got, _) = upbit(
        reqwest::Method::GET,
        "/v1/order",
        &format!("uuid={uuid}"),
        None,
    )
    .await;
    assert_eq!((status, got["uuid"].as_str()), (200, Some(uuid.as_str())));
    assert!(got["trades"].is_array());
    let (_, open, _) = upbit(
        reqwest::Method::GET,
        "/v1/orders/open",
        "market=KRW-ETH",
        None,
    )
    .await;
    assert_eq!(open.as_array().unwrap().len(), 1);
    let (status, cancelled, _) = upbit(
        reqwest::Method::DELETE,
        "/v1/order",
        &format!("uuid={uuid}"),
        None,
    )
    .await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancel")),
        "{cancelled}"
    );
    let (_, closed, _) = upbit(
        reqwest::Method::GET,
        "/v1/orders/closed",
        "states[]=done&states[]=cancel",
        None,
    )
    .await;
    assert_eq!(closed[0]["uuid"], uuid.as_str());

    // Upbit's error names.
    let (status, e, _) = upbit(
        reqwest::Method::POST,
        "/v1/orders",
        "market=KRW-ETH&side=bid&price=4000&ord_type=price",
        Some(json!({"market": "KRW-ETH", "side": "bid", "price": "4000", "ord_type": "price"})),
    )
    .await;
    assert_eq!(
        (status, e["error"]["name"].as_str()),
        (400, Some("under_min_total_bid")),
        "{e}"
    );
    let (_, e, _) = upbit(reqwest::Method::POST, "/v1/orders", "market=KRW-ETH&side=bid&volume=1&price=4000500&ord_type=limit", Some(json!({"market": "KRW-ETH", "side": "bid", "volume": "1", "price": "4000500", "ord_type": "limit"}))).await;
    assert_eq!(e["error"]["name"], "invalid_price_bid", "{e}");
    let (status, e, _) = upbit(reqwest::Method::POST, "/v1/orders", "market=KRW-ETH&side=bid&volume=10&price=4000000&ord_type=limit", Some(json!({"market": "KRW-ETH", "side": "bid", "volume": "10", "price": "4000000", "ord_type": "limit"}))).await;
    assert_eq!(
        (status, e["error"]["name"].as_str()),
        (400, Some("insufficient_funds_bid")),
        "{e}"
    );
    // A signature over other parameters, a wrong secret, a replayed nonce.
    let token = upbit_jwt(
        &access,
        &secret,
        "market=KRW-ETH&side=bid&volume=0.01&price=1000000&ord_type=limit",
    );
    let resp = stack
        .http
        .post(format!("{}/v1/orders", stack.gw()))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["name"],
        "invalid_query_payload"
    );
    let wrong = upbit_jwt(&access, &"x".repeat(40), "");
    let resp = stack
        .http
        .get(format!("{}/v1/accounts", stack.gw()))
        .bearer_auth(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["name"],
        "jwt_verification"
    );
    let once = upbit_jwt(&access, &secret, "");
    let first = stack
        .http
        .get(format!("{}/v1/accounts", stack.gw()))
        .bearer_auth(&once)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let replay = stack
        .http
        .get(format!("{}/v1/accounts", stack.gw()))
        .bearer_auth(&once)
        .send()
        .await
        .unwrap();
    assert_eq!(
        replay.json::<Value>().await.unwrap()["error"]["name"],
        "nonce_used"
    );

    // Cancels count in Upbit's `default` group (30/s here), not `order`: a
    // burst of 60 at once gets 429s, every answer naming the group.
    let uri = format!("uuid={uuid}");
    let burst = (0..60).map(|_| upbit(reqwest::Method::DELETE, "/v1/order", &uri, None));
    let mut statuses = Vec::new();
    for (s, _, header) in futures_util::future::join_all(burst).await {
        assert!(
            header
                .as_deref()
                .is_some_and(|h| h.starts_with("group=default;")),
            "{header:?}"
        );
        statuses.push(s);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(stack.ledger_mismatches(&db).await, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_orders_spend_only_what_exists_and_retries_make_one_order() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let dave = stack.client("dave@example.com").await;
    eventually(Duration::from_secs(20), "a KRW-ETH orderbook", || async {
        let (s, b) = dave.get("/api/v1/orderbooks/KRW-ETH").await;
        (s == 200 && !b["asks"].as_array()?.is_empty()).then_some(())
    })
    .await
    .unwrap();
    // 10 limit bids of 3,000,000 (+ fee) race for 10,000,000: exactly 3 are affordable.
    let results = futures_util::future::join_all((0..10).map(|_| {
        dave.post("/api/v1/orders", json!({"market": "KRW-ETH", "side": "bid", "ord_type": "limit", "price": "3000000", "volume": "1"}))
    }))
    .await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(ok, 3, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != 201)
            .all(|(s, b)| *s == 400 && b["error"]["name"] == "insufficient_funds_bid")
    );
    let (available, locked) = dave.balance("KRW").await;
    assert_eq!(
        (available, locked),
        (
            Decimal::from(10_000_000 - 3 * 3_001_500),
            Decimal::from(3 * 3_001_500)
        )
    );
    // A retried request (the same Idempotency-Key, or the same X-Request-Id as
    // the mesh keeps across its retries): one order, every answer naming it.
    let request = json!({"market": "KRW-ETH", "side": "bid", "ord_type": "limit", "price": "100000", "volume": "0.1", "identifier": "retry-me"});
    for header in ["idempotency-key", "x-request-id"] {
        let mut request = request.clone();
        request["identifier"] = json!(format!("retry-me-{header}"));
        let key = [(header, "req-1")];
        let answers = futures_util::future::join_all(
            (0..4).map(|_| dave.post_with("/api/v1/orders", request.clone(), &key)),
        )
        .await;
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 200, 200, 201], "{header}: {answers:?}");
        assert!(
            answers.iter().all(|a| a.1["uuid"] == answers[0].1["uuid"]),
            "{header}: {answers:?}"
        );
    }
    // Upbit's identifier is unique: a new request with a used one is an error.
    let first = dave.post("/api/v1/orders", request.clone()).await;
    let again = dave.post("/api/v1/orders", request).await;
    assert_eq!(first.0, 201);
    assert_eq!(
        (again.0, again.1["error"]["name"].as_str()),
        (400, Some("create_bid_error")),
        "{again:?}"
    );
    let (_, open) = dave.get("/api/v1/orders?state=wait").await;
    assert_eq!(
        open["orders"].as_array().unwrap().len(),
        6,
        "3 racing orders and 3 retried ones, once each"
    );
    assert_eq!(stack.ledger_mismatches(&db).await, 0);
    stack.stop().await;
}

/// POSTs `body` as a client at `ip` behind the trusted proxy.
async fn post_from(stack: &Stack, path: &str, body: Value, ip: String) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.gw()))
        .header("x-forwarded-for", ip)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cannot_be_flooded_guessed_or_used_to_find_accounts() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            auth_limit: 30,
            ..Options::default()
        },
    )
    .await;
    let post = |path: &'static str, body: Value, ip: String| post_from(&stack, path, body, ip);
    let creds = |email: &str, password: &str| json!({"email": email, "password": password});

    // Sign-up answers the same whether the email is free or taken.
    let new = post(
        "/api/v1/auth/register",
        creds("kim@example.com", "correct horse battery"),
        "10.1.0.1".into(),
    )
    .await;
    let taken = post(
        "/api/v1/auth/register",
        creds("kim@example.com", "another password!"),
        "10.1.0.2".into(),
    )
    .await;
    assert_eq!(new.0, 201, "{new:?}");
    assert_eq!(new, taken, "nothing tells a taken email from a free one");

    // Failed logins of one account: after 5, refused before any password is
    // checked, whether the account exists or not, and even with the right password.
    for email in ["kim@example.com", "nobody@example.com"] {
        let mut statuses = Vec::new();
        for i in 0..7 {
            let ip = format!("10.2.{i}.1");
            statuses.push(
                post("/api/v1/auth/login", creds(email, "wrong password 1"), ip)
                    .await
                    .0,
            );
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429], "{email}");
    }
    let (status, body) = post(
        "/api/v1/auth/login",
        creds("kim@example.com", "correct horse battery"),
        "10.3.0.1".into(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (429, Some("too_many_requests"))
    );

    // One address: 30 sign-in requests a minute, whatever X-Forwarded-For the
    // client writes (only the entry the trusted proxy adds counts).
    let burst = futures_util::future::join_all((0..40).map(|i| {
        let spoofed = format!("192.168.{i}.{i}, 10.9.9.9");
        post(
            "/api/v1/auth/login",
            creds(&format!("u{i}@example.com"), "whatever pass"),
            spoofed,
        )
    }))
    .await;
    let limited = burst.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 10, "{limited} of 40 limited");
    assert!(burst.iter().all(|(s, _)| *s == 401 || *s == 429));
    stack.stop().await;
}

/// A gateway whose Redis and services are all away.
async fn lonely_gateway(
    tweak: impl FnOnce(&mut gateway::Config),
) -> (std::net::SocketAddr, test_support::Running) {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = gateway::Config::local(dead);
    config.order_url = format!("http://{dead}");
    config.inventory_url = format!("http://{dead}");
    config.user_url = format!("http://{dead}");
    config.redis_url = format!("redis://{dead}");
    tweak(&mut config);
    let stop = tokio_util::sync::CancellationToken::new();
    let app = gateway::App::build(config, stop.clone()).await.unwrap();
    let http = app.http_addr();
    (http, test_support::Running::spawn(stop, app.run()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_limited_per_address_even_without_redis() {
    // The per-address budget is enforced even with Redis away (counted in the
    // process), before anything else.
    let (http, running) = lonely_gateway(|c| {
        c.rate_limit_ip = 5;
        c.trusted_proxies = 1;
    })
    .await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let resp = client
            .get(format!("http://{http}/api/v1/tickers"))
            .header("x-forwarded-for", format!("172.16.{i}.1, 10.7.7.7"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    // 429s, then (going on regardless) the 418 block.
    let limited = statuses.iter().filter(|s| **s == 429 || **s == 418).count();
    assert!(limited >= 20, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [429, 418, 503].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&418), "{statuses:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_finishes_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (http, running) = lonely_gateway(|c| {
        c.request_timeout = Duration::from_secs(1);
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Headers begun but never finished: the connection is closed.
    let mut dripping = tokio::net::TcpStream::connect(http).await.unwrap();
    dripping
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), dripping.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection is still open after 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "answered"
    );
    // A body announced but never sent (a slow-loris client).
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    tcp.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer within the timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    running.stop().await;
}
