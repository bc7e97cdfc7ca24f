//! gRPC adapter. RPCs not implemented yet answer UNIMPLEMENTED (generated stubs).

use exchange_proto::inventory::v1::inventory_service_server::InventoryService;

pub struct Inventory {
    #[allow(dead_code)]
    pool: sqlx::PgPool,
}

impl Inventory {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl InventoryService for Inventory {}
