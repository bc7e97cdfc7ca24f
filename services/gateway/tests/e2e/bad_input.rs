//! Every route with hostile input: each field of each request, in turn, holds
//! one of many bad values (numbers too big or too precise, negative, NaN,
//! exponents, injection strings, control characters, unknown markets, huge
//! strings, wrong JSON types), and each body is also sent broken (cut, wrong
//! type, invalid UTF-8, too big). Whatever the answer, it is never a 5xx: a
//! refusal is a 4xx in Upbit's error shape, and the gateway keeps serving. The
//! WebSocket gets the same values in each field of a subscription.

use serde_json::{Value, json};
use sha2::Digest;
use test_support::TestDb;
use user::jwt::{self, Alg};

use std::time::Duration;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::stack::{Options, Stack, ws_next, ws_send};

/// A request's parameters, each good.
type Params = Vec<(&'static str, &'static str)>;

/// Values each field takes in turn.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "-1",
        "0",
        "-0",
        "0.000000000000000000001",
        "1.0000000000000000000000001",
        "NaN",
        "inf",
        "-inf",
        "1e9999",
        "1E-8",
        "0x10",
        "+5",
        "1,000",
        "79228162514264337593543950336",
        "-79228162514264337593543950336",
        "' OR 1=1 --",
        "\"; DROP TABLE orders; --",
        "<script>alert(1)</script>",
        "\u{0}",
        "\n\r\t",
        "KRW-NOPE",
        "krw-btc",
        "KRW-BTC.99",
        "../../etc/passwd",
        "%00",
        "%ZZ",
        "😀",
        "null",
        "[]",
        "{}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("9".repeat(400));
    v.push("x".repeat(20_000));
    v
}

/// JSON values of the wrong type for a field.
fn wrong_types() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!(-1),
        json!(1e300),
        json!(18446744073709551615u64),
        json!(["KRW-BTC"]),
    ]
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

/// Each request on a connection of its own: the server closes a connection
/// whose oversized body it refused unread (hyper cannot reuse it), and a
/// pooled client could send the next request on it just as it closes.
static UNPOOLED: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
});

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let (_, request) = request.build_split();
    let client = &*UNPOOLED;
    let request = request.unwrap();
    let what = format!(
        "{} {} ({} bytes)",
        request.method(),
        request.url().path(),
        request
            .body()
            .and_then(|b| b.as_bytes())
            .map_or(0, <[u8]>::len)
    );
    let resp = client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text }
}

/// At most `n` characters of `s`, for failure messages.
fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// What the answers were: each status's count, and every wrong answer.
#[derive(Default)]
struct Tally {
    statuses: std::collections::BTreeMap<u16, u32>,
    failures: Vec<String>,
}

impl Tally {
    /// Never a 5xx; a refusal carries Upbit's error shape. Failures are
    /// collected so one run shows them all.
    fn check(&mut self, what: &str, a: &Answer) {
        *self.statuses.entry(a.status).or_insert(0) += 1;
        let what = short(what, 120);
        let text = short(&a.text, 200);
        if a.status >= 500 {
            self.failures.push(format!("{what}: {} {text}", a.status));
        } else if a.status >= 400
            && !((a.body["error"]["name"].is_string() || a.body["error"]["name"].is_u64())
                && a.body["error"]["message"].is_string())
        {
            self.failures.push(format!(
                "{what}: {} without Upbit's error shape: {text}",
                a.status
            ));
        }
    }

