// Smoke: one virtual user touches every public endpoint, the WebSocket and one
// trading round trip, once a second for 30 s. Every check must pass.
//   scripts/load-test smoke [--base-url http://127.0.0.1:8080]
import { check, sleep } from 'k6';
import ws from 'k6/ws';
import { BASE_URL, get, quotations, signUp, tradeRoundTrip } from './lib/exchange.js';

export const options = {
  vus: 1,
  duration: __ENV.DURATION || '30s',
  thresholds: {
    checks: ['rate>0.99'],
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
  },
};

export function setup() {
  get('/healthz', 'healthz');
  get('/readyz', 'readyz');
  return { token: signUp() };
}

export default function (data) {
  quotations();
  tradeRoundTrip(data.token);
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
