// The exchange's page in a real browser (headless Chromium or Firefox), against a
// running stack.
//
// Usage: BASE_URL=http://127.0.0.1:PORT SIM_ADMIN=http://127.0.0.1:PORT \
//        BROWSER_NODE_MODULES=dir/node_modules BROWSER=chromium|firefox \
//        BROWSER_PATH=/usr/bin/chromium SCREENSHOTS=dir \
//        [EXPECT_SERVED_BY="market-data/v1/ market-data/v2/"] node check.mjs
// Prints one line per step; exits non-zero at the first that fails. puppeteer-core
// drives both browsers (Chromium over CDP, Firefox over WebDriver BiDi).
import { createRequire } from "node:module";

// puppeteer-core is installed outside the repository (scripts/test).
const require = createRequire(`${process.env.BROWSER_NODE_MODULES}/`);
const puppeteer = require("puppeteer-core");

const BASE = process.env.BASE_URL.replace(/\/$/, "");
const SIM = process.env.SIM_ADMIN.replace(/\/$/, "");
const BROWSER = process.env.BROWSER || "chromium";
const SHOTS = process.env.SCREENSHOTS || ".";
// Each browser's run trades at its own prices, so one never sees the other's.
const BUMP = BROWSER === "firefox" ? 1000 : 0;

function step(name, ok, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${name} ${detail}`.trimEnd());
  if (!ok) process.exit(1);
}

async function simPost(path, body) {
  const resp = await fetch(`${SIM}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!resp.ok) throw new Error(`sim ${path}: ${resp.status} ${await resp.text()}`);
}

const simTrade = (market, price, volume, ask_bid) => simPost("/sim/trade", { market, price, volume, ask_bid });

// The badges of a market's row on the board, as "text:title|…".
const badgesOf = (page, market) => page.$$eval(`tr[data-market="${market}"] .badge`,
  (bs) => bs.map((b) => `${b.textContent}:${b.title}`).join("|"));

// Reads the market list again (as the page does every minute) until the row's
// badges are `want`: the change passes the ingestor and two caches on the way.
async function waitBadges(page, market, want) {
  await page.waitForFunction(async (market, want) => {
    await window.exchange.refreshMarkets();
    const shown = [...document.querySelectorAll(`tr[data-market="${market}"] .badge`)];
    return shown.map((b) => `${b.textContent}:${b.title}`).join("|") === want;
  }, { timeout: 20000, polling: 500 }, market, want);
}

// A WebSocket subscription is not acknowledged, so the first trade after a new one may
// pass before the gateway's stream is open: trade again until the page shows it.
async function tradeUntilShown(page, trade, shown, arg, timeout = 15000) {
  const until = Date.now() + timeout;
  for (;;) {
    await simTrade(...trade);
    try {
      return await page.waitForFunction(shown, { timeout: 2000 }, arg);
    } catch (e) {
      if (Date.now() > until) throw e;
    }
  }
}

