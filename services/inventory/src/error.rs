//! Inventory errors and their gRPC statuses (with Upbit error names where the
//! client will see them).

use service_kit::grpc::named_status;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Inconsistent(String),
    /// A fill the order's terms do not allow (a caller's bug or worse).
    #[error("{0}")]
    FillRefused(String),
    /// The reservation's `not_after` passed before it could be made.
    #[error("{0}")]
    PlanExpired(String),
    /// The faucet's cap over the last 24 hours.
    #[error("{0}")]
    DepositLimit(String),
    /// Another attempt of the order was executed with another record.
    #[error("{0}")]
    OrderConflict(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<InventoryError> for tonic::Status {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::InsufficientFunds => named_status(
                Code::FailedPrecondition,
                "insufficient_funds",
                "insufficient funds",
            ),
            InventoryError::NotFound(m) => named_status(Code::NotFound, "not_found", m),
            InventoryError::Invalid(m) => {
                named_status(Code::InvalidArgument, "validation_error", m)
            }
            InventoryError::Inconsistent(m) => {
                tracing::error!(message = %m, "inconsistent inventory request");
                named_status(Code::FailedPrecondition, "inconsistent_request", m)
            }
            InventoryError::FillRefused(m) => {
                tracing::error!(message = %m, "refused a fill outside its order's terms");
                crate::metrics::FILLS_REFUSED.inc();
                named_status(Code::FailedPrecondition, "fill_refused", m)
            }
            InventoryError::PlanExpired(m) => {
                named_status(Code::FailedPrecondition, "plan_expired", m)
            }
            InventoryError::DepositLimit(m) => {
                named_status(Code::InvalidArgument, "deposit_limit_exceeded", m)
            }
            InventoryError::OrderConflict(m) => {
                named_status(Code::AlreadyExists, "order_conflict", m)
            }
            InventoryError::Database(e) => {
                tracing::warn!(error = %e, "database error");
                tonic::Status::unavailable("the database is temporarily unavailable; retry")
            }
        }
    }
}
