//! The one classification of a failed API call: every failure carries the ECS error type
//! it amounts to, and whether sending the same call again later may succeed follows from
//! that type alone.

use berth_messages::codec::CodecError;
use berth_messages::command::Action;
pub use berth_messages::error_chain;
use berth_messages::{subjects, ApiError, ErrorType};
use std::time::Duration;

/// Why an API call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an ECS error. The error is the answer, not a cause, so it is
    /// part of this error's message rather than its source.
    #[error("{action}: {error}")]
    Refused { action: Action, error: ApiError },
    /// NATS has no subscriber for the action: no control-plane replica serves the API.
    #[error("{action}: no control-plane replica serves {}", subjects::api(.action.as_str()))]
    NoResponders {
        action: Action,
        #[source]
        source: async_nats::RequestError,
    },
    /// No attempt was answered within the call's timeout.
    #[error("{action}: no answer within {timeout:?}")]
    TimedOut {
        action: Action,
        timeout: Duration,
        #[source]
        source: async_nats::RequestError,
    },
    /// The request could not be sent (connection closed, publish failed).
    #[error("{action}: the request could not be sent")]
    Request {
        action: Action,
        #[source]
        source: async_nats::RequestError,
    },
    /// The request could not be encoded.
    #[error("{action}: the request cannot be encoded")]
    Encode {
        action: Action,
        #[source]
        source: CodecError,
    },
    /// The reply could not be decoded (a control plane of another version).
    #[error("{action}: the reply cannot be decoded")]
    Decode {
        action: Action,
        #[source]
        source: CodecError,
    },
}

impl ClientError {
    /// The action of the failed call.
    pub fn action(&self) -> Action {
        match self {
            Self::Refused { action, .. }
            | Self::NoResponders { action, .. }
            | Self::TimedOut { action, .. }
            | Self::Request { action, .. }
            | Self::Encode { action, .. }
            | Self::Decode { action, .. } => *action,
        }
    }

    /// The ECS error type the failure amounts to: the answer's own type; a
    /// `ClientException` for a request that cannot be encoded or sent as it is (too
    /// large for the server, or an invalid subject); a `ServerException` when no replica
    /// answered or its answer cannot be read, since the fault is then on the server's
    /// side (absent, hung, unreachable or of another version).
    pub fn error_type(&self) -> ErrorType {
        use async_nats::client::RequestErrorKind;
        match self {
            Self::Refused { error, .. } => error.error_type,
            Self::Encode { .. } => ErrorType::ClientException,
            Self::Request { source, .. } if source.kind() != RequestErrorKind::Other => {
                ErrorType::ClientException
            }
            Self::NoResponders { .. }
            | Self::TimedOut { .. }
            | Self::Request { .. }
            | Self::Decode { .. } => ErrorType::ServerException,
        }
    }

    /// Worth sending again later: the server's side failed, so the call may succeed once
    /// it is back. Anything else is a definitive refusal of this request. A mutation that
    /// failed retryably may or may not have taken effect; sent again under the same
    /// command id, it takes effect at most once.
    pub fn is_retryable(&self) -> bool {
        self.error_type() == ErrorType::ServerException
    }

    /// The ECS error the API answered with, if it answered.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The failure as an ECS error body: the answer itself, or one of
    /// [`ClientError::error_type`] describing the failure and its causes.
    pub fn into_api_error(self) -> ApiError {
        match self {
            Self::Refused { error, .. } => error,
            other => ApiError::new(other.error_type(), error_chain(&other)),
        }
    }

    /// Maps a failed request (after every attempt) to its failure; `timeout` is the call's.
    pub(crate) fn from_request(
        action: Action,
        timeout: Duration,
        source: async_nats::RequestError,
    ) -> Self {
        use async_nats::client::RequestErrorKind;
        match source.kind() {
            RequestErrorKind::NoResponders => Self::NoResponders { action, source },
            RequestErrorKind::TimedOut => Self::TimedOut {
                action,
                timeout,
                source,
            },
            _ => Self::Request { action, source },
        }
    }
}

/// Why a connection to NATS could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A server URL does not parse.
    #[error("'{url}' is not a NATS URL; expected e.g. nats://127.0.0.1:4222")]
    BadUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// No server URL was given.
    #[error("no NATS server URL given")]
    NoServer,
    /// None of the servers accepted the connection.
    #[error("cannot connect to NATS at {servers}")]
    Failed {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// No server answered within the connection timeout.
    #[error("cannot connect to NATS at {servers}: timed out after {timeout:?}")]
    TimedOut { servers: String, timeout: Duration },
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::client::RequestErrorKind;

    fn request_error(kind: RequestErrorKind) -> async_nats::RequestError {
        async_nats::RequestError::new(kind)
    }

    fn refused(error: ApiError) -> ClientError {
        ClientError::Refused {
            action: Action::RunTask,
            error,
        }
    }

    #[test]
    fn server_side_failures_are_retryable_and_refusals_are_not() {
        let timeout = Duration::from_secs(3);
        let transport = [
            RequestErrorKind::TimedOut,
            RequestErrorKind::NoResponders,
            RequestErrorKind::Other,
        ]
        .map(|kind| ClientError::from_request(Action::StopTask, timeout, request_error(kind)));
        for e in &transport {
            assert_eq!(e.error_type(), ErrorType::ServerException, "{e}");
            assert!(e.is_retryable(), "{e}");
            assert_eq!(e.action(), Action::StopTask);
            assert!(e.api_error().is_none());
        }
        assert!(matches!(transport[0], ClientError::TimedOut { .. }));
        assert!(matches!(transport[1], ClientError::NoResponders { .. }));
        assert!(matches!(transport[2], ClientError::Request { .. }));

        for kind in [
            RequestErrorKind::MaxPayloadExceeded,
            RequestErrorKind::InvalidSubject,
        ] {
            let e = ClientError::from_request(Action::RunTask, timeout, request_error(kind));
            assert!(matches!(e, ClientError::Request { .. }));
            assert_eq!(e.error_type(), ErrorType::ClientException, "{e}");
            assert!(!e.is_retryable(), "{e}");
        }

        let undecodable = ClientError::Decode {
            action: Action::ListTasks,
            source: CodecError::Splice("truncated".into()),
        };
        assert!(undecodable.is_retryable());

        assert!(refused(ApiError::server("journal unavailable")).is_retryable());
        for error in [
            ApiError::invalid("bad count"),
            ApiError::client("not JSON"),
            ApiError::cluster_not_found("c1"),
            ApiError::new(ErrorType::ConflictException, "taken"),
        ] {
            let e = refused(error.clone());
            assert_eq!(e.error_type(), error.error_type);
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.api_error(), Some(&error));
        }

        let unencodable = ClientError::Encode {
            action: Action::RunTask,
            source: CodecError::Splice("map key".into()),
        };
        assert_eq!(unencodable.error_type(), ErrorType::ClientException);
        assert!(!unencodable.is_retryable());
    }

    #[test]
    fn failures_keep_their_causes() {
        let e = ClientError::from_request(
            Action::DescribeTasks,
            Duration::from_secs(2),
            request_error(RequestErrorKind::NoResponders),
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(
            e.to_string().contains(&subjects::api("DescribeTasks")),
            "{e}"
        );
        let body = e.into_api_error();
        assert_eq!(body.error_type, ErrorType::ServerException);
        assert!(body
            .message
            .starts_with("DescribeTasks: no control-plane replica"));
        assert!(body.message.matches(": ").count() >= 2, "{}", body.message);

        let answer = ApiError::cluster_not_found("prod");
        assert_eq!(refused(answer.clone()).into_api_error(), answer);
    }
}
