//! Request bodies: size-capped reads and JSON parsing whose errors name the offending field.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest JSON body on control-plane routes.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;
/// Largest raw file body on the data plane.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

pub async fn read_capped(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    })
}

/// Reads a JSON body of at most [`MAX_JSON_BYTES`] and parses it as `T`.
pub async fn read_json<T: DeserializeOwned>(body: Body, empty_ok: bool) -> Result<T, ApiError> {
    let bytes = read_capped(body, MAX_JSON_BYTES).await?;
    parse_json(&bytes, empty_ok)
}

/// Parses `bytes` as `T`. An empty body is read as `{}` when `empty_ok`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            b"{}"
        } else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "validation_error",
                "request body is required",
            ));
        }
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("malformed JSON: {inner}"),
            );
        }
        let msg = strip_position(&inner.to_string());
        if path == "." || path.is_empty() {
            // Missing fields and unknown fields report at the root; name the field if serde did.
            let field = msg
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "body".to_string());
            ApiError::invalid(field, msg)
        } else {
            ApiError::invalid(path, msg)
        }
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// An integer field of a JSON object: `None` when absent or null (an error if `required`),
/// 400 naming the field when it is not an integer.
pub fn int_field(
    v: &serde_json::Value,
    field: &str,
    required: bool,
) -> Result<Option<i64>, ApiError> {
    match v.get(field) {
        None | Some(serde_json::Value::Null) if required => {
            Err(ApiError::invalid(field, "is required"))
        }
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, "must be an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct R {
        name: String,
        n: Option<u32>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<R>(br#"{"name": 5}"#, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = parse_json::<R>(br#"{"name": "a", "n": -1}"#, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("n"));
        let e = parse_json::<R>(br#"{}"#, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = parse_json::<R>(br#"{"name":"a","bogus":1}"#, false).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("bogus"));
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        let e = parse_json::<R>(b"{nope", false).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(parse_json::<serde_json::Value>(b"", true).is_ok());
        assert!(parse_json::<serde_json::Value>(b"", false).is_err());
    }
}
