//! One error type for every route, rendered in the caller's dialect.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandboxd_core::CoreError;
use sandboxd_engine::{AgentError, EngineError};
use serde_json::json;
use tracing::error;

/// Which API shape an error is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// NeevCloud control plane: `{error, message, code, details?}`.
    Neev,
    /// NeevCloud data plane: `{reason_code, message}`.
    DataPlane,
    /// Leap0: `{message, errors?: [{field, error}]}`.
    Leap0,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable machine code (`not_found`, `validation_error`, ...).
    pub code: &'static str,
    pub message: String,
    /// For validation errors: the JSON field at fault.
    pub field: Option<String>,
    pub dialect: Dialect,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            dialect: Dialect::Neev,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "validation_error",
            message: format!("{field}: {message}"),
            field: Some(field),
            dialect: Dialect::Neev,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid API key",
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn in_dialect(mut self, d: Dialect) -> Self {
        self.dialect = d;
        self
    }

    /// The data-plane reason code for this error.
    fn reason_code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "invalid_argument",
            StatusCode::UNAUTHORIZED => "unauthenticated",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "failed_precondition",
            StatusCode::TOO_MANY_REQUESTS => "resource_exhausted",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
            _ => "internal",
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument { field, message } => ApiError::invalid(field, message),
            CoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            CoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CoreError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            CoreError::QuotaExceeded(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "sandbox_quota_exceeded", m)
            }
            CoreError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            CoreError::Internal(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Core(c) => c.into(),
            EngineError::Agent(AgentError::Unreachable(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "sandbox is not reachable",
            ),
            other => {
                // Details (paths, commands, stderr) go to the log, never to the client.
                error!(error = %other, detail = ?other, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.dialect {
            Dialect::Neev => {
                let mut v =
                    json!({"error": self.message, "message": self.message, "code": self.code});
                if let Some(f) = &self.field {
                    v["details"] = json!(format!("field: {f}"));
                    v["field"] = json!(f);
                }
                v
            }
            Dialect::DataPlane => {
                json!({"reason_code": self.reason_code(), "message": self.message})
            }
            Dialect::Leap0 => {
                let mut v = json!({"message": self.message, "code": self.code});
                if let Some(f) = &self.field {
                    let msg = self
                        .message
                        .strip_prefix(&format!("{f}: "))
                        .unwrap_or(&self.message);
                    v["errors"] = json!([{"field": f, "error": msg}]);
                } else if self.status == StatusCode::BAD_REQUEST {
                    // The spec's 400 shape always carries `errors`.
                    v["errors"] = json!([{"field": "body", "error": self.message}]);
                }
                v
            }
        };
        (self.status, Json(body)).into_response()
    }
}
