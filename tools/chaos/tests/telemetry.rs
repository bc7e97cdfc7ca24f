//! Telemetry as it arrives: the exchange's real binaries, each its own process,
//! export their spans over OTLP/gRPC to a real receiver ([`Receiver`]), write
//! JSON logs, and serve Prometheus metrics. Traffic goes through the gateway as
//! a client's would; the test then reads what arrived.
//!
//! Needs the service binaries built beside this test (`scripts/test` builds
//! them) and Postgres's server programs and redis-server (as the chaos run).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use chaos::exchange::{Exchange, Settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use test_support::otlp::{Receiver, Span};

const WAIT: Duration = Duration::from_secs(30);
/// OTLP's span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Where cargo put the service binaries: beside this test's own directory.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/telemetry-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_owned()
}

fn trace<'a>(spans: &'a [Span], trace_id: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

fn services(spans: &[&Span]) -> HashSet<String> {
    spans.iter().map(|s| s.service.clone()).collect()
}

/// Every span's parent is in the trace, and exactly one span (the root) has none.
fn assert_linked(spans: &[&Span]) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    for s in spans {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
            "{}:{} has a parent outside the trace",
            s.service,
            s.name
        );
    }
}

fn parent<'a>(spans: &[&'a Span], child: &Span) -> &'a Span {
    parent_of(spans, child)
        .unwrap_or_else(|| panic!("no parent of {}:{}", child.service, child.name))
}

/// The parent of `child` if exported yet.
fn parent_of<'a>(spans: &[&'a Span], child: &Span) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.span_id == child.parent_span_id)
        .copied()
}

/// The trace as an indented tree, children in start order (for the log).
fn print_tree(spans: &[&Span], parent: &str, depth: usize) {
    let mut children: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    children.sort_by_key(|s| s.start_unix_nano);
    for s in children {
        let text = s.attr("db.query.text").unwrap_or("");
        eprintln!(
            "{:indent$}{} {} {:.60}",
            "",
            s.service,
            s.name,
            text,
            indent = depth * 2
        );
        print_tree(spans, &s.span_id, depth + 1);
    }
}

fn is_sql(s: &Span) -> bool {
    s.attr("db.system.name") == Some("postgresql")
}

