//! The one mapping of Berth failures onto ECS error types, and the error body every API
//! reply and command outcome carries: `{"__type": "...", "message": "..."}`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// ECS error types (the `__type` of an error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorType {
    ClientException,
    ServerException,
    InvalidParameterException,
    ClusterNotFoundException,
    ClusterContainsContainerInstancesException,
    ClusterContainsServicesException,
    ClusterContainsTasksException,
    ServiceNotFoundException,
    ServiceNotActiveException,
    TargetNotFoundException,
    AttributeLimitExceededException,
    LimitExceededException,
    ConflictException,
    ResourceNotFoundException,
    ResourceInUseException,
    UnsupportedFeatureException,
    AccessDeniedException,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientException => "ClientException",
            Self::ServerException => "ServerException",
            Self::InvalidParameterException => "InvalidParameterException",
            Self::ClusterNotFoundException => "ClusterNotFoundException",
            Self::ClusterContainsContainerInstancesException => {
                "ClusterContainsContainerInstancesException"
            }
            Self::ClusterContainsServicesException => "ClusterContainsServicesException",
            Self::ClusterContainsTasksException => "ClusterContainsTasksException",
            Self::ServiceNotFoundException => "ServiceNotFoundException",
            Self::ServiceNotActiveException => "ServiceNotActiveException",
            Self::TargetNotFoundException => "TargetNotFoundException",
            Self::AttributeLimitExceededException => "AttributeLimitExceededException",
            Self::LimitExceededException => "LimitExceededException",
            Self::ConflictException => "ConflictException",
            Self::ResourceNotFoundException => "ResourceNotFoundException",
            Self::ResourceInUseException => "ResourceInUseException",
            Self::UnsupportedFeatureException => "UnsupportedFeatureException",
            Self::AccessDeniedException => "AccessDeniedException",
        }
    }

    /// The HTTP-like status carried in `Nats-Service-Error-Code`: 500 for server faults,
    /// 404 for missing resources, 409 for conflicts, 400 otherwise.
    pub fn status_code(self) -> u16 {
        match self {
            Self::ServerException => 500,
            Self::ClusterNotFoundException
            | Self::ServiceNotFoundException
            | Self::TargetNotFoundException
            | Self::ResourceNotFoundException => 404,
            Self::ConflictException | Self::ResourceInUseException => 409,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ECS-style API error: the body of every error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct ApiError {
    #[serde(rename = "__type")]
    pub error_type: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn new(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self {
            error_type,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorType::InvalidParameterException, message)
    }
    pub fn client(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ClientException, message)
    }
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(ErrorType::ServerException, message)
    }
    pub fn service_not_found(service: &str) -> Self {
        Self::new(
            ErrorType::ServiceNotFoundException,
            format!("Service not found: {service}"),
        )
    }
    pub fn service_not_active(service: &str) -> Self {
        Self::new(
            ErrorType::ServiceNotActiveException,
            format!("Service was not ACTIVE: {service}"),
        )
    }
    pub fn cluster_not_found(cluster: &str) -> Self {
        Self::new(
            ErrorType::ClusterNotFoundException,
            format!("Cluster not found: {cluster}"),
        )
    }
}

/// Shorthand for results whose error is an ECS error.
pub type ApiResult<T> = Result<T, ApiError>;

/// Decodes a request body with the ECS mapping: a body that is not exactly one
/// well-formed JSON or MessagePack value is a `ClientException`; a well-formed body with
/// a wrong type, a bad enum value or a missing required field is an
/// `InvalidParameterException`.
pub fn decode_request<T: serde::de::DeserializeOwned>(
    enc: crate::codec::Encoding,
    body: &[u8],
) -> Result<T, ApiError> {
    if !crate::codec::is_well_formed(enc, body) {
        return Err(ApiError::client(format!(
            "request body is not a well-formed {} value",
            match enc {
                crate::codec::Encoding::Json => "JSON",
                crate::codec::Encoding::MsgPack => "MessagePack",
            }
        )));
    }
    crate::codec::decode(enc, body).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Maps a body that failed to decode onto ECS errors: a body that is not JSON or
/// MessagePack at all is a `ClientException`; a well-formed body with a wrong type, a
/// bad enum value or a missing required field is an `InvalidParameterException`.
pub fn decode_error(e: crate::codec::CodecError) -> ApiError {
    use crate::codec::CodecError;
    match &e {
        CodecError::Json(j) if j.is_syntax() || j.is_eof() => {
            ApiError::client(format!("request body is not valid JSON: {j}"))
        }
        CodecError::MsgPackDecode(
            rmp_serde::decode::Error::InvalidMarkerRead(_)
            | rmp_serde::decode::Error::InvalidDataRead(_)
            | rmp_serde::decode::Error::Utf8Error(_),
        ) => ApiError::client(format!("request body is not valid MessagePack: {e}")),
        _ => ApiError::invalid(e.to_string()),
    }
}

/// An error and its sources, `: `-separated, for messages that keep only a string.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_uses_ecs_field_names() {
        let e = ApiError::cluster_not_found("x");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["__type"], "ClusterNotFoundException");
        assert_eq!(json["message"], "Cluster not found: x");
        assert_eq!(e.error_type.status_code(), 404);
    }
}
