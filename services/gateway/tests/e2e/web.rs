//! The web page in real browsers: headless Chromium and Firefox, both driven by
//! puppeteer-core (tools/browser/check.mjs), against a running stack with
//! market-data as v1 and v2 side by side.

use test_support::TestDb;

use crate::market::{wait_market_event, wait_rest_price};
use crate::stack::{Options, Stack, run_checker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_live_in_chromium_and_firefox() {
    // scripts/test installs the browsers and puppeteer-core and names them.
    let (Ok(modules), Ok(chromium), Ok(firefox)) = (
        std::env::var("BROWSER_NODE_MODULES"),
        std::env::var("CHROMIUM"),
        std::env::var("FIREFOX"),
    ) else {
        assert!(
            std::env::var("CI").is_err(),
            "BROWSER_NODE_MODULES, CHROMIUM and FIREFOX must be set in CI (scripts/test sets them)"
        );
        eprintln!(
            "skipped: BROWSER_NODE_MODULES, CHROMIUM or FIREFOX is not set (scripts/test sets them)"
        );
        return;
    };
    let db = TestDb::create().await.unwrap();
    // The traffic panel must show the split between the two versions.
    let stack = Stack::start(
        &db,
        Options {
            market_data_v2: true,
            ..Options::default()
        },
    )
    .await;
    wait_rest_price(&stack, "KRW-ETH", "5200000").await;
    // The board badges Upbit's designations.
    let designated = serde_json::json!({"warning": true, "caution": {"PRICE_FLUCTUATIONS": true}});
    let mut body = designated.clone();
    body["market"] = "KRW-XRP".into();
    stack.sim_post_json("/sim/market-event", body).await;
    let event: upbit::market::MarketEvent = serde_json::from_value(designated).unwrap();
    let event = serde_json::to_value(event).unwrap();
    let shots = concat!(env!("CARGO_TARGET_TMPDIR"), "/screenshots");
    std::fs::create_dir_all(shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/browser/check.mjs");
    for (browser, path) in [("chromium", &chromium), ("firefox", &firefox)] {
        // Each checker lifts the designation and sets it again before it ends.
        wait_market_event(&stack, "KRW-XRP", &event).await;
        let mut checker = tokio::process::Command::new("node");
        checker
            .arg(script)
            .env("BROWSER_NODE_MODULES", &modules)
            .env("BROWSER", browser)
            .env("BROWSER_PATH", path)
            .env("BASE_URL", stack.gw())
            .env("SIM_ADMIN", format!("http://{}", stack.sim_admin))
            .env("SCREENSHOTS", shots)
            .env("EXPECT_SERVED_BY", "market-data/v1/ market-data/v2/");
        let out = run_checker(checker, "all browser checks passed").await;
        eprintln!("{browser}:\n{out}");
    }
    eprintln!("screenshots in {shots}");
    stack.stop().await;
}
