// gRPC: market-data's GetTickers and ListMarkets over gRPC with server reflection
// (no .proto files needed). Inside the cluster the mesh requires mTLS, so reach the
// pod through a port-forward (it bypasses the sidecar's inbound mTLS):
//   kubectl -n exchange port-forward svc/exchange-market-data 50051:50051
//   scripts/load-test grpc --grpc-addr 127.0.0.1:50051
// Locally (scripts/up) market-data listens on 127.0.0.1:50051 already.
import grpc from 'k6/net/grpc';
import { check, sleep } from 'k6';
export { handleSummary } from './lib/summary.js';

const ADDR = __ENV.GRPC_ADDR || '127.0.0.1:50051';
const client = new grpc.Client();

export const options = {
  vus: Number(__ENV.VUS || 5),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    checks: ['rate>0.99'],
    grpc_req_duration: ['p(95)<200'],
  },
};

export default function () {
  if (__ITER === 0) client.connect(ADDR, { plaintext: true, reflect: true, timeout: '5s' });
  const tickers = client.invoke('exchange.marketdata.v1.MarketDataService/GetTickers', { markets: ['KRW-BTC', 'KRW-ETH'] });
  check(tickers, {
    'GetTickers OK': (r) => r && r.status === grpc.StatusOK,
    'GetTickers served by market-data': (r) => r && String((r.headers || {})['x-served-by'] || '').startsWith('market-data/'),
  });
  const markets = client.invoke('exchange.marketdata.v1.MarketDataService/ListMarkets', { quote_currencies: ['KRW'] });
  check(markets, { 'ListMarkets OK': (r) => r && r.status === grpc.StatusOK });
  sleep(0.1);
}
