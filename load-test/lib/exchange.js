// Shared helpers for the k6 scripts: base URL, request helpers with checks,
// signed-in sessions that renew their access token, Upbit-signed requests, the
// trading round trip, and a counter of which version answered (x-served-by,
// tagged hop=service/version), so a canary's 90/10 split or a blue/green switch
// can be read from k6's metric output (`-- --out json=served.json`; the summary
// shows only the total, since k6 sums a tag there only when it has a threshold).
// Through the cluster's ingress, x-served-by is there only when the release sets
// istio.ingress.exposeServedBy (values-loadtest.yaml and the strategy overlays do).
// The ingress is HTTPS (https://127.0.0.1 on kind, self-signed: scripts/load-test
// passes --insecure-skip-tls-verify; running k6 yourself, set
// K6_INSECURE_SKIP_TLS_VERIFY=true).
import http from 'k6/http';
import { check } from 'k6';
import { hmac, randomBytes, sha512 } from 'k6/crypto';
import encoding from 'k6/encoding';
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
export const tokenRefreshes = new Counter('token_refreshes');

export function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

// A UUID v4: the runtime's crypto.randomUUID() when it has one, else made from
// 16 random bytes.
export function uuid4() {
  if (typeof crypto !== 'undefined' && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = new Uint8Array(randomBytes(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// A field of a JSON answer (`path` as res.json takes it; none: the whole
// answer), or null.
export function field(res, path) {
  try {
    const v = path ? res.json(path) : res.json();
    return v === undefined ? null : v;
  } catch (e) {
    return null;
  }
}

function params(name, token, extraTags) {
  const headers = Object.assign({ 'content-type': 'application/json' }, ROUTING);
  if (token) headers.authorization = `Bearer ${token}`;
  return { headers, tags: Object.assign({ name }, extraTags || {}) };
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

// --- Sessions --------------------------------------------------------------
// A session is a signed-in user of the native API: { email, password,
// access_token, refresh_token, expires_at (epoch ms), lifetime (ms) }. Access
// tokens last ACCESS_TOKEN_TTL (15 minutes by default), so a session renews its
// token (POST /api/v1/auth/refresh) when less than a third of its life, at most a
// minute, is left, and once more on a 401. A refresh token is single use: keep
// each session in one VU (a copy of setup() data is the VU's own).
// The request helpers take a session or a bare access token as `auth`.

function remember(session, res) {
  const access = field(res, 'access_token');
  const refresh = field(res, 'refresh_token');
  if (!access || !refresh) return false;
  const lifetime = Number(field(res, 'expires_in') || 900) * 1000;
  session.access_token = access;
  session.refresh_token = refresh;
  session.lifetime = lifetime;
  session.expires_at = Date.now() + lifetime;
  session.retry_at = 0;
  return true;
}

function login(session) {
  const res = http.post(`${BASE_URL}/api/v1/auth/login`,
    JSON.stringify({ email: session.email, password: session.password }), params('login'));
  countServedBy(res);
  return res.status === 200 && remember(session, res);
}

// Renews the session's access token: with its refresh token, or by signing in
// again when that is spent or expired. An answer of 429 (the IP's sign-in budget,
// RATE_LIMIT_AUTH a minute, which counts refreshes) keeps the current token and
// tries again 2 s later.
export function renew(session) {
  if (Date.now() < (session.retry_at || 0)) return false;
  const res = http.post(`${BASE_URL}/api/v1/auth/refresh`,
    JSON.stringify({ refresh_token: session.refresh_token }), params('refresh'));
  countServedBy(res);
  let ok = res.status === 200 && remember(session, res);
  if (!ok && res.status !== 429) ok = login(session);
  check(res, { 'token refreshed (200)': () => ok });
  if (ok) tokenRefreshes.add(1);
  else session.retry_at = Date.now() + 2000;
  return ok;
}

function isSession(auth) {
  return !!auth && typeof auth === 'object';
}

// The bearer token of `auth`, renewed first when it is about to expire.
export function accessToken(auth) {
  if (!isSession(auth)) return auth || null;
  const margin = Math.min(60000, (auth.lifetime || 900000) / 3);
  if (Date.now() > auth.expires_at - margin) renew(auth);
  return auth.access_token;
}

// Sends one request; a 401 on a session's request renews its token and sends the
// request once more (a 401 is answered before anything is done).
function send(method, path, body, name, auth) {
  const url = `${BASE_URL}${path}`;
  let res = http.request(method, url, body, params(name, accessToken(auth)));
  if (res.status === 401 && isSession(auth) && renew(auth)) {
    res = http.request(method, url, body, params(name, auth.access_token));
  }
  countServedBy(res);
  return res;
}

// GET a path; `name` groups URLs with parameters in the summary.
export function get(path, name, auth, expect) {
  const res = send('GET', path, null, name || path, auth);
  check(res, { [`${name || path} is ${expect || 200}`]: (r) => r.status === (expect || 200) });
  return res;
}

export function post(path, body, name, auth, expectOneOf) {
  const res = send('POST', path, JSON.stringify(body), name || path, auth);
  const ok = expectOneOf || [200, 201];
  check(res, { [`${name || path} is ${ok.join('/')}`]: (r) => ok.includes(r.status) });
  return res;
}

export function del(path, name, auth) {
  const res = send('DELETE', path, null, name || path, auth);
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

// A fresh paper-trading account, signed in: its session, or null. Sign-ups are
// limited per IP (RATE_LIMIT_SIGNUP, 10 an hour by default; values-loadtest.yaml
// lifts it).
export function signUp() {
  const email = `k6-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const password = 'k6-Password-1234';
  post('/api/v1/auth/register', { email, password }, 'register', null, [201]);
  const res = post('/api/v1/auth/login', { email, password }, 'login', null, [200]);
  const session = { email, password };
  return remember(session, res) ? session : null;
}

// Tops the session's KRW up by 10,000,000 (the faucet, 100,000,000 a day) when
// `krw` has fallen below 1,000,000, so long runs keep trading.
export function keepFunded(session, krw) {
  if (!isSession(session) || !(Number(krw) < 1000000)) return;
  post('/api/v1/deposits', { currency: 'KRW', amount: '10000000', idempotency_key: uuid4() }, 'deposit', session, [200]);
}

// Balances, a market buy for 10,000 KRW, a resting limit bid far below the market
// (then cancelled). Returns false when there is no session.
export function tradeRoundTrip(session) {
  if (!session) return false;
  const accounts = get('/api/v1/accounts', 'accounts', session);
  const krw = (field(accounts, 'accounts') || []).find((a) => a.currency === 'KRW');
  keepFunded(session, krw ? krw.balance : null);
  const m = pick(MARKETS);
  const buy = post('/api/v1/orders', { market: m, side: 'bid', ord_type: 'price', price: '10000' }, 'market order', session);
  const uuid = field(buy, 'uuid');
  check(buy, { 'market order has a uuid': () => !!uuid });
  if (uuid) get(`/api/v1/orders/${uuid}`, 'get order', session);
  const rest = post('/api/v1/orders', { market: 'KRW-BTC', side: 'bid', ord_type: 'limit', price: '1000', volume: '10' }, 'limit order', session);
  const restUuid = field(rest, 'uuid');
  if (restUuid) del(`/api/v1/orders/${restUuid}`, 'cancel order', session);
  return true;
}

// --- Upbit's private API ---------------------------------------------------

// An Upbit API key for the session's user (POST /api/v1/api-keys, which takes the
// password again): { access_key, secret_key }, or null.
export function createApiKey(session, label) {
  const res = post('/api/v1/api-keys', { label: label || 'k6', password: session.password }, 'create api key', session, [201]);
  const key = { access_key: field(res, 'access_key'), secret_key: field(res, 'secret_key') };
  check(res, { 'api key has access_key and secret_key': () => !!(key.access_key && key.secret_key) });
  return key.access_key && key.secret_key ? key : null;
}

// Parameters as Upbit hashes them: `k=v&k=v` in order, unescaped, an array as
// `k[]=a&k[]=b`. `escape` gives the same string URL-encoded, for a query string.
export function upbitQuery(parameters, escape) {
  const enc = escape ? encodeURIComponent : (s) => s;
  const parts = [];
  for (const [k, v] of Object.entries(parameters || {})) {
    if (Array.isArray(v)) for (const x of v) parts.push(`${enc(`${k}[]`)}=${enc(String(x))}`);
    else parts.push(`${enc(k)}=${enc(String(v))}`);
  }
  return parts.join('&');
}

// The JWT that signs one Upbit request, as Upbit documents it: HS256 (or HS512:
// `key.alg`) with the secret key; payload access_key, a fresh nonce (UUID v4),
// and with parameters query_hash (SHA512 hex of upbitQuery) and query_hash_alg
// "SHA512".
export function upbitToken(key, query) {
  const alg = key.alg === 'HS512' ? 'HS512' : 'HS256';
  const payload = { access_key: key.access_key, nonce: uuid4() };
  if (query) {
    payload.query_hash = sha512(query, 'hex');
    payload.query_hash_alg = 'SHA512';
  }
  const b64 = (o) => encoding.b64encode(JSON.stringify(o), 'rawurl');
  const unsigned = `${b64({ alg, typ: 'JWT' })}.${b64(payload)}`;
  const mac = alg === 'HS512' ? 'sha512' : 'sha256';
  return `${unsigned}.${hmac(mac, key.secret_key, unsigned, 'base64rawurl')}`;
}

// One signed Upbit request: GET and DELETE carry `parameters` in the query string,
// POST as a JSON body in the same order. Checks the status (`expect`, 200 by
// default) and Upbit's Remaining-Req header, and tags it api=upbit.
export function upbit(method, path, parameters, name, key, expect) {
  const query = upbitQuery(parameters);
  const inBody = method === 'POST';
  const qs = !inBody && query ? `?${upbitQuery(parameters, true)}` : '';
  const body = inBody && query ? JSON.stringify(parameters) : null;
  const res = http.request(method, `${BASE_URL}${path}${qs}`, body,
    params(name, upbitToken(key, query), { api: 'upbit' }));
  countServedBy(res);
  const want = expect || 200;
  const remaining = res.headers['Remaining-Req'] || res.headers['remaining-req'] || '';
  check(res, {
    [`${name} is ${want}`]: (r) => r.status === want,
    [`${name} has Remaining-Req`]: () => /^group=[a-z-]+; min=\d+; sec=\d+$/.test(remaining),
  });
  return res;
}
