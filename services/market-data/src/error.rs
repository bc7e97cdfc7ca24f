//! Market-data errors and their gRPC statuses: the one table of codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum MarketDataError {
    /// A request outside what the API accepts.
    #[error("{0}")]
    Invalid(String),
    /// A well-formed market code the exchange does not list (Upbit's message).
    #[error("Code not found: {0}")]
    UnknownMarket(String),
    /// Postgres or Redis failed; the caller may retry.
    #[error("{what} is temporarily unavailable; retry")]
    Unavailable { what: &'static str, cause: String },
    /// The server is draining.
    #[error("shutting down")]
    ShuttingDown,
}

impl MarketDataError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(service_kit::grpc::bounded(message.into()))
    }

    pub fn database(err: sqlx::Error) -> Self {
        Self::unavailable("the database", &err)
    }

    pub fn redis(err: fred::error::Error) -> Self {
        Self::unavailable("Redis", &err)
    }

    pub fn unavailable(what: &'static str, err: &dyn std::fmt::Display) -> Self {
        Self::Unavailable {
            what,
            cause: err.to_string(),
        }
    }
}

impl From<MarketDataError> for Status {
    fn from(err: MarketDataError) -> Self {
        let message = err.to_string();
        match err {
            MarketDataError::Invalid(_) => Status::invalid_argument(message),
            MarketDataError::UnknownMarket(_) => Status::not_found(message),
            MarketDataError::Unavailable { what, cause } => {
                // Logged and marked on the span here; the client gets no detail.
                telemetry::db::failed(&cause);
                tracing::warn!(error = %cause, "{what} unavailable");
                Status::unavailable(message)
            }
            MarketDataError::ShuttingDown => Status::unavailable(message),
        }
    }
}
