// Circuit breaker: VUS concurrent clients (default 60) hammer an endpoint served by
// market-data with no pause for DURATION (default 60 s). With
// helm/exchange/values-faults.yaml the DestinationRule allows 20 requests in flight,
// so the gateway's sidecar answers the excess at once with 503 (Envoy flag UO: the
// circuit is open) instead of queueing; outlier detection ejects a failing pod.
// The summary counts 503s (circuit_open) and Grafana's "Circuit breaking" panel
// shows the same from the mesh side.
//   scripts/load-test circuit-breaker --base-url https://127.0.0.1 --cluster-ingress
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { BASE_URL, MARKETS } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

const circuitOpen = new Rate('circuit_open');

export const options = {
  vus: Number(__ENV.VUS || 60),
  duration: __ENV.DURATION || '60s',
  thresholds: {
    // The point is to see the breaker trip, not to pass; these only guard against a
    // dead system (nothing but errors) or a hung one.
    circuit_open: ['rate<0.95'],
    http_req_duration: ['p(99)<5000'],
  },
};

export default function () {
  const res = http.get(`${BASE_URL}/api/v1/tickers?markets=${MARKETS.join(',')}`, { tags: { name: 'native tickers' } });
  circuitOpen.add(res.status === 503);
  check(res, { 'answered (200, or 503 from an open circuit)': (r) => r.status === 200 || r.status === 503 });
}
