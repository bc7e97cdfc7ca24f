// The exchange's web page: a live ticker board and a candlestick chart, fed by the
// gateway's Upbit-compatible REST API and WebSocket (same origin, nothing from
// outside). `window.exchange` exposes what is on screen for the browser tests.
"use strict";

const state = { markets: [], prices: {}, selected: null, interval: "1m", lastCandle: null,
                candles: 0, waiting: null, connection: "connecting", ws: null, retry: 0,
                book: null, trades: [] };
window.exchange = state;

const INTERVALS = {
  "1s": { rest: "/v1/candles/seconds", ws: "candle.1s", secs: 1 },
  "1m": { rest: "/v1/candles/minutes/1", ws: "candle.1m", secs: 60 },
  "5m": { rest: "/v1/candles/minutes/5", ws: "candle.5m", secs: 300 },
  "60m": { rest: "/v1/candles/minutes/60", ws: "candle.60m", secs: 3600 },
  "1d": { rest: "/v1/candles/days", ws: null, secs: 86400 },
};

const $ = (sel) => document.querySelector(sel);
const fmt = (n, digits) => n.toLocaleString("en-US", { maximumFractionDigits: digits ?? 8 });

function showError(text) {
  const el = $("#error");
  el.hidden = !text;
  el.textContent = text || "";
}

function setConnection(s) {
  state.connection = s;
  const el = $("#conn");
  el.dataset.state = s;
  el.textContent = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[s] || s;
}

async function getJson(path) {
  const resp = await fetch(path);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body?.error?.message || `${resp.status} from ${path}`);
  return body;
}

// --- ticker board ---------------------------------------------------------------
function buildBoard() {
  const body = $("#board tbody");
  body.replaceChildren();
  for (const m of state.markets) addRow(body, m);
}

function addRow(body, m) {
  const tr = document.createElement("tr");
  tr.dataset.market = m.market;
  tr.innerHTML = `<td class="name"></td><td class="num price">—</td><td class="num change">—</td><td class="num volume">—</td>`;
  renderName(tr.querySelector(".name"), m);
  tr.addEventListener("click", () => selectMarket(m.market));
  body.append(tr);
}

// The market's names and Upbit's designations: 유의 (investment warning), 주의
// (caution, with its reasons).
function renderName(cell, m) {
  cell.textContent = m.korean_name;
  const event = m.market_event || {};
  const reasons = Object.entries(event.caution || {}).filter(([, set]) => set).map(([reason]) => reason);
  if (event.warning) cell.append(badge("유의", "warning", "Investment warning"));
  if (reasons.length) cell.append(badge("주의", "caution", `Caution: ${reasons.join(", ")}`));
  const small = document.createElement("small");
  small.textContent = `${m.english_name} · ${m.market}`;
  cell.append(small);
}

// Designations change while the page is open: read the list again now and then
// and redraw the names (prices stay). A newly listed market gets a row, and the
// subscription is sent again to include it.
const MARKETS_EVERY_MS = 60_000;

async function refreshMarkets() {
  const markets = await getJson("/v1/market/all?is_details=true");
  const body = $("#board tbody");
  let added = false;
  for (const m of markets) {
    const tr = body.querySelector(`tr[data-market="${CSS.escape(m.market)}"]`);
    if (tr) renderName(tr.querySelector(".name"), m);
    else {
      addRow(body, m);
      added = true;
    }
  }
  state.markets = markets;
  if (added) subscribe();
}
state.refreshMarkets = refreshMarkets;

function badge(text, kind, title) {
  const b = document.createElement("span");
  b.className = `badge ${kind}`;
  b.textContent = text;
  b.title = title;
  return b;
}

