// Basic load: steady mixed traffic for DURATION (default 5 m):
//   quotes     RATE requests/s of quotation endpoints (default 50)
//   traders    TRADERS virtual users trading in a loop (default 5)
//   streams    STREAMS WebSocket clients holding a ticker subscription (default 10)
// Deploy with helm/exchange/values-loadtest.yaml (no per-IP limits).
//   scripts/load-test load --base-url https://127.0.0.1 --cluster-ingress
import { check, sleep } from 'k6';
import ws from 'k6/ws';
import { Counter } from 'k6/metrics';
import { BASE_URL, MARKETS, get, pick, signUp, tradeRoundTrip } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

const DURATION = __ENV.DURATION || '5m';
const wsMessages = new Counter('ws_messages');

export const options = {
  scenarios: {
    quotes: {
      executor: 'constant-arrival-rate', exec: 'quotes',
      rate: Number(__ENV.RATE || 50), timeUnit: '1s', duration: DURATION,
      preAllocatedVUs: 20, maxVUs: 200,
    },
    traders: { executor: 'constant-vus', exec: 'traders', vus: Number(__ENV.TRADERS || 5), duration: DURATION },
    streams: { executor: 'constant-vus', exec: 'streams', vus: Number(__ENV.STREAMS || 10), duration: DURATION },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{scenario:quotes}': ['p(95)<300', 'p(99)<1000'],
    'http_req_duration{scenario:traders}': ['p(95)<800'],
    checks: ['rate>0.99'],
  },
};

export function quotes() {
  const m = pick(MARKETS);
  switch (Math.floor(Math.random() * 5)) {
    case 0: get(`/v1/ticker?markets=${MARKETS.join(',')}`, 'upbit ticker'); break;
    case 1: get(`/v1/orderbook?markets=${m}`, 'upbit orderbook'); break;
    case 2: get(`/api/v1/trades/${m}?count=50`, 'native trades'); break;
    case 3: get(`/api/v1/candles/${m}?interval=1m&count=100`, 'native candles'); break;
    default: get(`/api/v1/tickers?markets=${m}`, 'native tickers');
  }
}

// Each trader's session renews its access token before it expires
// (ACCESS_TOKEN_TTL, 15 minutes by default), so runs may last longer than that.
let session = null;
export function traders() {
  if (!session) session = signUp();
  tradeRoundTrip(session);
  sleep(1);
}

export function streams() {
  const url = BASE_URL.replace(/^http/, 'ws') + '/websocket/v1';
  const res = ws.connect(url, {}, (socket) => {
    socket.on('open', () => socket.send(JSON.stringify([{ ticket: `k6-${__VU}` }, { type: 'ticker', codes: MARKETS }])));
    socket.on('binaryMessage', () => wsMessages.add(1));
    socket.on('message', () => wsMessages.add(1));
    socket.setTimeout(() => socket.close(), 30000);
  });
  check(res, { 'websocket upgraded (101)': (r) => r && r.status === 101 });
}