    fn requests(&self) -> u32 {
        self.statuses.values().sum()
    }
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A request with a bearer token (native) or none.
fn native(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut req = stack.http.request(method, format!("{}{path}", stack.gw()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req
}

/// An Upbit-signed request: `params` hashed as the gateway canonicalises them.
fn upbit(
    stack: &Stack,
    key: &(String, String),
    method: reqwest::Method,
    path: &str,
    params: &[(String, String)],
    as_body: bool,
) -> reqwest::RequestBuilder {
    let canonical = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut claims = json!({"access_key": key.0, "nonce": uuid::Uuid::new_v4().to_string()});
    if !params.is_empty() {
        claims["query_hash"] = hex::encode(sha2::Sha512::digest(canonical.as_bytes())).into();
        claims["query_hash_alg"] = "SHA512".into();
    }
    let token = jwt::sign(Alg::Hs256, key.1.as_bytes(), &claims);
    if as_body {
        let body: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        stack
            .http
            .request(method, format!("{}{path}", stack.gw()))
            .bearer_auth(token)
            .json(&body)
    } else {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        stack
            .http
            .request(method, format!("{}{path}?{query}", stack.gw()))
            .bearer_auth(token)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_input_with_a_4xx_never_a_5xx() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    // A user with a token and an API key, for the private routes.
    let creds = json!({"email": "mallory@example.com", "password": "correct horse battery"});
    let register =
        native(&stack, reqwest::Method::POST, "/api/v1/auth/register", None).json(&creds);
    assert_eq!(send(register).await.status, 201);
    let login = native(&stack, reqwest::Method::POST, "/api/v1/auth/login", None).json(&creds);
    let tokens = send(login).await.body;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let made = native(
        &stack,
        reqwest::Method::POST,
        "/api/v1/api-keys",
        Some(&token),
    )
    .json(&json!({"label": "fuzz", "password": creds["password"]}));
    let made = send(made).await.body;
    let key = (
        made["access_key"].as_str().unwrap().to_owned(),
        made["secret_key"].as_str().unwrap().to_owned(),
    );
    let values = hostile();
    let mut tally = Tally::default();

    // Native JSON bodies: each field bad in turn (as a string, then as a wrong type).
    let bodies: Vec<(&str, Option<&str>, Value)> = vec![
        ("/api/v1/auth/register", None, creds.clone()),
        ("/api/v1/auth/login", None, creds.clone()),
        (
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        ),
        (
            "/api/v1/deposits",
            Some(&token),
            json!({"currency": "KRW", "amount": "10000", "idempotency_key": "k"}),
        ),
        (
            "/api/v1/orders",
            Some(&token),
            json!({"market": "KRW-BTC", "side": "bid", "ord_type": "limit", "price": "1000000", "volume": "0.01", "identifier": "i"}),
        ),
        (
            "/api/v1/api-keys",
            Some(&token),
            json!({"label": "l", "password": creds["password"]}),
        ),
    ];
    for (path, auth, good) in &bodies {
        for field in good.as_object().unwrap().keys() {
            let bad_values = values
                .iter()
                .map(|v| Value::from(v.as_str()))
                .chain(wrong_types());
            for bad in bad_values {
                let mut body = good.clone();
                body[field] = bad.clone();
                let req = native(&stack, reqwest::Method::POST, path, *auth).json(&body);
                tally.check(&format!("POST {path} {field}={bad}"), &send(req).await);
            }
        }
        // Broken bodies.
        let broken: Vec<(&str, Vec<u8>)> = vec![
            ("application/json", b"".to_vec()),
            ("application/json", b"{".to_vec()),
            ("application/json", b"[]".to_vec()),
            ("application/json", b"null".to_vec()),
            ("application/json", b"\"x\"".to_vec()),
            (
                "application/json",
                vec![0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d],
            ),
            (
                "application/json",
                format!("{{\"a\":\"{}\"}}", "x".repeat(3 << 20)).into_bytes(),
            ),
            ("text/plain", b"{}".to_vec()),
        ];
        for (content_type, bytes) in broken {
            let len = bytes.len();
            let req = native(&stack, reqwest::Method::POST, path, *auth)
                .header("content-type", content_type)
                .body(bytes);
            tally.check(
                &format!("POST {path} ({content_type}, {len} bytes)"),
                &send(req).await,
            );
        }
    }

    // Query parameters and path segments, native and Upbit's public API.
    let queries: Vec<(&str, Option<&str>, Params)> = vec![
        (
            "/api/v1/tickers",
            None,
            vec![("markets", "KRW-BTC"), ("quote", "KRW")],
        ),
        ("/api/v1/orderbooks/KRW-BTC", None, vec![("depth", "5")]),
        (
            "/api/v1/trades/KRW-BTC",
            None,
            vec![("count", "5"), ("cursor", "1"), ("to", "1")],
        ),
        (
            "/api/v1/candles/KRW-BTC",
            None,
            vec![("interval", "1m"), ("count", "5"), ("to", "1")],
        ),
        (
            "/api/v1/orders",
            Some(&token),
            vec![
                ("state", "wait"),
                ("market", "KRW-BTC"),
                ("page", "1"),
                ("limit", "5"),
                ("order_by", "asc"),
            ],
        ),
        ("/v1/market/all", None, vec![("is_details", "true")]),
        ("/v1/ticker", None, vec![("markets", "KRW-BTC")]),
        ("/v1/ticker/all", None, vec![("quote_currencies", "KRW")]),
        (
            "/v1/orderbook",
            None,
            vec![("markets", "KRW-BTC"), ("count", "5"), ("level", "0")],
        ),
        (
            "/v1/trades/ticks",
            None,
            vec![
                ("market", "KRW-BTC"),
                ("count", "5"),
                ("cursor", "1"),
                ("to", "00:00:00"),
                ("days_ago", "1"),
            ],
        ),
        (
            "/v1/candles/minutes/1",
            None,
            vec![
                ("market", "KRW-BTC"),
                ("count", "5"),
                ("to", "2026-01-01T00:00:00"),
            ],
        ),
        (
            "/v1/candles/days",
            None,
            vec![
                ("market", "KRW-BTC"),
                ("count", "5"),
                ("converting_price_unit", "KRW"),
            ],
        ),
        (
            "/v1/candles/weeks",
            None,
            vec![("market", "KRW-BTC"), ("count", "5")],
        ),
        (
            "/v1/candles/months",
            None,
            vec![("market", "KRW-BTC"), ("count", "5")],
        ),
        (
            "/v1/candles/years",
            None,
            vec![("market", "KRW-BTC"), ("count", "5")],
        ),
        (
            "/v1/candles/seconds",
            None,
            vec![
                ("market", "KRW-BTC"),
                ("count", "5"),
                ("to", "2026-01-01T00:00:00"),
            ],
        ),
    ];
    for (path, auth, params) in &queries {
        for (i, (field, _)) in params.iter().enumerate() {
            for bad in &values {
                let query: Vec<String> = params
                    .iter()
                    .enumerate()
                    .map(|(j, (k, v))| {
                        let v = if i == j { bad.as_str() } else { v };
                        format!("{k}={}", encode(v))
                    })
                    .collect();
                let url = format!("{path}?{}", query.join("&"));
                let req = native(&stack, reqwest::Method::GET, &url, *auth);
                tally.check(&format!("GET {path} {field}={bad:?}"), &send(req).await);
            }
            // Broken percent-encoding and invalid UTF-8.
            for raw in ["%ZZ", "%FF%FE", "%", "%C3%28"] {
                let url = format!("{path}?{field}={raw}");
                let req = native(&stack, reqwest::Method::GET, &url, *auth);
                tally.check(&format!("GET {url}"), &send(req).await);
            }
        }
    }
    for bad in &values {
        for (method, template, auth) in [
            (reqwest::Method::GET, "/api/v1/orderbooks/{}", None),
            (reqwest::Method::GET, "/api/v1/trades/{}", None),
            (reqwest::Method::GET, "/api/v1/candles/{}", None),
            (reqwest::Method::GET, "/v1/candles/minutes/{}", None),
            (
                reqwest::Method::GET,
                "/api/v1/orders/{}",
                Some(token.as_str()),
            ),
            (
                reqwest::Method::DELETE,
                "/api/v1/orders/{}",
                Some(token.as_str()),
            ),
            (
                reqwest::Method::DELETE,
                "/api/v1/api-keys/{}",
                Some(token.as_str()),
            ),
        ] {
            let segment: String = url::form_urlencoded::byte_serialize(bad.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            let path = template.replace("{}", &segment);
            let req = native(&stack, method.clone(), &path, auth);
            tally.check(
                &format!("{method} {template} with {bad:?}"),
                &send(req).await,
            );
        }
    }

    // Upbit's exchange API, signed as a client signs, each parameter bad in turn.
    let signed: Vec<(reqwest::Method, &str, bool, Params)> = vec![
        (
            reqwest::Method::GET,
            "/v1/orders/chance",
            false,
            vec![("market", "KRW-BTC")],
        ),
        (
            reqwest::Method::POST,
            "/v1/orders",
            true,
            vec![
                ("market", "KRW-BTC"),
                ("side", "bid"),
                ("ord_type", "limit"),
                ("price", "1000000"),
                ("volume", "0.01"),
                ("identifier", "u"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/v1/order",
            false,
            vec![("uuid", "00000000-0000-0000-0000-000000000000")],
        ),
        (
            reqwest::Method::DELETE,
            "/v1/order",
            false,
            vec![("identifier", "u")],
        ),
        (
            reqwest::Method::GET,
            "/v1/orders",
            false,
            vec![
                ("market", "KRW-BTC"),
                ("state", "wait"),
                ("page", "1"),
                ("limit", "5"),
                ("order_by", "desc"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/v1/orders/open",
            false,
            vec![("market", "KRW-BTC"), ("page", "1"), ("limit", "5")],
        ),
        (
            reqwest::Method::GET,
            "/v1/orders/closed",
            false,
            vec![
                ("market", "KRW-BTC"),
                ("limit", "5"),
                ("start_time", "1"),
                ("end_time", "2"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/v1/orders/uuids",
            false,
            vec![
                ("uuids[]", "00000000-0000-0000-0000-000000000000"),
                ("order_by", "asc"),
            ],
        ),
        (
            reqwest::Method::DELETE,
            "/v1/orders/uuids",
            false,
            vec![("identifiers[]", "u")],
        ),
        (
            reqwest::Method::DELETE,
            "/v1/orders/open",
            false,
            vec![
                ("cancel_side", "bid"),
                ("pairs", "KRW-BTC"),
                ("excluded_pairs", "KRW-ETH"),
                ("count", "5"),
                ("order_by", "desc"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/v1/deposits",
            false,
            vec![
                ("currency", "KRW"),
                ("limit", "5"),
                ("page", "1"),
                ("order_by", "asc"),
            ],
        ),
        (
            reqwest::Method::GET,
            "/v1/deposit",
            false,
            vec![("uuid", "00000000-0000-0000-0000-000000000001")],
        ),
        (
            reqwest::Method::POST,
            "/v1/orders/cancel_and_new",
            true,
            vec![
                ("prev_order_identifier", "u"),
                ("new_ord_type", "limit"),
                ("new_price", "1000000"),
                ("new_volume", "remain_only"),
                ("new_identifier", "n"),
                ("new_time_in_force", "ioc"),
            ],
        ),
        (
            reqwest::Method::POST,
            "/v1/orders/test",
            true,
            vec![
                ("market", "KRW-BTC"),
                ("side", "bid"),
                ("ord_type", "best"),
                ("price", "1000000"),
                ("time_in_force", "fok"),
                ("smp_type", "reduce"),
            ],
        ),
    ];
    for (method, path, as_body, params) in &signed {
        for (i, (field, _)) in params.iter().enumerate() {
            for bad in &values {
                let params: Vec<(String, String)> = params
                    .iter()
                    .enumerate()
                    .map(|(j, (k, v))| {
                        (
                            (*k).to_owned(),
                            if i == j { bad.clone() } else { (*v).to_owned() },
                        )
                    })
                    .collect();
                let req = upbit(&stack, &key, method.clone(), path, &params, *as_body);
                tally.check(
                    &format!("{method} {path} {field}={bad:?}"),
                    &send(req).await,
                );
            }
        }
    }
    // The WebSocket: each field of a subscription bad in turn, and messages
    // that are not subscriptions. Each on a fresh connection (from its own
    // address, so the per-connection request window never answers instead of
    // the parser); every answer before the PING's must be data or an error
    // frame in Upbit's shape, and the connection must still answer the PING.
    let good = json!([
        {"ticket": "t"},
        {"type": "trade", "codes": ["KRW-BTC"], "is_only_snapshot": true, "is_only_realtime": false},
        {"format": "DEFAULT"}
    ]);
    let mut messages: Vec<String> = Vec::new();
    for (i, field) in [
        (0, "ticket"),
        (1, "type"),
        (1, "codes"),
        (1, "level"),
        (1, "is_only_snapshot"),
        (1, "is_only_realtime"),
        (2, "format"),
    ] {
        for bad in values
            .iter()
            .map(|v| Value::from(v.as_str()))
            .chain(wrong_types())
        {
            let mut m = good.clone();
            m[i][field] = bad;
            messages.push(m.to_string());
        }
    }
    // More codes than allowed, in a message within the size limit (a bigger
    // one closes the connection by design: market.rs tests that).
    let mut many = good.clone();
    many[1]["codes"] = Value::from(vec![Value::from("KRW-BTC"); 2_000]);
    messages.push(many.to_string());
    messages.extend(
        [
            "",
            "{",
            "[]",
            "{}",
            "null",
            "[[]]",
            "[1,2,3]",
            "PING PING",
            "\u{0}",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    messages.extend(values.iter().cloned());
    for (n, message) in messages.iter().enumerate() {
        let mut request = format!("ws://{}/websocket/v1", stack.gateways[0].http)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "x-forwarded-for",
            format!("10.{}.{}.1", n / 250, n % 250).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        ws_send(&mut ws, message).await;
        ws_send(&mut ws, "PING").await;
        let what = format!("WebSocket {}", short(message, 100));
        loop {
            let Some(frame) = ws_next(&mut ws, Duration::from_secs(5)).await else {
                tally
                    .failures
                    .push(format!("{what}: closed or silent before the PING's answer"));
                break;
            };
            if frame == br#"{"status":"UP"}"# {
                *tally.statuses.entry(101).or_insert(0) += 1;
                break;
            }
            let body: Value = serde_json::from_slice(&frame).unwrap_or(Value::Null);
            if body.get("error").is_some()
                && !((body["error"]["name"].is_string() || body["error"]["name"].is_u64())
                    && body["error"]["message"].is_string())
            {
                tally
                    .failures
                    .push(format!("{what}: an error frame without Upbit's shape"));
            }
        }
        let _ = ws.close(None).await;
    }

    // Wrong methods and unknown routes: the framework's own answers, shaped.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/ticker"),
        (reqwest::Method::PUT, "/api/v1/orders"),
        (reqwest::Method::PATCH, "/v1/order"),
        (reqwest::Method::GET, "/v2/nothing"),
    ] {
        let a = send(native(&stack, method.clone(), path, None)).await;
        tally.check(&format!("{method} {path}"), &a);
        assert!(
            matches!(a.status, 404 | 405),
            "{method} {path}: {}",
            a.status
        );
    }
    // Tokens that are not tokens.
    for token in ["", "x", "a.b.c", "eyJ.eyJ.", &"A".repeat(10_000)] {
        let req = stack
            .http
            .get(format!("{}/v1/accounts", stack.gw()))
            .header("authorization", format!("Bearer {token}"));
        let a = send(req).await;
        tally.check(&format!("GET /v1/accounts with token {token:.20}"), &a);
        assert_eq!(a.status, 401);
    }
    // Sign-out with a token that is not one, or a body that is not JSON; last,
    // since a good one would end the session the table uses.
    for (token, body, want) in [
        ("a.b.c", "{}", 401),
        (token.as_str(), "{\"everywhere\": \"yes\"}", 400),
        (token.as_str(), "not json", 400),
    ] {
        let req = native(
            &stack,
            reqwest::Method::POST,
            "/api/v1/auth/logout",
            Some(token),
        )
        .header("content-type", "application/json")
        .body(body);
        let a = send(req).await;
        tally.check(&format!("POST /api/v1/auth/logout {body}"), &a);
        assert_eq!(a.status, want, "logout {token:.10} {body}: {}", a.text);
    }

    assert!(
        tally.failures.is_empty(),
        "{} of {} answers were wrong:\n{}",
        tally.failures.len(),
        tally.requests(),
        tally.failures.join("\n")
    );
    // Thousands of requests, refused for what they hold (400), not for their
    // number (429).
    let refused = tally.statuses.get(&400).copied().unwrap_or(0);
    assert!(
        tally.requests() > 2_000 && refused > tally.requests() / 2,
        "{:?}",
        tally.statuses
    );
    // Still serving.
    let healthy = stack
        .http
        .get(format!("{}/healthz", stack.gw()))
        .send()
        .await
        .unwrap();
    assert_eq!(healthy.status(), 200);
    stack.stop().await;
}
