// Upbit bots: VUS virtual users (default 5) trade for DURATION (default 2m) as an
// Upbit client does, through the Upbit-compatible API (/v1/...) with Upbit's
// signed JWTs (HS256; JWT_ALG=HS512 signs with HS512). Each VU first signs up and
// logs in with the native API and makes an API key (POST /api/v1/api-keys), then
// loops: balances, order chance, a market buy for 10,000 KRW, that order, a limit
// bid far below the market, the open orders (which must list it), its cancel;
// then a PAUSE (default 1 s), which keeps each user well under the gateway's
// per-user limits (default 30/s, order 12/s). Every answer must carry
// Remaining-Req. Sign-ups are limited per IP (RATE_LIMIT_SIGNUP, 10 an hour):
// more VUS need values-loadtest.yaml, or scripts/up started with RATE_LIMIT_SIGNUP=0.
//   scripts/load-test upbit [--base-url http://127.0.0.1:8080] [-- -e VUS=10 -e DURATION=5m]
import { check, sleep } from 'k6';
import { MARKETS, createApiKey, field, keepFunded, pick, signUp, upbit } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

const PAUSE = Number(__ENV.PAUSE || 1);

export const options = {
  vus: Number(__ENV.VUS || 5),
  duration: __ENV.DURATION || '2m',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{api:upbit}': ['p(95)<800'],
  },
};

// Per VU: its native session (for the key and KRW top-ups) and its API key.
let session = null;
let key = null;

function ready() {
  if (!session) session = signUp();
  if (session && !key) {
    key = createApiKey(session, `k6-upbit-${__VU}`);
    if (key) key.alg = __ENV.JWT_ALG;
  }
  check(key, { 'bot has an API key': (k) => !!k });
  return !!key;
}

export default function () {
  if (!ready()) {
    sleep(5);
    return;
  }
  const m = pick(MARKETS);

  const accounts = upbit('GET', '/v1/accounts', null, 'upbit accounts', key);
  const krw = (field(accounts) || []).find((a) => a.currency === 'KRW');
  check(krw, {
    'accounts list KRW with balance and locked': (a) => !!a && a.balance !== undefined && a.locked !== undefined,
  });
  keepFunded(session, krw ? krw.balance : null);

  const chance = upbit('GET', '/v1/orders/chance', { market: m }, 'upbit orders/chance', key);
  check(chance, {
    'chance has fees, the market and both accounts': (r) => field(r, 'bid_fee') !== null
      && field(r, 'market.id') === m && field(r, 'bid_account.currency') === 'KRW'
      && field(r, 'ask_account') !== null,
  });

  const buy = upbit('POST', '/v1/orders', { market: m, side: 'bid', price: '10000', ord_type: 'price' },
    'upbit order (market buy)', key, 201);
  const buyUuid = field(buy, 'uuid');
  check(buy, {
    'market buy has a uuid, side and ord_type': (r) => !!buyUuid && field(r, 'side') === 'bid'
      && field(r, 'ord_type') === 'price' && field(r, 'market') === m,
  });
  if (buyUuid) {
    const order = upbit('GET', '/v1/order', { uuid: buyUuid }, 'upbit order', key);
    check(order, {
      'order is the market buy, with state and trades': (r) => field(r, 'uuid') === buyUuid
        && ['wait', 'done', 'cancel'].includes(field(r, 'state')) && Array.isArray(field(r, 'trades')),
    });
  }

  const rest = upbit('POST', '/v1/orders', { market: 'KRW-BTC', side: 'bid', volume: '10', price: '1000', ord_type: 'limit' },
    'upbit order (limit bid)', key, 201);
  const restUuid = field(rest, 'uuid');
  check(rest, { 'limit bid rests (wait)': (r) => !!restUuid && field(r, 'state') === 'wait' });
  if (restUuid) {
    const open = upbit('GET', '/v1/orders/open', { market: 'KRW-BTC' }, 'upbit orders/open', key);
    check(open, {
      'open orders list the limit bid': (r) => (field(r) || []).some((o) => o.uuid === restUuid),
    });
    const cancel = upbit('DELETE', '/v1/order', { uuid: restUuid }, 'upbit cancel order', key);
    check(cancel, { 'cancel answers the limit bid': (r) => field(r, 'uuid') === restUuid });
  }
  sleep(PAUSE);
}
