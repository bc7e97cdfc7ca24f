// Shared helpers for the k6 scripts: base URL, request helpers with checks, the
// trading round trip, and a counter of which version answered (x-served-by), so a
// canary's 90/10 split or a blue/green switch shows up in the k6 summary too.
// Through the cluster's ingress, x-served-by is there only when the release sets
// istio.ingress.exposeServedBy (values-loadtest.yaml and the strategy overlays do).
// The ingress is HTTPS (https://127.0.0.1 on kind, self-signed: scripts/load-test
// passes --insecure-skip-tls-verify; running k6 yourself, set
// K6_INSECURE_SKIP_TLS_VERIFY=true).
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const MARKETS = (__ENV.MARKETS || 'KRW-BTC,KRW-ETH,KRW-XRP').split(',');
// Optional routing headers, forwarded by every service: CANARY=true pins canaries,
// PREVIEW=true reaches the idle blue/green color. The ingress removes them from
// internet requests, so send these to a port-forward to the gateway (the default
// BASE_URL after `kubectl -n exchange port-forward svc/exchange-gateway 8080`).
const ROUTING = {};
if (__ENV.CANARY) ROUTING['x-canary'] = __ENV.CANARY;
if (__ENV.PREVIEW) ROUTING['x-preview'] = __ENV.PREVIEW;

export const servedBy = new Counter('served_by');

export function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

function params(name, token, extra) {
  const headers = Object.assign({ 'content-type': 'application/json' }, ROUTING, extra || {});
  if (token) headers.authorization = `Bearer ${token}`;
  return { headers, tags: { name } };
}

// Counts each service/version in the x-served-by chain (pods stripped).
function countServedBy(res) {
  const chain = res.headers['X-Served-By'] || res.headers['x-served-by'];
  if (!chain) return;
  for (const hop of String(chain).split(',')) {
    const [service, version] = hop.trim().split('/');
    if (service && version) servedBy.add(1, { hop: `${service}/${version}` });
  }
}

// GET a path; `name` groups URLs with parameters in the summary.
export function get(path, name, token, expect) {
  const res = http.get(`${BASE_URL}${path}`, params(name || path, token));
  countServedBy(res);
  check(res, { [`${name || path} is ${expect || 200}`]: (r) => r.status === (expect || 200) });
  return res;
}

export function post(path, body, name, token, expectOneOf) {
  const res = http.post(`${BASE_URL}${path}`, JSON.stringify(body), params(name || path, token));
  countServedBy(res);
  const ok = expectOneOf || [200, 201];
  check(res, { [`${name || path} is ${ok.join('/')}`]: (r) => ok.includes(r.status) });
  return res;
}

export function del(path, name, token) {
  const res = http.del(`${BASE_URL}${path}`, null, params(name || path, token));
  countServedBy(res);
  check(res, { [`${name || path} is 200`]: (r) => r.status === 200 });
  return res;
}

// The public market data API: native JSON and the Upbit-compatible shapes.
export function quotations() {
  const m = pick(MARKETS);
  get('/api/v1/markets', 'native markets');
  get(`/api/v1/tickers?markets=${m}`, 'native tickers');
  get(`/api/v1/orderbooks/${m}?depth=15`, 'native orderbook');
  get(`/api/v1/trades/${m}?count=50`, 'native trades');
  get(`/api/v1/candles/${m}?interval=1m&count=100`, 'native candles');
  get('/v1/market/all', 'upbit market/all');
  get(`/v1/ticker?markets=${MARKETS.join(',')}`, 'upbit ticker');
  get(`/v1/orderbook?markets=${m}`, 'upbit orderbook');
  get(`/v1/trades/ticks?market=${m}`, 'upbit trades');
  get(`/v1/candles/minutes/1?market=${m}`, 'upbit candles');
}

// A fresh paper-trading account; returns its access token (or null).
export function signUp() {
  const email = `k6-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const password = 'k6-Password-1234';
  post('/api/v1/auth/register', { email, password }, 'register', null, [201]);
  const res = post('/api/v1/auth/login', { email, password }, 'login', null, [200]);
  try {
    return res.json('access_token') || null;
  } catch (e) {
    return null;
  }
}

// Balances, a market buy for 10,000 KRW, a resting limit bid far below the market
// (then cancelled). Returns false when there is no token.
export function tradeRoundTrip(token) {
  if (!token) return false;
  get('/api/v1/accounts', 'accounts', token);
  const m = pick(MARKETS);
  const buy = post('/api/v1/orders', { market: m, side: 'bid', ord_type: 'price', price: '10000' }, 'market order', token);
  let uuid = null;
  try { uuid = buy.json('uuid'); } catch (e) { uuid = null; }
  check(buy, { 'market order has a uuid': () => !!uuid });
  if (uuid) get(`/api/v1/orders/${uuid}`, 'get order', token);
  const rest = post('/api/v1/orders', { market: 'KRW-BTC', side: 'bid', ord_type: 'limit', price: '1000', volume: '10' }, 'limit order', token);
  let restUuid = null;
  try { restUuid = rest.json('uuid'); } catch (e) { restUuid = null; }
  if (restUuid) del(`/api/v1/orders/${restUuid}`, 'cancel order', token);
  return true;
}
