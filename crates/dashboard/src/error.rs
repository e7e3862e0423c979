//! What can go wrong in a dashboard request, and how it is told to the user: in words, next to
//! the control that caused it, never as a bare status code or an internal detail.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandboxd_core::CoreError;
use sandboxd_engine::EngineError;
use thiserror::Error;

use crate::views::{html, ErrorFragment, ErrorPage};

#[derive(Debug, Error)]
pub enum UiError {
    #[error("engine")]
    Engine(#[from] EngineError),
    /// A form field the dashboard checks itself; the message is for the user.
    #[error("{0}")]
    Invalid(String),
    #[error("template")]
    Render(#[from] askama::Error),
}

impl UiError {
    pub fn invalid(m: impl Into<String>) -> Self {
        UiError::Invalid(m.into())
    }

    /// The message shown to the user.
    pub fn words(&self) -> String {
        match self {
            UiError::Invalid(m) => m.clone(),
            UiError::Engine(EngineError::Core(c)) => match c {
                CoreError::InvalidArgument { field, message } => {
                    format!("Invalid {field}: {message}.")
                }
                CoreError::NotFound { kind, .. } => {
                    format!("That {kind} does not exist (any more).")
                }
                CoreError::Conflict(m) => format!("Not possible right now: {m}."),
                CoreError::Forbidden(m) => format!("Not allowed: {m}."),
                CoreError::QuotaExceeded(m) => format!("Quota reached: {m}."),
                CoreError::Unavailable(m) => format!("No capacity: {m}."),
                CoreError::Internal(m) => format!("It failed: {m}."),
            },
            UiError::Engine(EngineError::BadKey(m)) => m.clone(),
            UiError::Engine(EngineError::Agent(_)) => {
                "The sandbox did not answer; try again in a moment.".into()
            }
            UiError::Engine(_) | UiError::Render(_) => {
                "The server failed to do this; its log has the details.".into()
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            UiError::Invalid(_) => StatusCode::BAD_REQUEST,
            UiError::Engine(EngineError::Core(c)) => match c {
                CoreError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                CoreError::NotFound { .. } => StatusCode::NOT_FOUND,
                CoreError::Conflict(_) => StatusCode::CONFLICT,
                CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
                CoreError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                CoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                CoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            UiError::Engine(EngineError::BadKey(_)) => StatusCode::BAD_REQUEST,
            UiError::Engine(_) | UiError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        if self.status().is_server_error() {
            tracing::error!(error = %self, detail = ?self, "dashboard request failed");
        }
    }

    /// A whole page saying what went wrong, with the matching status.
    pub fn page(&self) -> Response {
        self.log();
        let body = ErrorPage {
            message: self.words(),
        }
        .render()
        .unwrap_or_else(|_| "error".into());
        let mut r = html(body);
        *r.status_mut() = self.status();
        r
    }

    /// A fragment swapped in next to the control (status 200, so htmx swaps it).
    pub fn fragment(&self) -> Response {
        self.log();
        let body = ErrorFragment {
            message: self.words(),
        }
        .render()
        .unwrap_or_else(|_| "error".into());
        html(body)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        self.page()
    }
}

pub(crate) async fn not_found() -> Response {
    UiError::Engine(EngineError::Core(CoreError::not_found("page", ""))).page()
}
