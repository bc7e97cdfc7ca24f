// Ramp-up: the arrival rate of quotation requests climbs in steps (STEP_SECONDS
// each, default 60) up to PEAK requests/s (default 400), then falls. Watch where p99
// bends in Grafana and when the HPAs add pods.
//   scripts/load-test ramp-up --base-url https://127.0.0.1 --cluster-ingress
import { MARKETS, get, pick } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

const PEAK = Number(__ENV.PEAK || 400);
const STEP = `${Number(__ENV.STEP_SECONDS || 60)}s`;

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: 10, timeUnit: '1s',
      preAllocatedVUs: 50, maxVUs: 500,
      stages: [
        { target: Math.round(PEAK / 8), duration: STEP },
        { target: Math.round(PEAK / 4), duration: STEP },
        { target: Math.round(PEAK / 2), duration: STEP },
        { target: PEAK, duration: STEP },
        { target: PEAK, duration: STEP },
        { target: 0, duration: '30s' },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.05'],
    http_req_duration: ['p(99)<2000'],
  },
};

export default function () {
  const m = pick(MARKETS);
  if (Math.random() < 0.5) get(`/api/v1/tickers?markets=${m}`, 'native tickers');
  else get(`/api/v1/orderbooks/${m}?depth=15`, 'native orderbook');
}
