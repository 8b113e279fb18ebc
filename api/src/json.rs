//! A JSON body extractor whose rejections are JSON errors naming the problem, instead of
//! axum's plain-text ones.

use crate::ApiError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Like `axum::Json`, with JSON errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(
            "the request body is larger than this endpoint accepts; send less, or split it",
        );
    }
    let (field, message) = match &r {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field ("unknown field `x`", "missing field `y`").
            let text = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            (
                field_of(&text),
                format!("request body does not match: {text}"),
            )
        }
        JsonRejection::JsonSyntaxError(e) => (
            "body".to_string(),
            format!(
                "request body is not valid JSON: {}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
        ),
        JsonRejection::MissingJsonContentType(_) => (
            "body".into(),
            "send the body as JSON with Content-Type: application/json".into(),
        ),
        other => ("body".into(), other.body_text()),
    };
    ApiError::invalid(&field, message)
}

/// Best effort: the field named in a serde message, else `body`.
fn field_of(text: &str) -> String {
    if let Some(start) = text.find('`') {
        if let Some(len) = text[start + 1..].find('`') {
            return text[start + 1..start + 1 + len].to_string();
        }
    }
    if let Some((path, _)) = text.split_once(": ") {
        if !path.contains(' ') {
            return path.to_string();
        }
    }
    "body".into()
}

/// Like `axum::extract::Query`, with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let text = e.body_text();
                Err(ApiError::invalid(
                    &field_of(&text),
                    format!("bad query parameters: {text}"),
                ))
            }
            Err(e) => Err(ApiError::invalid("query", e.body_text())),
        }
    }
}
