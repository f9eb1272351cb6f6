//! API errors in AWS's rest-json shape: `x-amzn-ErrorType`, a JSON `message`, AWS's statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use roentgen_model::api::ErrorBody;
use roentgen_store::StoreError;

/// Every kind of error the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A parameter is missing, out of range or inconsistent.
    InvalidRequest,
    /// The body is not JSON of the operation's shape.
    Serialization,
    /// The body is over the configured size limit.
    PayloadTooLarge,
    /// The sampling rule limit is reached.
    RuleLimitExceeded,
    /// No operation at this path and method.
    UnknownOperation,
    /// roentgen cannot take this request now (its disk is short of room, or it is shutting
    /// down); the client may retry later.
    ServiceUnavailable,
    /// Something failed inside roentgen; the client may retry.
    Internal,
}

impl ErrorKind {
    /// The one place an error kind becomes an AWS error code and an HTTP status.
    pub fn code_and_status(self) -> (&'static str, StatusCode) {
        match self {
            Self::InvalidRequest => ("InvalidRequestException", StatusCode::BAD_REQUEST),
            Self::Serialization => ("SerializationException", StatusCode::BAD_REQUEST),
            Self::PayloadTooLarge => ("RequestEntityTooLargeException", StatusCode::PAYLOAD_TOO_LARGE),
            Self::RuleLimitExceeded => ("RuleLimitExceededException", StatusCode::BAD_REQUEST),
            Self::UnknownOperation => ("UnknownOperationException", StatusCode::NOT_FOUND),
            Self::ServiceUnavailable => ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
            Self::Internal => ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// An error answer: its kind and a message that tells the user what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::InvalidRequest, message: message.into() }
    }

    pub fn missing(member: &str) -> Self {
        Self::invalid(format!("{member} is required"))
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self { kind: ErrorKind::Internal, message: format!("internal error: {error}") }
    }

    /// A store error: one the client can wait out, or an internal one.
    pub fn store(error: StoreError) -> Self {
        match error {
            StoreError::DiskFull { .. } | StoreError::Closed => {
                Self { kind: ErrorKind::ServiceUnavailable, message: error.to_string() }
            }
            error => Self::internal(error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.kind.code_and_status();
        let body = serde_json::to_vec(&ErrorBody { message: &self.message }).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert("x-amzn-ErrorType", HeaderValue::from_static(code));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
