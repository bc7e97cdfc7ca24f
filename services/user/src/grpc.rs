//! gRPC adapter. RPCs not implemented yet answer UNIMPLEMENTED (generated stubs).

use exchange_proto::user::v1::user_service_server::UserService;

pub struct User {
    #[allow(dead_code)]
    pool: sqlx::PgPool,
}

impl User {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl UserService for User {}