function onTicker(t) {
  state.prices[t.code] = t.trade_price;
  const tr = document.querySelector(`tr[data-market="${t.code}"]`);
  if (tr) {
    const cls = t.change === "RISE" ? "rise" : t.change === "FALL" ? "fall" : "";
    tr.querySelector(".price").textContent = fmt(t.trade_price);
    tr.querySelector(".price").className = `num price ${cls}`;
    const change = tr.querySelector(".change");
    change.textContent = `${(t.signed_change_rate * 100).toFixed(2)}%`;
    change.className = `num change ${cls}`;
    tr.querySelector(".volume").textContent = fmt(t.acc_trade_price_24h, 0);
  }
  if (t.code === state.selected) {
    $("#market-price").textContent = fmt(t.trade_price);
    if (!INTERVALS[state.interval].ws) foldIntoLast(t.trade_price, t.trade_volume, t.trade_timestamp);
  }
}

// --- chart ----------------------------------------------------------------------
let chart, candles, volumes;

function makeChart() {
  const LC = window.LightweightCharts;
  chart = LC.createChart($("#chart"), {
    autoSize: true,
    layout: { background: { color: "#161d2c" }, textColor: "#8894ad" },
    grid: { vertLines: { color: "#1e2740" }, horzLines: { color: "#1e2740" } },
    timeScale: { timeVisible: true, secondsVisible: true },
  });
  candles = chart.addSeries(LC.CandlestickSeries, {
    upColor: "#e0475b", downColor: "#3b82f6", borderVisible: false,
    wickUpColor: "#e0475b", wickDownColor: "#3b82f6",
  });
  volumes = chart.addSeries(LC.HistogramSeries, { priceScaleId: "", priceFormat: { type: "volume" } });
  volumes.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
}

const toSecs = (utc) => Math.floor(Date.parse(utc + "Z") / 1000);

function bar(c) {
  return { time: toSecs(c.candle_date_time_utc), open: c.opening_price, high: c.high_price,
           low: c.low_price, close: c.trade_price, volume: c.candle_acc_trade_volume };
}

function drawLast(b) {
  state.lastCandle = b;
  candles.update(b);
  volumes.update({ time: b.time, value: b.volume, color: b.close >= b.open ? "#e0475b55" : "#3b82f655" });
}

// A trade folded into the newest bar (for intervals without a live candle type).
function foldIntoLast(price, volume, ts) {
  if (state.waiting) return state.waiting.push(() => foldIntoLast(price, volume, ts));
  const secs = INTERVALS[state.interval].secs;
  const time = Math.floor(ts / 1000 / secs) * secs;
  const last = state.lastCandle;
  if (!last || time > last.time) {
    drawLast({ time, open: price, high: price, low: price, close: price, volume });
  } else if (time === last.time) {
    drawLast({ ...last, high: Math.max(last.high, price), low: Math.min(last.low, price),
               close: price, volume: last.volume + volume });
  }
}

// Live candles and trades that arrive while the history loads wait for it, so a newer
// load (another market or interval) never loses them or draws over them.
let loadSeq = 0;

async function loadCandles() {
  const seq = ++loadSeq;
  const market = state.selected;
  const iv = INTERVALS[state.interval];
  state.waiting = [];
  let list;
  try {
    list = await getJson(`${iv.rest}?market=${market}&count=200`);
  } catch (e) {
    if (seq !== loadSeq) return; // a newer load owns the chart now
    state.waiting = null;
    throw e;
  }
  if (seq !== loadSeq) return;
  const waiting = state.waiting;
  state.waiting = null;
  const bars = list.map(bar).reverse();
  candles.setData(bars);
  volumes.setData(bars.map((b) => ({ time: b.time, value: b.volume,
                                     color: b.close >= b.open ? "#e0475b55" : "#3b82f655" })));
  state.candles = bars.length;
  state.lastCandle = bars[bars.length - 1] || null;
  chart.timeScale().fitContent();
  for (const live of waiting) live();
}

// --- orderbook and trades -------------------------------------------------------
const BOOK_LEVELS = 15;

