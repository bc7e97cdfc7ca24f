//! Order errors and their gRPC statuses, named as Upbit names them.

use service_kit::grpc::named_status;
use tonic::Code;

use crate::domain::Side;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// InvalidArgument with an Upbit name (`invalid_price_bid`, `under_min_total_ask`, …).
    #[error("{1}")]
    Named(&'static str, String),
    #[error("insufficient funds")]
    InsufficientFunds(Side),
    #[error("order not found")]
    NotFound,
    #[error("the order is {0} and cannot be cancelled")]
    NotCancellable(&'static str),
    #[error("{0}")]
    Unavailable(String),
    /// The live orderbook is missing or too old to fill against (a stale feed).
    #[error("{0}")]
    StaleMarket(String),
    #[error("{0}")]
    Internal(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl OrderError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Named("validation_error", message.into())
    }

    /// The client-facing error name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Named(name, _) => name,
            Self::InsufficientFunds(Side::Bid) => "insufficient_funds_bid",
            Self::InsufficientFunds(Side::Ask) => "insufficient_funds_ask",
            Self::NotFound => "order_not_found",
            Self::NotCancellable(_) => "order_not_cancellable",
            Self::Unavailable(_) | Self::Database(_) => "service_unavailable",
            Self::StaleMarket(_) => "market_data_stale",
            Self::Internal(_) => "server_error",
        }
    }
}

impl From<OrderError> for tonic::Status {
    fn from(err: OrderError) -> Self {
        let name = err.name();
        match err {
            OrderError::Named(_, m) => named_status(Code::InvalidArgument, name, m),
            OrderError::InsufficientFunds(_) => named_status(
                Code::FailedPrecondition,
                name,
                "insufficient funds for this order",
            ),
            OrderError::NotFound => named_status(Code::NotFound, name, "order not found"),
            e @ OrderError::NotCancellable(_) => {
                named_status(Code::FailedPrecondition, name, e.to_string())
            }
            OrderError::Unavailable(m) => {
                tracing::warn!(message = %m, "dependency unavailable");
                named_status(
                    Code::Unavailable,
                    name,
                    "a dependency is temporarily unavailable; retry",
                )
            }
            OrderError::StaleMarket(m) => {
                tracing::warn!(message = %m, "refused an order: stale market data");
                named_status(Code::Unavailable, name, m)
            }
            OrderError::Internal(m) => {
                tracing::error!(message = %m, "internal error");
                named_status(Code::Internal, name, "internal error")
            }
            OrderError::Database(e) => {
                telemetry::db::failed(&e);
                tracing::warn!(error = %e, "database error");
                named_status(
                    Code::Unavailable,
                    name,
                    "the database is temporarily unavailable; retry",
                )
            }
        }
    }
}
