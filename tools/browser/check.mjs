// The exchange's page in headless Chromium, against a running stack.
//
// Usage: BASE_URL=http://127.0.0.1:PORT SIM_ADMIN=http://127.0.0.1:PORT \
//        BROWSER_NODE_MODULES=dir/node_modules CHROMIUM=/usr/bin/chromium \
//        SCREENSHOTS=dir node check.mjs
// Prints one line per step; exits non-zero at the first that fails.
import { createRequire } from "node:module";

// playwright-core is installed outside the repository (scripts/test).
const require = createRequire(`${process.env.BROWSER_NODE_MODULES}/`);
const { chromium } = require("playwright-core");

const BASE = process.env.BASE_URL.replace(/\/$/, "");
const SIM = process.env.SIM_ADMIN.replace(/\/$/, "");
const SHOTS = process.env.SCREENSHOTS || ".";

function step(name, ok, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${name} ${detail}`.trimEnd());
  if (!ok) process.exit(1);
}

async function simTrade(market, price, volume, side) {
  const resp = await fetch(`${SIM}/sim/trade`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ market, price, volume, ask_bid: side }),
  });
  if (!resp.ok) throw new Error(`sim trade: ${resp.status} ${await resp.text()}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  const resp = await page.goto(`${BASE}/`);
  step("the page loads", resp.ok(), `${resp.status()}`);
  const csp = resp.headers()["content-security-policy"] || "";
  step("it forbids anything from outside", csp.includes("default-src 'none'") && csp.includes("connect-src 'self'"), csp);

  await page.waitForFunction(() => window.exchange?.connection === "live", null, { timeout: 15000 });
  step("the WebSocket is live", true, await page.textContent("#conn"));
  await page.waitForFunction(() => Object.keys(window.exchange.prices).length >= 2, null, { timeout: 15000 });
  const rows = await page.$$eval("#board tbody tr", (trs) => trs.map((tr) => tr.querySelector(".price").textContent));
  step("the ticker board shows prices", rows.filter((p) => p !== "—").length >= 2, JSON.stringify(rows));

  await page.waitForFunction(() => window.exchange.candles > 0, null, { timeout: 15000 });
  const before = await page.evaluate(() => window.exchange.lastCandle);
  step("the chart shows candles", before !== null, JSON.stringify(before));

  // A live trade at a new price: the board and the chart's last candle follow it.
  await simTrade("KRW-BTC", "151357000", "0.05", "BID");
  await page.waitForFunction(() => window.exchange.prices["KRW-BTC"] === 151357000, null, { timeout: 15000 });
  const price = await page.textContent('tr[data-market="KRW-BTC"] .price');
  step("a live trade moves the board", price === "151,357,000", price);
  await page.waitForFunction(() => window.exchange.lastCandle?.close === 151357000, null, { timeout: 15000 });
  const after = await page.evaluate(() => window.exchange.lastCandle);
  step("and the chart's last candle", after.close === 151357000, JSON.stringify(after));
  await page.waitForFunction(() => document.querySelector("#trades tbody tr td:nth-child(2)")?.textContent === "151,357,000",
    null, { timeout: 15000 });
  step("the trade is in the recent trades", true);
  const book = await page.$$eval("#book tbody tr", (trs) => trs.map((tr) => tr.className));
  step("the orderbook shows asks over bids", book.length >= 2 && book[0] === "ask" && book[book.length - 1] === "bid",
       `${book.length} rows`);
  await page.screenshot({ path: `${SHOTS}/board-and-chart.png`, fullPage: true });

  // Another market, another interval: candles reload, the live candle follows.
  await page.click('tr[data-market="KRW-ETH"]');
  await page.click('.intervals button[data-interval="1s"]');
  await simTrade("KRW-ETH", "5213000", "0.5", "ASK");
  await page.waitForFunction(() => window.exchange.selected === "KRW-ETH"
    && window.exchange.lastCandle?.close === 5213000, null, { timeout: 15000 });
  step("1-second candles of another market move live", true, await page.textContent("#market-name"));

  // Sign up, buy at market, watch the balance change; rest a limit order and cancel it.
  await page.click('tr[data-market="KRW-BTC"]');
  await page.fill("#email", `browser-${Date.now()}@example.com`);
  await page.fill("#password", "correct horse battery");
  await page.click("#signup");
  await page.waitForSelector('#balances tr[data-currency="KRW"]', { timeout: 15000 });
  const krw = async () => page.textContent('#balances tr[data-currency="KRW"] td:nth-child(2)');
  step("sign-up shows the paper KRW", (await krw()) === "10,000,000", await krw());
  step("the sign-in form gives way to the account", await page.isHidden("#auth"));
  await page.selectOption("#type", "market");
  await page.fill("#price", "1000000");
  await page.click("#place");
  await page.waitForSelector('#balances tr[data-currency="BTC"]', { timeout: 15000 });
  const spent = await krw();
  step("a market buy moves the balances on screen", spent !== "10,000,000"
    && Number(spent.replaceAll(",", "")) < 9000000 + 1, `KRW ${spent}; ${await page.textContent("#order-note")}`);
  await page.waitForSelector("#closed tbody tr", { timeout: 15000 });
  const done = await page.$$eval("#closed tbody tr .state", (tds) => tds.map((td) => td.textContent));
  step("the filled order is listed as done", done.includes("done"), JSON.stringify(done));
  await page.selectOption("#type", "limit");
  await page.fill("#price", "100000001");
  await page.fill("#amount", "0.001");
  await page.click("#place");
  await page.waitForFunction(() => document.querySelector("#order-note").textContent.includes("multiple of"),
    null, { timeout: 10000 });
  step("an off-tick price is refused before it is sent", true, await page.textContent("#order-note"));
  await page.fill("#price", "100000000");
  await page.click("#place");
  await page.waitForSelector("#open tbody tr", { timeout: 15000 });
  step("the limit order is open", (await page.$$("#open tbody tr")).length === 1);
  await page.screenshot({ path: `${SHOTS}/trading.png`, fullPage: true });
  await page.click("#open tbody tr button");
  await page.waitForFunction(() => document.querySelectorAll("#open tbody tr").length === 0, null, { timeout: 15000 });
  step("cancel removes it", true, await page.textContent("#order-note"));
  await page.waitForFunction(() => [...document.querySelectorAll("#closed tbody tr .state")]
    .some((td) => td.textContent === "cancel"), null, { timeout: 15000 });
  step("and lists it as cancelled", true);

  // The traffic panel: who answered, the split, latency.
  await page.fill("#traffic-rate", "20");
  await page.click("#traffic-toggle");
  await page.waitForFunction(() => window.exchange.traffic.sent >= 15, null, { timeout: 15000 });
  await page.click("#traffic-toggle");
  await page.waitForTimeout(700);
  const split = await page.$$eval("#traffic-split tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  step("the traffic panel shows who answered", split.length >= 1 && split[0][0].startsWith("gateway/")
    && split[0][0].includes("market-data/") && split.reduce((a, r) => a + Number(r[1]), 0) >= 15, JSON.stringify(split));
  const stats = await page.textContent("#traffic-stats");
  step("with latency percentiles and the error rate", /p99 [0-9.]+ ms/.test(stats) && stats.includes("errors 0.0%"), stats);
  await page.screenshot({ path: `${SHOTS}/traffic.png`, fullPage: true });

  // A phone's width.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${SHOTS}/phone.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  step("it fits a phone's width", overflow <= 1, `${overflow}px wider`);
  step("no script errors", problems.length === 0, problems.join("; "));
} finally {
  await browser.close();
}
console.log("all browser checks passed");