function onOrderbook(ob) {
  if (ob.code !== state.selected) return;
  state.book = ob;
  const units = ob.orderbook_units.slice(0, BOOK_LEVELS);
  const biggest = Math.max(...units.map((u) => Math.max(u.ask_size, u.bid_size)), 1e-12);
  const row = (side, price, size) => {
    const tr = document.createElement("tr");
    tr.className = side;
    tr.innerHTML = `<td class="num p"></td><td class="num s"><span class="bar"></span></td>`;
    tr.querySelector(".p").textContent = fmt(price);
    tr.querySelector(".s").prepend(fmt(size, 4));
    tr.querySelector(".bar").style.width = `${(size / biggest) * 100}%`;
    return tr;
  };
  const rows = [...units].reverse().map((u) => row("ask", u.ask_price, u.ask_size))
    .concat(units.map((u) => row("bid", u.bid_price, u.bid_size)));
  $("#book tbody").replaceChildren(...rows);
}

function onTrade(t) {
  if (t.code !== state.selected) return;
  state.trades.unshift(t);
  state.trades.length = Math.min(state.trades.length, 30);
  const rows = state.trades.map((x) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td class="num"></td><td class="num"></td>`;
    tr.children[0].textContent = new Date(x.trade_timestamp).toLocaleTimeString();
    tr.children[1].textContent = fmt(x.trade_price);
    tr.children[1].className = `num ${x.ask_bid === "BID" ? "rise" : "fall"}`;
    tr.children[2].textContent = fmt(x.trade_volume, 4);
    return tr;
  });
  $("#trades tbody").replaceChildren(...rows);
}

function onCandle(c) {
  if (c.code !== state.selected || c.type !== INTERVALS[state.interval].ws) return;
  if (state.waiting) return state.waiting.push(() => onCandle(c));
  const b = bar(c);
  if (!state.lastCandle || b.time >= state.lastCandle.time) drawLast(b);
}

async function selectMarket(market) {
  state.selected = market;
  state.book = null;
  state.trades = [];
  $("#book tbody").replaceChildren();
  $("#trades tbody").replaceChildren();
  const info = state.markets.find((m) => m.market === market);
  $("#market-name").textContent = info ? `${info.korean_name} ${market}` : market;
  $("#market-price").textContent = state.prices[market] ? fmt(state.prices[market]) : "";
  // KRW prices are whole won; other quotes need their decimals.
  const krw = market.startsWith("KRW-");
  candles.applyOptions({ priceFormat: { type: "price", precision: krw ? 0 : 8, minMove: krw ? 1 : 1e-8 } });
  for (const tr of document.querySelectorAll("#board tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.market === market);
  }
  subscribe();
  refreshAccount().catch(() => {});
  try {
    await loadCandles();
    showError("");
  } catch (e) {
    showError(`Could not load candles: ${e.message}`);
  }
}

// --- WebSocket ------------------------------------------------------------------
function subscribe() {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const request = [{ ticket: `web-${Date.now()}` },
    { type: "ticker", codes: state.markets.map((m) => m.market) }];
  const live = INTERVALS[state.interval].ws;
  if (state.selected) {
    request.push({ type: "orderbook", codes: [`${state.selected}.${BOOK_LEVELS}`] });
    request.push({ type: "trade", codes: [state.selected] });
    if (live) request.push({ type: live, codes: [state.selected], is_only_realtime: true });
  }
  ws.send(JSON.stringify(request));
}

const WS_BASE = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
const decoder = new TextDecoder();
const frame = (ev) => JSON.parse(typeof ev.data === "string" ? ev.data : decoder.decode(ev.data));

// The gateway closes a socket that says nothing for two minutes (as Upbit does).
function keepAlive(ws) {
  const timer = setInterval(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send("PING");
  }, 60000);
  ws.addEventListener("close", () => clearInterval(timer));
}

function connect() {
  const ws = new WebSocket(`${WS_BASE}/websocket/v1`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  keepAlive(ws);
  ws.onopen = () => {
    state.retry = 0;
    setConnection("live");
    subscribe();
  };
  ws.onmessage = (ev) => {
    const msg = frame(ev);
    if (msg.error) return showError(`The server refused the subscription: ${msg.error.message}`);
    if (msg.type === "ticker") onTicker(msg);
    else if (msg.type === "orderbook") onOrderbook(msg);
    else if (msg.type === "trade") onTrade(msg);
    else if (msg.type && msg.type.startsWith("candle.")) onCandle(msg);
  };
  ws.onclose = () => {
    setConnection("reconnecting");
    state.retry = Math.min(state.retry + 1, 6);
    setTimeout(connect, 500 * 2 ** state.retry);
  };
}

// --- account: sign-in, balances, orders (the native API) ---------------------------
const session = { access: null, refresh: null, email: null };
state.session = session;
const MIN_TOTAL = { KRW: 5000, BTC: 0.00005, USDT: 0.5 };

async function api(method, path, body, retried) {
  const headers = { "content-type": "application/json" };
  if (session.access) headers.authorization = `Bearer ${session.access}`;
  const resp = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (resp.status === 401 && session.refresh && !retried) {
    const r = await fetch("/api/v1/auth/refresh", { method: "POST", headers: { "content-type": "application/json" },
                                                      body: JSON.stringify({ refresh_token: session.refresh }) });
    if (r.ok) {
      const t = await r.json();
      Object.assign(session, { access: t.access_token, refresh: t.refresh_token });
      return api(method, path, body, true);
    }
    signedOut("Your session ended; log in again.");
  }
  const text = await resp.text();
  const json = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new Error(json?.error?.message || `${resp.status}`);
  return json;
}

function note(text, bad) {
  const el = $("#order-note");
  el.textContent = text || "";
  el.classList.toggle("bad", !!bad);
}

async function signIn(email, password, create) {
  if (create) await api("POST", "/api/v1/auth/register", { email, password });
  const t = await api("POST", "/api/v1/auth/login", { email, password });
  Object.assign(session, { access: t.access_token, refresh: t.refresh_token, email });
  $("#auth").hidden = true;
  $("#me").hidden = false;
  $("#who").textContent = email;
  await refreshAccount();
  openPrivate();
}

// --- the user's orders and balances, live -------------------------------------------
// The gateway's private stream sends Upbit's myOrder and myAsset events whenever an
// order of the user's opens, fills or ends or a balance changes (also when a resting
// order fills against the market, with nobody clicking); the lists are read again
// then. While the stream is down they are read every 10 s instead.
const mine = { ws: null, live: false, events: 0, retry: 0, reread: null };
state.mine = mine;

function rereadSoon() {
  if (mine.reread) return;
  mine.reread = setTimeout(() => {
    mine.reread = null;
    refreshAccount().catch(() => {});
  }, 150);
}

function openPrivate() {
  if (!session.access || mine.ws) return;
  // A browser cannot set Authorization on a WebSocket: the token rides as a subprotocol.
  const ws = new WebSocket(`${WS_BASE}/api/v1/websocket`, ["exchange.v1", `access_token.${session.access}`]);
  ws.binaryType = "arraybuffer";
  mine.ws = ws;
  keepAlive(ws);
  ws.onopen = () => {
    mine.retry = 0;
    mine.live = true;
    ws.send(JSON.stringify([{ ticket: `web-mine-${Date.now()}` }, { type: "myOrder" }, { type: "myAsset" }]));
    rereadSoon();
  };
  ws.onmessage = (ev) => {
    const msg = frame(ev);
    if (msg.type === "myOrder" || msg.type === "myAsset") {
      mine.events += 1;
      rereadSoon();
    }
  };
  ws.onclose = () => {
    mine.ws = null;
    mine.live = false;
    if (!session.access) return;
    mine.retry = Math.min(mine.retry + 1, 6);
    // The access token may have expired meanwhile: a request refreshes it first.
    setTimeout(() => refreshAccount().catch(() => {}).finally(openPrivate), 500 * 2 ** mine.retry);
  };
}

function signedOut(message) {
  Object.assign(session, { access: null, refresh: null, email: null });
  mine.ws?.close();
  $("#auth").hidden = false;
  $("#me").hidden = true;
  if (message) showError(message);
}

async function refreshAccount() {
  if (!session.access) return;
  const market = state.selected ? `&market=${state.selected}` : "";
  const [{ accounts }, { orders }, { orders: closed }] = await Promise.all([
    api("GET", "/api/v1/accounts"),
    api("GET", `/api/v1/orders?state=open${market}`),
    api("GET", `/api/v1/orders?state=closed&limit=10${market}`),
  ]);
  $("#closed tbody").replaceChildren(...closed.map((o) => {
    const tr = document.createElement("tr");
    tr.dataset.uuid = o.uuid;
    tr.innerHTML = `<td></td><td class="state"></td><td class="num"></td><td class="num"></td>`;
    const filled = Number(o.executed_volume);
    tr.children[0].textContent = `${o.side === "bid" ? "Buy" : "Sell"} ${o.market}`;
    tr.children[1].textContent = o.state;
    tr.children[2].textContent = fmt(filled);
    tr.children[3].textContent = filled > 0 ? fmt(Number(o.executed_funds) / filled, 2) : "—";
    return tr;
  }));
  $("#balances tbody").replaceChildren(...accounts.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.currency = a.currency;
    tr.innerHTML = `<td></td><td class="num"></td><td class="num"></td>`;
    tr.children[0].textContent = a.currency;
    tr.children[1].textContent = fmt(Number(a.balance));
    tr.children[2].textContent = fmt(Number(a.locked));
    return tr;
  }));
  $("#open tbody").replaceChildren(...orders.map((o) => {
    const tr = document.createElement("tr");
    tr.dataset.uuid = o.uuid;
    tr.innerHTML = `<td></td><td class="num"></td><td class="num"></td><td><button type="button">Cancel</button></td>`;
    tr.children[0].textContent = `${o.side === "bid" ? "Buy" : "Sell"} ${o.market}`;
    tr.children[1].textContent = o.price ? fmt(Number(o.price)) : "market";
    tr.children[2].textContent = o.remaining_volume ?? "";
    tr.querySelector("button").addEventListener("click", async () => {
      try {
        await api("DELETE", `/api/v1/orders/${o.uuid}`);
        note("Cancelled.");
      } catch (e) {
        note(`Not cancelled: ${e.message}`, true);
      }
      refreshAccount();
    });
    return tr;
  }));
}

// The order as the server will check it: tick size and minimum total first.
async function placeOrder() {
  const market = state.selected;
  const [quote] = market.split("-");
  const side = $("#side").value;
  const type = $("#type").value;
  const price = Number($("#price").value);
  const amount = Number($("#amount").value);
  let order;
  if (type === "limit") {
    const [info] = await getJson(`/v1/orderbook/instruments?markets=${market}`);
    const tick = Number(info.tick_size);
    if (!(price > 0) || Math.abs(price / tick - Math.round(price / tick)) > 1e-9) {
      return note(`The price must be a multiple of ${fmt(tick)} ${quote} in ${market}.`, true);
    }
    if (!(amount > 0) || price * amount < MIN_TOTAL[quote]) {
      return note(`An order must total at least ${MIN_TOTAL[quote]} ${quote}.`, true);
    }
    order = { market, side, ord_type: "limit", price: String(price), volume: String(amount) };
    if ($("#tif").value) order.time_in_force = $("#tif").value;
  } else if (side === "bid") {
    // A market buy spends an amount of the quote currency.
    const total = price || amount;
    if (!(total >= MIN_TOTAL[quote])) return note(`Spend at least ${MIN_TOTAL[quote]} ${quote}.`, true);
    order = { market, side, ord_type: "price", price: String(total) };
  } else {
    if (!(amount > 0)) return note("Give the volume to sell.", true);
    order = { market, side, ord_type: "market", volume: String(amount) };
  }
  try {
    const placed = await api("POST", "/api/v1/orders", order);
    note(`Order ${placed.state}: ${placed.executed_volume} filled.`);
  } catch (e) {
    note(`Refused: ${e.message}`, true);
  }
  await refreshAccount();
}

function setupAccount() {
  const credentials = () => [$("#email").value, $("#password").value];
  $("#auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn(...credentials(), false).catch((e) => showError(`Could not log in: ${e.message}`));
  });
  $("#signup").addEventListener("click", () => {
    signIn(...credentials(), true).catch((e) => showError(`Could not sign up: ${e.message}`));
  });
  $("#logout").addEventListener("click", async () => {
    await api("POST", "/api/v1/auth/logout", {}).catch(() => {});
    signedOut();
  });
  $("#type").addEventListener("change", () => {
    const market = $("#type").value === "market";
    $("#price").placeholder = market ? "amount to spend (buy)" : "price";
    $("#tif").disabled = market;
  });
  $("#order").addEventListener("submit", (ev) => {
    ev.preventDefault();
    placeOrder();
  });
  setInterval(() => {
    if (!mine.live) refreshAccount().catch(() => {});
  }, 10000);
}

// --- traffic: which version and pod answer, at a chosen rate -----------------------
// Each answer's `x-served-by` names every hop (service/version/pod); the split of
// those chains is where a canary's 10 % or a blue/green switch becomes visible.
const traffic = { timer: null, sent: 0, errors: 0, latencies: [], split: {} };
state.traffic = traffic;

function percentile(sorted, p) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function trafficShot(path) {
  traffic.sent += 1;
  const started = performance.now();
  try {
    const headers = session.access ? { authorization: `Bearer ${session.access}` } : {};
    const resp = await fetch(path, { headers });
    await resp.arrayBuffer();
    traffic.latencies.push(performance.now() - started);
    if (traffic.latencies.length > 1000) traffic.latencies.shift();
    if (!resp.ok) traffic.errors += 1;
    const chain = resp.headers.get("x-served-by") || "(not reported)";
    traffic.split[chain] = (traffic.split[chain] || 0) + 1;
  } catch {
    traffic.errors += 1;
  }
}

function renderTraffic() {
  const answered = Object.values(traffic.split).reduce((a, b) => a + b, 0);
  const sorted = [...traffic.latencies].sort((a, b) => a - b);
  traffic.p50 = percentile(sorted, 50);
  traffic.p99 = percentile(sorted, 99);
  $("#traffic-stats").textContent = `${traffic.sent} sent · errors ${
    traffic.sent ? ((traffic.errors / traffic.sent) * 100).toFixed(1) : "0.0"}% · latency p50 ${
    traffic.p50.toFixed(1)} ms, p95 ${percentile(sorted, 95).toFixed(1)} ms, p99 ${traffic.p99.toFixed(1)} ms`;
  const rows = Object.entries(traffic.split).sort((a, b) => b[1] - a[1]).map(([chain, n]) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td class="num"></td><td class="num"></td>`;
    tr.children[0].textContent = chain;
    tr.children[1].textContent = n;
    tr.children[2].textContent = `${((n / answered) * 100).toFixed(1)}%`;
    return tr;
  });
  $("#traffic-split tbody").replaceChildren(...rows);
}