async fn json_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The value of `name{labels…}` summed over the series matching `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_logs_and_metrics_arrive_from_every_service() {
    let receiver = Receiver::start().await.unwrap();
    // Not under the target directory: as root, Postgres runs as `postgres`,
    // which may not enter it.
    let dir = std::env::temp_dir().join(format!("telemetry-{}", uuid::Uuid::new_v4().simple()));
    let settings = Settings {
        sim_rate: 20,
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
            // Export within a moment, not the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            // The gateway logs refused requests at debug.
            ("RUST_LOG".into(), "info,gateway=debug".into()),
        ],
    };
    let mut exchange = Exchange::start(&dir, &bin_dir(), &settings).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(240), check(&exchange, &receiver)).await;
    exchange.stop().await;
    outcome.expect("the checks finish within 4 minutes");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn check(exchange: &Exchange, receiver: &Receiver) {
    let http = exchange.http.clone();
    let gw = exchange.gateway.clone();
    let post = reqwest::Method::POST;

    // A user, and a live book to trade against.
    let creds = json!({"email": "otel@example.com", "password": "correct horse battery"});
    let (status, body) = json_call(
        &http,
        post.clone(),
        format!("{gw}/api/v1/auth/register"),
        None,
        Some(creds.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = json_call(
        &http,
        post.clone(),
        format!("{gw}/api/v1/auth/login"),
        None,
        Some(creds),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, b) = json_call(
            &http,
            reqwest::Method::GET,
            format!("{gw}/api/v1/orderbooks/KRW-BTC"),
            None,
            None,
        )
        .await;
        if s == 200 && b["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no KRW-BTC book: {s} {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // --- An order through the gateway is one trace: gateway → order → inventory,
    // with their SQL, every span linked to its parent.
    let (status, placed) = json_call(
        &http,
        post.clone(),
        format!("{gw}/api/v1/orders"),
        Some(&token),
        Some(json!({"market": "KRW-BTC", "side": "bid", "ord_type": "price", "price": "12345"})),
    )
    .await;
    assert_eq!(status, 201, "{placed}");
    let order_trace = receiver
        .wait_for(WAIT, "a trace of the order with its SQL", |spans| {
            let root = spans.iter().find(|s| {
                s.service == "gateway"
                    && s.attr("http.route") == Some("/api/v1/orders")
                    && s.attr("http.response.status_code") == Some("201")
            })?;
            let t = trace(spans, &root.trace_id);
            let sql_of = |svc: &str| t.iter().any(|s| s.service == svc && is_sql(s));
            (sql_of("order") && sql_of("inventory")).then(|| root.trace_id.clone())
        })
        .await
        .unwrap();
    // Spans end (and are exported) a little after the answer: let them arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = receiver.spans();
    let t = trace(&spans, &order_trace);
    let names = services(&t);
    for svc in ["gateway", "order", "inventory"] {
        assert!(
            names.contains(svc),
            "{svc} missing from the order's trace: {names:?}"
        );
    }
    assert_linked(&t);
    // Each service's server span is the child of its caller's client span.
    for (callee, caller) in [("order", "gateway"), ("inventory", "order")] {
        let server = t
            .iter()
            .find(|s| s.service == callee && s.kind == SERVER)
            .unwrap_or_else(|| panic!("no {callee} server span"));
        let client = parent(&t, server);
        assert_eq!(
            (client.service.as_str(), client.kind),
            (caller, CLIENT),
            "{callee}'s server span hangs under {}:{}",
            client.service,
            client.name
        );
    }
    let sql: Vec<_> = t.iter().filter(|s| is_sql(s)).collect();
    for s in &sql {
        let text = s.attr("db.query.text").unwrap_or("");
        assert_eq!(s.kind, CLIENT, "{s:?}");
        assert!(
            !text.is_empty() && !text.contains("12345"),
            "values stay out of the text: {text}"
        );
        assert!(
            s.attr("db.operation.name").is_some_and(|o| !o.is_empty())
                && s.attr("server.address") == Some("127.0.0.1")
                && s.attr("server.port").is_some(),
            "{s:?}"
        );
        assert_eq!(
            parent(&t, s).service,
            s.service,
            "a statement belongs to the service that ran it"
        );
        assert!(s.start_unix_nano <= s.end_unix_nano && s.start_unix_nano > 0);
    }
    eprintln!(
        "order trace: {} spans from {names:?}, {} SQL statements",
        t.len(),
        sql.len()
    );
    print_tree(&t, "", 0);

    // --- A quotation read reaches Redis through market-data. (Tickers are
    // answered from the gateway's memory; a request routed to a version, as a
    // canary's test traffic is, still asks market-data.)
    let status = http
        .get(format!("{gw}/v1/ticker?markets=KRW-BTC"))
        .header("x-canary", "true")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    receiver
        .wait_for(WAIT, "a ticker read with its Redis GET", |spans| {
            let root = spans
                .iter()
                .find(|s| s.service == "gateway" && s.attr("http.route") == Some("/v1/ticker"))?;
            let t = trace(spans, &root.trace_id);
            t.iter()
                .find(|s| {
                    s.service == "market-data"
                        && s.attr("db.system.name") == Some("redis")
                        && s.attr("db.operation.name") == Some("GET")
                        && s.attr("server.address") == Some("127.0.0.1")
                        && parent(&t, s).kind == SERVER
                })
                .map(|_| ())
        })
        .await
        .unwrap();

    // --- Ingest is traced per batch (sampled): the batch, its Redis script;
    // the trades' Postgres write, its SQL.
    receiver
        .wait_for(WAIT, "an ingest batch with its EVALSHA", |spans| {
            let batch = spans
                .iter()
                .find(|s| s.service == "market-data" && s.name == "ingest batch")?;
            assert!(
                batch.parent_span_id.is_empty(),
                "a batch is a trace of its own"
            );
            spans
                .iter()
                .find(|s| {
                    s.parent_span_id == batch.span_id
                        && s.attr("db.operation.name") == Some("EVALSHA")
                })
                .map(|_| ())
        })
        .await
        .unwrap();
    receiver
        .wait_for(WAIT, "a trade write with its SQL", |spans| {
            let write = spans
                .iter()
                .find(|s| s.service == "market-data" && s.name == "store trades")?;
            spans
                .iter()
                .find(|s| s.parent_span_id == write.span_id && is_sql(s))
                .map(|_| ())
        })
        .await
        .unwrap();

    // --- A WebSocket session is a trace reaching market-data's stream.
    // Pinned to a canary: the pin must reach market-data with the context.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut upgrade = format!("{}/websocket/v1", gw.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    upgrade
        .headers_mut()
        .insert("x-canary", "always".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"[{"ticket":"otel"},{"type":"trade","codes":["KRW-BTC"]}]"#,
    ))
    .await
    .unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(matches!(frame, Ok(Some(Ok(_)))), "a trade frame: {frame:?}");
    ws.close(None).await.unwrap();
    drop(ws);
    // The session's trace: its subscription's snapshot read reaches
    // market-data with the pin.
    receiver
        .wait_for(WAIT, "a WebSocket session reaching market-data", |spans| {
            let read = spans.iter().find(|s| {
                s.service == "market-data"
                    && s.kind == SERVER
                    && s.name.ends_with("ListTrades")
                    && spans
                        .iter()
                        .any(|g| g.trace_id == s.trace_id && g.name == "ws.subscribe")
            })?;
            let t = trace(spans, &read.trace_id);
            let client = parent_of(&t, read)?;
            let subscribe = parent_of(&t, client)?;
            let session = parent_of(&t, subscribe)?;
            (client.service == "gateway"
                && subscribe.name == "ws.subscribe"
                && session.name == "ws.session"
                && read.attr("rpc.grpc.request.metadata.x-canary") == Some("always"))
            .then_some(())
        })
        .await
        .unwrap();
    // The live stream is shared by every session routed alike: a trace of its
    // own (`ws.feed`), opened with the pin.
    receiver
        .wait_for(WAIT, "a pinned feed streaming from market-data", |spans| {
            let stream = spans.iter().find(|s| {
                s.service == "market-data"
                    && s.kind == SERVER
                    && s.name.ends_with("StreamTrades")
                    && s.attr("rpc.grpc.request.metadata.x-canary") == Some("always")
            })?;
            let t = trace(spans, &stream.trace_id);
            let feed = parent_of(&t, parent_of(&t, stream)?)?;
            (feed.service == "gateway" && feed.name == "ws.feed").then_some(())
        })
        .await
        .unwrap();

    // --- A refused request's log line carries its trace id.
    let (status, _) = json_call(
        &http,
        post.clone(),
        format!("{gw}/api/v1/orders"),
        Some(&token),
        Some(json!({"market": "KRW-BTC", "side": "bid", "ord_type": "price", "price": "1"})),
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "a 1 KRW order is refused: {status}"
    );
    let log = std::fs::read_to_string(exchange.dir.join("logs/gateway.log")).unwrap();
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "request refused" && l["route"] == "/api/v1/orders")
        .expect("the gateway logged the refused order");
    let logged = line["trace_id"]
        .as_str()
        .expect("with a trace id")
        .to_owned();
    receiver
        .wait_for(WAIT, "the refused order's span", |spans| {
            spans
                .iter()
                .find(|s| {
                    s.trace_id == logged
                        && s.attr("http.route") == Some("/api/v1/orders")
                        && s.attr("http.response.status_code") == Some(&status.to_string())
                })
                .map(|_| ())
        })
        .await
        .unwrap();

    // --- Every service is scraped; the RED and business series moved.
    let mut scraped = HashMap::new();
    for svc in &exchange.services {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", svc.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        scraped.insert(svc.name, text);
    }
    let m = |svc: &str, name: &str, labels: &[(&str, &str)]| metric(&scraped[svc], name, labels);
    assert!(
        m(
            "gateway",
            "http_requests_total",
            &[("route", "/api/v1/orders"), ("status", "201")]
        ) >= 1.0
    );
    assert!(
        m(
            "gateway",
            "http_request_duration_seconds_count",
            &[("route", "/api/v1/orders")]
        ) >= 2.0
    );
    assert!(
        m(
            "order",
            "grpc_server_handled_total",
            &[("grpc_method", "PlaceOrder"), ("grpc_code", "OK")]
        ) >= 1.0
    );
    assert!(
        m(
            "inventory",
            "grpc_server_handled_total",
            &[("grpc_method", "Settle")]
        ) >= 1.0
    );
    assert!(
        m(
            "order",
            "order_placed_total",
            &[("ord_type", "price"), ("side", "bid"), ("state", "done")]
        ) >= 1.0
    );
    assert!(m("order", "order_rejected_total", &[]) >= 1.0);
    assert!(
        m(
            "inventory",
            "inventory_reservations_total",
            &[("result", "ok")]
        ) >= 1.0
    );
    assert!(m("inventory", "inventory_fills_applied_total", &[]) >= 1.0);
    assert!(m("market-data", "market_data_events_total", &[]) >= 1.0);
    assert!(m("ingestor", "ingestor_events_total", &[]) >= 1.0);
    for (svc, text) in &scraped {
        assert!(text.contains("service_info{"), "{svc} has no service_info");
    }
    // Every series the dashboards and alert rules query from the services is
    // one they export (helm/exchange/dashboards/METRICS.txt lists them; the
    // offline chart checks keep that list exact).
    let exported: HashSet<&str> = scraped
        .values()
        .flat_map(|text| text.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let listed = include_str!("../../../helm/exchange/dashboards/METRICS.txt");
    let missing: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|name| !exported.contains(name))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    for svc in ["order", "inventory", "user", "market-data"] {
        assert!(
            m(svc, "db_client_connection_count", &[]) >= 1.0
                && m(svc, "db_client_connection_max", &[]) >= 1.0,
            "{svc} reports its database pool"
        );
    }
}
