//! User service errors and their gRPC statuses (with Upbit error names).

use service_kit::grpc::named_status;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("email already registered")]
    Conflict,
    #[error("wrong email or password")]
    BadCredentials,
    /// Unauthenticated, with the Upbit error name.
    #[error("{1}")]
    Token(&'static str, String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("too many active API keys")]
    Limit,
    /// Every password-hashing turn is taken.
    #[error("busy")]
    Busy,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<UserError> for tonic::Status {
    fn from(err: UserError) -> Self {
        match err {
            UserError::Invalid(m) => named_status(Code::InvalidArgument, "validation_error", m),
            UserError::Conflict => named_status(
                Code::AlreadyExists,
                "email_already_registered",
                "this email is already registered",
            ),
            UserError::BadCredentials => named_status(
                Code::Unauthenticated,
                "invalid_credentials",
                "wrong email or password",
            ),
            UserError::Token(name, m) => named_status(Code::Unauthenticated, name, m),
            UserError::NotFound(what) => {
                named_status(Code::NotFound, "not_found", format!("{what} not found"))
            }
            UserError::Limit => named_status(
                Code::FailedPrecondition,
                "api_key_limit",
                "at most 10 active API keys; revoke one first",
            ),
            UserError::Busy => named_status(
                Code::ResourceExhausted,
                "too_many_requests",
                "sign-in is busy; retry in a moment",
            ),
            UserError::Unavailable(m) => {
                tracing::warn!(message = %m, "dependency unavailable");
                tonic::Status::unavailable("a dependency is temporarily unavailable; retry")
            }
            UserError::Internal(m) => {
                tracing::error!(message = %m, "internal error");
                tonic::Status::internal("internal error")
            }
            UserError::Database(e) => {
                telemetry::db::failed(&e);
                tracing::warn!(error = %e, "database error");
                tonic::Status::unavailable("the database is temporarily unavailable; retry")
            }
        }
    }
}