function setupTraffic() {
  $("#traffic-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (traffic.timer) {
      clearInterval(traffic.timer);
      traffic.timer = null;
      $("#traffic-toggle").textContent = "Start";
      return;
    }
    Object.assign(traffic, { sent: 0, errors: 0, latencies: [], split: {} });
    const rate = Math.max(1, Math.min(50, Number($("#traffic-rate").value) || 5));
    const path = $("#traffic-path").value;
    traffic.timer = setInterval(() => trafficShot(path), 1000 / rate);
    $("#traffic-toggle").textContent = "Stop";
  });
  setInterval(renderTraffic, 500);
}

// --- start ----------------------------------------------------------------------
async function start() {
  for (const button of document.querySelectorAll(".intervals button")) {
    button.addEventListener("click", () => {
      state.interval = button.dataset.interval;
      for (const b of document.querySelectorAll(".intervals button")) b.classList.toggle("on", b === button);
      if (state.selected) selectMarket(state.selected);
    });
  }
  makeChart();
  setupAccount();
  setupTraffic();
  try {
    state.markets = await getJson("/v1/market/all?is_details=true");
  } catch (e) {
    showError(`Could not load the markets: ${e.message}`);
    return;
  }
  buildBoard();
  setInterval(() => refreshMarkets().catch(() => {}), MARKETS_EVERY_MS);
  connect();
  const first = state.markets.find((m) => m.market === "KRW-BTC") || state.markets[0];
  if (first) selectMarket(first.market);
}

start();
