// Smoke: one virtual user touches every public endpoint, the WebSocket and one
// trading round trip, once a second for 30 s. Every check must pass: a failing
// check or request stops the run after 10 s (abortOnFail), so a broken deployment
// is reported at once.
//   scripts/load-test smoke [--base-url http://127.0.0.1:8080]
import { check, sleep } from 'k6';
import ws from 'k6/ws';
import { BASE_URL, get, quotations, signUp, tradeRoundTrip } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

export const options = {
  vus: 1,
  duration: __ENV.DURATION || '30s',
  thresholds: {
    checks: [{ threshold: 'rate>0.99', abortOnFail: true, delayAbortEval: '10s' }],
    http_req_failed: [{ threshold: 'rate<0.01', abortOnFail: true, delayAbortEval: '10s' }],
    http_req_duration: ['p(95)<500'],
  },
};

export function setup() {
  get('/healthz', 'healthz');
  get('/readyz', 'readyz');
  return { session: signUp() };
}

// The VU's own copy of the session, which renews its access token as it goes.
let session = null;

export default function (data) {
  if (!session && data.session) session = Object.assign({}, data.session);
  quotations();
  tradeRoundTrip(session);
  if (__ITER === 0) websocketOnce();
  sleep(1);
}

// Subscribe to KRW-BTC tickers and expect at least one message within 5 s.
function websocketOnce() {
  const url = BASE_URL.replace(/^http/, 'ws') + '/websocket/v1';
  let got = 0;
  const res = ws.connect(url, {}, (socket) => {
    socket.on('open', () => socket.send(JSON.stringify([{ ticket: 'k6-smoke' }, { type: 'ticker', codes: ['KRW-BTC'] }])));
    socket.on('binaryMessage', () => { got += 1; socket.close(); });
    socket.on('message', () => { got += 1; socket.close(); });
    socket.setTimeout(() => socket.close(), 5000);
  });
  check(res, { 'websocket upgraded (101)': (r) => r && r.status === 101 });
  check(got, { 'websocket delivered a ticker': (n) => n > 0 });
}