const browser = await puppeteer.launch({
  browser: BROWSER === "firefox" ? "firefox" : "chrome",
  executablePath: process.env.BROWSER_PATH,
  headless: true,
  args: BROWSER === "firefox" ? [] : ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
const text = (sel) => page.$eval(sel, (e) => e.textContent);
const fill = (sel, value) => page.locator(sel).fill(value);
// Locators wait for the element and retry when the page re-renders it meanwhile.
const click = (sel) => page.locator(sel).click();
try {
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const resp = await page.goto(`${BASE}/`);
  step("the page loads", resp.ok(), `${resp.status()}`);
  const csp = resp.headers()["content-security-policy"] || "";
  step("it forbids anything from outside", csp.includes("default-src 'none'") && csp.includes("connect-src 'self'"), csp);

  await page.waitForFunction(() => window.exchange?.connection === "live", { timeout: 15000 });
  step("the WebSocket is live", true, await text("#conn"));
  await page.waitForFunction(() => Object.keys(window.exchange.prices).length >= 2, { timeout: 15000 });
  const rows = await page.$$eval("#board tbody tr", (trs) => trs.map((tr) => tr.querySelector(".price").textContent));
  step("the ticker board shows prices", rows.filter((p) => p !== "—").length >= 2, JSON.stringify(rows));

  // The test designated KRW-XRP (Upbit's warning and a caution) before the page loaded.
  const designated = "유의:Investment warning|주의:Caution: PRICE_FLUCTUATIONS";
  const badges = await badgesOf(page, "KRW-XRP");
  step("Upbit's designations are badged", badges === designated, badges);
  const plain = await badgesOf(page, "KRW-BTC");
  step("and only those", plain === "", `${plain} on KRW-BTC`);

  // Upbit lifts the designations while the page is open, then puts them back
  // (as the test set them, for the next browser).
  await simPost("/sim/market-event", { market: "KRW-XRP", warning: false, caution: {} });
  await waitBadges(page, "KRW-XRP", "");
  step("a lifted designation leaves the open page", true);
  await simPost("/sim/market-event", { market: "KRW-XRP", warning: true, caution: { PRICE_FLUCTUATIONS: true } });
  await waitBadges(page, "KRW-XRP", designated);
  step("and a new one appears on it", await badgesOf(page, "KRW-XRP") === designated);

  await page.waitForFunction(() => window.exchange.candles > 0, { timeout: 15000 });
  const before = await page.evaluate(() => window.exchange.lastCandle);
  step("the chart shows candles", before !== null, JSON.stringify(before));

  // A live trade at a new price: the board and the chart's last candle follow it.
  const btc = 151357000 + BUMP;
  const btcText = btc.toLocaleString("en-US");
  await simTrade("KRW-BTC", String(btc), "0.05", "BID");
  await page.waitForFunction((p) => window.exchange.prices["KRW-BTC"] === p, { timeout: 15000 }, btc);
  const shown = await text('tr[data-market="KRW-BTC"] .price');
  step("a live trade moves the board", shown === btcText, shown);
  await page.waitForFunction((p) => window.exchange.lastCandle?.close === p, { timeout: 15000 }, btc);
  const after = await page.evaluate(() => window.exchange.lastCandle);
  step("and the chart's last candle", after.close === btc, JSON.stringify(after));
  await page.waitForFunction((t) => document.querySelector("#trades tbody tr td:nth-child(2)")?.textContent === t,
    { timeout: 15000 }, btcText);
  step("the trade is in the recent trades", true);
  const book = await page.$$eval("#book tbody tr", (trs) => trs.map((tr) => tr.className));
  step("the orderbook shows asks over bids", book.length >= 2 && book[0] === "ask" && book[book.length - 1] === "bid",
       `${book.length} rows`);
  await page.screenshot({ path: `${SHOTS}/${BROWSER}-board-and-chart.png`, fullPage: true });

  // Another market, another interval: candles reload, the live candle follows.
  await click('tr[data-market="KRW-ETH"]');
  await click('.intervals button[data-interval="1s"]');
  const eth = 5213000 + BUMP;
  await tradeUntilShown(page, ["KRW-ETH", String(eth), "0.5", "ASK"], (p) => window.exchange.selected === "KRW-ETH"
    && window.exchange.lastCandle?.close === p, eth);
  step("1-second candles of another market move live", true, await text("#market-name"));

  // Sign up, buy at market, watch the balance change; rest a limit order and cancel it.
  await click('tr[data-market="KRW-BTC"]');
  await fill("#email", `browser-${Date.now()}@example.com`);
  await fill("#password", "correct horse battery");
  await click("#signup");
  await page.waitForSelector('#balances tr[data-currency="KRW"]', { timeout: 15000 });
  const krw = async () => text('#balances tr[data-currency="KRW"] td:nth-child(2)');
  step("sign-up shows the paper KRW", (await krw()) === "10,000,000", await krw());
  step("the sign-in form gives way to the account", await page.$eval("#auth", (e) => e.hidden));
  await page.select("#type", "market");
  await fill("#price", "1000000");
  await click("#place");
  await page.waitForSelector('#balances tr[data-currency="BTC"]', { timeout: 15000 });
  const spent = await krw();
  step("a market buy moves the balances on screen", spent !== "10,000,000"
    && Number(spent.replaceAll(",", "")) < 9000000 + 1, `KRW ${spent}; ${await text("#order-note")}`);
  await page.waitForSelector("#closed tbody tr", { timeout: 15000 });
  const done = await page.$$eval("#closed tbody tr .state", (tds) => tds.map((td) => td.textContent));
  step("the filled order is listed as done", done.includes("done"), JSON.stringify(done));
  await page.select("#type", "limit");
  await fill("#price", "100000001");
  await fill("#amount", "0.001");
  await click("#place");
  await page.waitForFunction(() => document.querySelector("#order-note").textContent.includes("multiple of"),
    { timeout: 10000 });
  step("an off-tick price is refused before it is sent", true, await text("#order-note"));
  await fill("#price", "100000000");
  await click("#place");
  await page.waitForSelector("#open tbody tr", { timeout: 15000 });
  step("the limit order is open", (await page.$$("#open tbody tr")).length === 1);
  await page.screenshot({ path: `${SHOTS}/${BROWSER}-trading.png`, fullPage: true });
  await click("#open tbody tr button");
  await page.waitForFunction(() => document.querySelectorAll("#open tbody tr").length === 0, { timeout: 15000 });
  step("cancel removes it", true, await text("#order-note"));
  await page.waitForFunction(() => [...document.querySelectorAll("#closed tbody tr .state")]
    .some((td) => td.textContent === "cancel"), { timeout: 15000 });
  step("and lists it as cancelled", true);

  // A resting bid filled by the market, with nobody clicking: the private stream
  // (myOrder, myAsset) tells the page, which polls only while that stream is down.
  await page.waitForFunction(() => window.exchange.mine.live, { timeout: 15000 });
  await click("#place");
  await page.waitForSelector("#open tbody tr", { timeout: 15000 });
  const heard = await page.evaluate(() => window.exchange.mine.events);
  step("the private stream announced the order", heard > 0, `${heard} events`);
  const doneBefore = await page.$$eval("#closed tbody tr .state", (tds) => tds.filter((td) => td.textContent === "done").length);
  await simTrade("KRW-BTC", "99000000", "0.01", "ASK");
  await page.waitForFunction((n) => document.querySelectorAll("#open tbody tr").length === 0
    && [...document.querySelectorAll("#closed tbody tr .state")].filter((td) => td.textContent === "done").length > n,
    { timeout: 8000 }, doneBefore);
  const events = await page.evaluate(() => window.exchange.mine.events);
  step("a resting order filled by the market shows as done by itself", events > heard, `${events} events`);

  // The traffic panel: who answered, the split, latency.
  await fill("#traffic-rate", "20");
  await click("#traffic-toggle");
  await page.waitForFunction(() => window.exchange.traffic.sent >= 15, { timeout: 15000 });
  await click("#traffic-toggle");
  await new Promise((r) => setTimeout(r, 700));
  const split = await page.$$eval("#traffic-split tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  step("the traffic panel shows who answered", split.length >= 1 && split[0][0].startsWith("gateway/")
    && split[0][0].includes("market-data/") && split.reduce((a, r) => a + Number(r[1]), 0) >= 15, JSON.stringify(split));
  // Each version named in EXPECT_SERVED_BY answered some of them.
  for (const who of (process.env.EXPECT_SERVED_BY || "").split(" ").filter(Boolean)) {
    const share = split.filter((r) => r[0].includes(who)).reduce((a, r) => a + Number(r[1]), 0);
    step(`the split shows ${who}`, share > 0, JSON.stringify(split));
  }
  const stats = await text("#traffic-stats");
  step("with latency percentiles and the error rate", /p99 [0-9.]+ ms/.test(stats) && stats.includes("errors 0.0%"), stats);
  await page.screenshot({ path: `${SHOTS}/${BROWSER}-traffic.png`, fullPage: true });

  // A phone's width.
  await page.setViewport({ width: 390, height: 844 });
  await page.screenshot({ path: `${SHOTS}/${BROWSER}-phone.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  step("it fits a phone's width", overflow <= 1, `${overflow}px wider`);
  step("no script errors", problems.length === 0, problems.join("; "));
} finally {
  await browser.close();
}
console.log("all browser checks passed");
