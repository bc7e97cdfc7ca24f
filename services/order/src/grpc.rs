//! gRPC adapter. RPCs not implemented yet answer UNIMPLEMENTED (generated stubs).

use exchange_proto::order::v1::order_service_server::OrderService;

pub struct Order {
    #[allow(dead_code)]
    pool: sqlx::PgPool,
}

impl Order {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl OrderService for Order {}
