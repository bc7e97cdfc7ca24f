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
