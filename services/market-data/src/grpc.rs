//! gRPC adapter. RPCs not implemented yet answer UNIMPLEMENTED (generated stubs).

use exchange_proto::marketdata::v1::market_data_service_server::MarketDataService;

#[allow(dead_code)]
pub struct MarketData {
    pool: sqlx::PgPool,
    redis: fred::clients::Client,
}

impl MarketData {
    pub fn new(pool: sqlx::PgPool, redis: fred::clients::Client) -> Self {
        Self { pool, redis }
    }
}

#[tonic::async_trait]
impl MarketDataService for MarketData {}
