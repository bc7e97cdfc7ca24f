//! docs/UPBIT-COMPAT.md kept honest: every Upbit route the router serves has
//! a row, and every row answers as its status says, against a running stack.

use std::collections::BTreeSet;

use test_support::TestDb;

use crate::stack::{Options, Stack};

const DOC: &str = include_str!("../../../../docs/UPBIT-COMPAT.md");
const ROUTER: &str = include_str!("../../src/http.rs");

/// `(method, path, status)` of every endpoint row of the document.
fn rows() -> Vec<(String, String, String)> {
    DOC.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let endpoint = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let (method, path) = endpoint.split_once(' ')?;
            if !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) {
                return None;
            }
            let status = cells.get(2)?.to_string();
            Some((method.to_owned(), path.to_owned(), status))
        })
        .collect()
}

/// `(method, path)` of every route under `/v1` or `/websocket` in the router.
fn routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for chunk in ROUTER.split(".route(").skip(1) {
        let chunk = chunk
            .split(".route_layer")
            .next()
            .unwrap_or(chunk)
            .split("\n        .")
            .next()
            .unwrap_or(chunk);
        let Some(path) = chunk.split('"').nth(1) else {
            continue;
        };
        if !(path.starts_with("/v1") || path.starts_with("/websocket")) {
            continue;
        }
        for method in ["get", "post", "delete", "put", "patch"] {
            let call = format!("{method}(");
            let found = chunk.match_indices(&call).any(|(i, _)| {
                i == 0
                    || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && chunk.as_bytes()[i - 1] != b'_'
            });
            if found {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_routed_upbit_endpoint_has_a_row_and_no_row_claims_an_unrouted_one() {
    let rows = rows();
    let routes = routes();
    assert!(routes.len() > 40, "the router parse found {routes:?}");
    let documented: BTreeSet<(String, String)> = rows
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let missing: Vec<_> = routes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routed but not in docs/UPBIT-COMPAT.md: {missing:?}"
    );
    for (method, path, status) in &rows {
        assert!(
            ["supported", "paper", "no"].contains(&status.as_str()),
            "{method} {path}: status {status}"
        );
        let routed = routes.contains(&(method.clone(), path.clone()));
        assert_eq!(
            routed,
            status != "no",
            "{method} {path} is marked {status} but is {}routed",
            if routed { "" } else { "not " }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_answers_as_its_status_says() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let mut wrong = Vec::new();
    for (method, path, status) in rows() {
        let url = format!("{}{}", stack.gw(), path.replace("{unit}", "1"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = stack
            .http
            .request(method.clone(), url)
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let unrouted = code == 404 && body["error"]["name"] == "not_found";
        if unrouted != (status == "no") {
            wrong.push(format!("{method} {path} ({status}): {code} {body}"));
        }
        if code >= 500 {
            wrong.push(format!("{method} {path}: {code} {body}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    stack.stop().await;
}

/// JSON types as Upbit's documentation gives them.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    Num,
    Bool,
    Obj,
    Arr,
    /// A string, or null when the value does not apply.
    StrOrNull,
}

fn is(v: &serde_json::Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => v.is_string(),
        Ty::Num => v.is_number(),
        Ty::Bool => v.is_boolean(),
        Ty::Obj => v.is_object(),
        Ty::Arr => v.is_array(),
        Ty::StrOrNull => v.is_string() || v.is_null(),
    }
}

use Ty::*;

const TICKER: &[(&str, Ty)] = &[
    ("market", Str),
    ("trade_date", Str),
    ("trade_time", Str),
    ("trade_date_kst", Str),
    ("trade_time_kst", Str),
    ("trade_timestamp", Num),
    ("opening_price", Num),
    ("high_price", Num),
    ("low_price", Num),
    ("trade_price", Num),
    ("prev_closing_price", Num),
    ("change", Str),
    ("change_price", Num),
    ("change_rate", Num),
    ("signed_change_price", Num),
    ("signed_change_rate", Num),
    ("trade_volume", Num),
    ("acc_trade_price", Num),
    ("acc_trade_price_24h", Num),
    ("acc_trade_volume", Num),
    ("acc_trade_volume_24h", Num),
    ("highest_52_week_price", Num),
    ("highest_52_week_date", Str),
    ("lowest_52_week_price", Num),
    ("lowest_52_week_date", Str),
    ("timestamp", Num),
];

const CANDLE: &[(&str, Ty)] = &[
    ("market", Str),
    ("candle_date_time_utc", Str),
    ("candle_date_time_kst", Str),
    ("opening_price", Num),
    ("high_price", Num),
    ("low_price", Num),
    ("trade_price", Num),
    ("timestamp", Num),
    ("candle_acc_trade_price", Num),
    ("candle_acc_trade_volume", Num),
];

const ORDER: &[(&str, Ty)] = &[
    ("uuid", Str),
    ("side", Str),
    ("ord_type", Str),
    ("price", StrOrNull),
    ("state", Str),
    ("market", Str),
    ("created_at", Str),
    ("volume", StrOrNull),
    ("remaining_volume", StrOrNull),
    ("reserved_fee", Str),
    ("remaining_fee", Str),
    ("paid_fee", Str),
    ("locked", Str),
    ("executed_volume", Str),
    ("executed_funds", Str),
    ("trades_count", Num),
    ("prevented_volume", Str),
    ("prevented_locked", Str),
];

/// What each element of an answer (an array, or the one object) lacks or
/// has in another type than `fields` says.
fn mismatches(what: &str, body: &serde_json::Value, fields: &[(&str, Ty)]) -> Vec<String> {
    let items: Vec<&serde_json::Value> = match body {
        serde_json::Value::Array(items) if !items.is_empty() => items.iter().collect(),
        serde_json::Value::Object(_) => vec![body],
        _ => return vec![format!("{what}: nothing to check in {body}")],
    };
    let mut out = Vec::new();
    for item in items {
        for (field, ty) in fields {
            match item.get(*field) {
                Some(v) if is(v, *ty) => {}
                Some(v) => out.push(format!("{what}.{field}: {v} is not {ty:?}")),
                None => out.push(format!("{what}.{field}: missing")),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_have_upbits_fields_in_upbits_types() {
    let db = TestDb::create().await.unwrap();
    let stack = crate::api_keys::stack_trading_eth(&db).await;
    let get = |path: String| {
        let stack = &stack;
        async move {
            let resp = stack
                .http
                .get(format!("{}{path}", stack.gw()))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let with = |extra: &[(&'static str, Ty)], base: &[(&'static str, Ty)]| {
        base.iter().chain(extra).copied().collect::<Vec<_>>()
    };
    let m = "market=KRW-ETH";
    let checks: Vec<(String, Vec<(&str, Ty)>)> = vec![
        (
            "/v1/market/all".into(),
            vec![("market", Str), ("korean_name", Str), ("english_name", Str)],
        ),
        (
            "/v1/market/all?is_details=true".into(),
            vec![("market", Str), ("market_event", Obj)],
        ),
        ("/v1/ticker?markets=KRW-ETH".into(), TICKER.to_vec()),
        (
            "/v1/ticker/all?quote_currencies=KRW".into(),
            TICKER.to_vec(),
        ),
        (
            format!("/v1/trades/ticks?{m}"),
            vec![
                ("market", Str),
                ("trade_date_utc", Str),
                ("trade_time_utc", Str),
                ("timestamp", Num),
                ("trade_price", Num),
                ("trade_volume", Num),
                ("prev_closing_price", Num),
                ("change_price", Num),
                ("ask_bid", Str),
                ("sequential_id", Num),
            ],
        ),
        (
            "/v1/orderbook?markets=KRW-ETH".into(),
            vec![
                ("market", Str),
                ("timestamp", Num),
                ("total_ask_size", Num),
                ("total_bid_size", Num),
                ("orderbook_units", Arr),
                ("level", Num),
            ],
        ),
        (
            "/v1/orderbook/instruments?markets=KRW-ETH".into(),
            vec![
                ("market", Str),
                ("quote_currency", Str),
                ("tick_size", Str),
                ("supported_levels", Arr),
            ],
        ),
        (format!("/v1/candles/seconds?{m}"), CANDLE.to_vec()),
        (
            format!("/v1/candles/minutes/1?{m}"),
            with(&[("unit", Num)], CANDLE),
        ),
        (
            format!("/v1/candles/days?{m}"),
            with(
                &[
                    ("prev_closing_price", Num),
                    ("change_price", Num),
                    ("change_rate", Num),
                ],
                CANDLE,
            ),
        ),
        (
            format!("/v1/candles/weeks?{m}"),
            with(&[("first_day_of_period", Str)], CANDLE),
        ),
        (
            format!("/v1/candles/months?{m}"),
            with(&[("first_day_of_period", Str)], CANDLE),
        ),
        (
            format!("/v1/candles/years?{m}"),
            with(&[("first_day_of_period", Str)], CANDLE),
        ),
    ];
    let mut wrong = Vec::new();
    for (path, fields) in &checks {
        // Trades reach Postgres (trades, candles) a moment after Redis (ticker).
        let answer = test_support::eventually(
            std::time::Duration::from_secs(15),
            &format!("an answer with data from {path}"),
            || async {
                let (status, body) = get(path.clone()).await;
                let empty = body.as_array().is_some_and(Vec::is_empty);
                (status == 200 && !empty).then_some(body)
            },
        )
        .await;
        match answer {
            Ok(body) => wrong.extend(mismatches(path, &body, fields)),
            Err(e) => wrong.push(format!("{path}: {e}")),
        }
    }
    // Errors: Upbit's body, a name and a message, whatever the status.
    for path in [
        "/v1/ticker?markets=KRW-NOPE",
        "/v1/candles/minutes/7?market=KRW-ETH",
        "/v1/orders/chance?market=KRW-ETH",
    ] {
        let (status, body) = get(path.into()).await;
        let error = &body["error"];
        let named = error["name"].is_string() || error["name"].is_u64();
        if !(status >= 400 && named && error["message"].is_string()) {
            wrong.push(format!(
                "{path}: {status} {body} is not Upbit's error shape"
            ));
        }
    }

    // Private answers, signed with an API key.
    let client = stack.client("shape@example.com").await;
    let (_, made) = client
        .post(
            "/api/v1/api-keys",
            serde_json::json!({"password": crate::trading::PASSWORD}),
        )
        .await;
    let key = crate::api_keys::key_of(&made);
    let signed = |method: reqwest::Method, path: &'static str, query: &'static str| {
        let (stack, key) = (&stack, &key);
        async move { crate::api_keys::signed(stack, key, method, path, query).await }
    };
    let (_, accounts) = signed(reqwest::Method::GET, "/v1/accounts", "").await;
    wrong.extend(mismatches(
        "accounts",
        &accounts,
        &[
            ("currency", Str),
            ("balance", Str),
            ("locked", Str),
            ("avg_buy_price", Str),
            ("avg_buy_price_modified", Bool),
            ("unit_currency", Str),
        ],
    ));
    let (_, chance) = signed(reqwest::Method::GET, "/v1/orders/chance", "market=KRW-ETH").await;
    wrong.extend(mismatches(
        "chance",
        &chance,
        &[
            ("bid_fee", Str),
            ("ask_fee", Str),
            ("maker_bid_fee", Str),
            ("maker_ask_fee", Str),
            ("market", Obj),
            ("bid_account", Obj),
            ("ask_account", Obj),
        ],
    ));
    let (status, order) = signed(
        reqwest::Method::POST,
        "/v1/orders",
        "market=KRW-ETH&side=bid&volume=0.01&price=3000000&ord_type=limit",
    )
    .await;
    if status != 201 {
        wrong.push(format!("POST /v1/orders: {status} {order}"));
    }
    wrong.extend(mismatches("order", &order, ORDER));
    let (_, open) = signed(reqwest::Method::GET, "/v1/orders/open", "").await;
    wrong.extend(mismatches("orders/open", &open, ORDER));
    assert!(wrong.is_empty(), "{wrong:#?}");
    stack.stop().await;
}
