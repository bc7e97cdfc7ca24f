// Spike: a steady BASE requests/s (default 20), then a jump to SPIKE requests/s
// (default 400) within 10 s, held 30 s, and back. The system should shed or absorb
// the burst and recover without errors once it passes.
//   scripts/load-test spike --base-url https://127.0.0.1 --cluster-ingress
import { MARKETS, get, pick } from './lib/exchange.js';
export { handleSummary } from './lib/summary.js';

const BASE = Number(__ENV.BASE || 20);
const SPIKE = Number(__ENV.SPIKE || 400);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: BASE, timeUnit: '1s',
      preAllocatedVUs: 50, maxVUs: 600,
      stages: [
        { target: BASE, duration: '1m' },
        { target: SPIKE, duration: '10s' },
        { target: SPIKE, duration: '30s' },
        { target: BASE, duration: '10s' },
        { target: BASE, duration: '1m' },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.05'],
    checks: ['rate>0.95'],
  },
};

export default function () {
  get(`/api/v1/tickers?markets=${pick(MARKETS)}`, 'native tickers');
}
