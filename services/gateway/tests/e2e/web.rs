//! The web page in a real browser: headless Chromium driven by playwright-core
//! (tools/browser/check.mjs) against a running stack.

use test_support::TestDb;

use crate::market::wait_rest_price;
use crate::stack::{Options, Stack, run_checker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_prices_and_candles_in_a_browser() {
    // scripts/test installs Chromium and playwright-core and names them.
    let Ok(modules) = std::env::var("BROWSER_NODE_MODULES") else {
        assert!(
            std::env::var("CI").is_err(),
            "BROWSER_NODE_MODULES must name playwright-core's node_modules in CI"
        );
        eprintln!("skipped: BROWSER_NODE_MODULES is not set (scripts/test sets it)");
        return;
    };
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    wait_rest_price(&stack, "KRW-ETH", "5200000").await;
    let shots = concat!(env!("CARGO_TARGET_TMPDIR"), "/screenshots");
    std::fs::create_dir_all(shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/browser/check.mjs");
    let mut checker = tokio::process::Command::new("node");
    checker
        .arg(script)
        .env("BROWSER_NODE_MODULES", &modules)
        .env("BASE_URL", stack.gw())
        .env("SIM_ADMIN", format!("http://{}", stack.sim_admin))
        .env(
            "CHROMIUM",
            std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .env("SCREENSHOTS", shots);
    let out = run_checker(checker, "all browser checks passed").await;
    eprintln!("{out}screenshots in {shots}");
    stack.stop().await;
}
