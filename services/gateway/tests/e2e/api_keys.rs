//! Upbit API keys: what a key may do, what its signature covers, and public
//! Upbit client libraries (ccxt, pyupbit) trading through the gateway as
//! published.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::TestDb;

use crate::market::wait_rest_price;
use crate::stack::{Options, Stack};
use crate::trading::upbit_jwt;

/// `(status, body)` of an Upbit-signed request; `query` is both what is sent
/// and what is hashed.
async fn signed(
    stack: &Stack,
    key: &(String, String),
    method: reqwest::Method,
    path: &str,
    query: &str,
) -> (u16, Value) {
    let token = upbit_jwt(&key.0, &key.1, query);
    let url = if query.is_empty() {
        format!("{}{path}", stack.gw())
    } else {
        format!("{}{path}?{query}", stack.gw())
    };
    let resp = stack
        .http
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn key_of(made: &Value) -> (String, String) {
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
            json!({"label": "watcher", "permissions": ["view_accounts", "view_orders"]}),
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
        .post("/api/v1/api-keys", json!({"permissions": ["make_orders"]}))
        .await;
    let trader = key_of(&made);
    let (status, body) = signed(&stack, &trader, reqwest::Method::GET, "/v1/accounts", "").await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (401, Some("out_of_scope"))
    );
    for bad in [json!([]), json!(["withdraw"]), json!("view_orders")] {
        let (status, body) = grace
            .post("/api/v1/api-keys", json!({"permissions": bad}))
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
async fn a_signature_covers_one_reading_of_the_request() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let heidi = stack.client("heidi@example.com").await;
    let (_, made) = heidi.post("/api/v1/api-keys", json!({})).await;
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
    let stack = Stack::start(&db, Options::default()).await;
    stack
        .sim_trade("KRW-ETH", "4000000", "0.01", "BID", None)
        .await;
    wait_rest_price(&stack, "KRW-ETH", "4000000").await;
    let ivan = stack.client("ivan@example.com").await;
    let (_, made) = ivan
        .post("/api/v1/api-keys", json!({"label": "bots"}))
        .await;
    let key = key_of(&made);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/upbit-clients/check.py"
    );
    let run = tokio::process::Command::new(&python)
        .arg(script)
        .env("BASE_URL", stack.gw())
        .env("ACCESS_KEY", &key.0)
        .env("SECRET_KEY", &key.1)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client checks finish within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all client checks passed"),
        "{}\n{stdout}\n{stderr}",
        out.status
    );
    stack.stop().await;
}
