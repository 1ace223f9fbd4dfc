//! Reading an API reply: an error reply carries the micro-service error headers
//! (`Nats-Service-Error-Code`, `Nats-Service-Error`) and an ECS error body in the
//! request's encoding; any other reply is the action's response, with the journal
//! sequence it reflects in `Berth-Sequence`.

use berth_messages::codec::{self, CodecError, Encoding};
use berth_messages::{headers, ApiError, ErrorType};
use serde::de::DeserializeOwned;

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T> {
    /// The action's response.
    pub response: T,
    /// The journal sequence the reply reflects (`Berth-Sequence`): after a mutation, its
    /// last write; after a read, what the answering replica's view had applied.
    pub sequence: Option<u64>,
}

/// What a reply message says when it is not the response.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// An error reply.
    #[error(transparent)]
    Refused(ApiError),
    /// A reply that is not an error and does not decode as the response.
    #[error("the reply cannot be decoded")]
    Undecodable(#[source] CodecError),
}

/// Reads a reply to a request sent in `encoding`.
pub fn decode<T: DeserializeOwned>(
    encoding: Encoding,
    message: &async_nats::Message,
) -> Result<Reply<T>, ReplyError> {
    let h = message.headers.as_ref();
    if let Some(code) = h.and_then(|h| h.get(headers::SERVICE_ERROR_CODE)) {
        return Err(ReplyError::Refused(api_error(
            encoding,
            message,
            code.as_str(),
        )));
    }
    let response = codec::decode(encoding, &message.payload).map_err(ReplyError::Undecodable)?;
    Ok(Reply {
        response,
        sequence: sequence(message),
    })
}

/// The journal sequence a reply reflects (`Berth-Sequence`), if it says.
pub fn sequence(message: &async_nats::Message) -> Option<u64> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SEQUENCE))
        .and_then(|v| v.as_str().trim().parse().ok())
}

/// The ECS error of an error reply: its body (in the request's encoding, else the other
/// one), else what its headers say.
fn api_error(encoding: Encoding, message: &async_nats::Message, code: &str) -> ApiError {
    let other = match encoding {
        Encoding::Json => Encoding::MsgPack,
        Encoding::MsgPack => Encoding::Json,
    };
    if let Some(e) = [encoding, other]
        .into_iter()
        .find_map(|enc| codec::decode::<ApiError>(enc, &message.payload).ok())
    {
        return e;
    }
    let description = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::SERVICE_ERROR))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(&message.payload).into_owned());
    from_description(code, &description)
}

/// An error from the `Nats-Service-Error` description (`<ECS type>: <message>`, as the
/// API writes it) and the status code, for an error body that cannot be read.
fn from_description(code: &str, description: &str) -> ApiError {
    let named = description.split_once(": ").and_then(|(name, message)| {
        let error_type =
            serde_json::from_value::<ErrorType>(serde_json::Value::from(name.trim())).ok()?;
        Some(ApiError::new(error_type, message))
    });
    named.unwrap_or_else(|| {
        let client_side = code
            .trim()
            .parse::<u16>()
            .is_ok_and(|code| (400..500).contains(&code));
        let error_type = if client_side {
            ErrorType::ClientException
        } else {
            ErrorType::ServerException
        };
        ApiError::new(error_type, description)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)], payload: Vec<u8>) -> async_nats::Message {
        let mut h = async_nats::HeaderMap::new();
        for (name, value) in headers {
            h.insert(*name, *value);
        }
        async_nats::Message {
            subject: "reply".into(),
            reply: None,
            payload: payload.into(),
            headers: Some(h),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn error_replies_are_read_in_either_encoding_or_from_headers() {
        let error = ApiError::cluster_not_found("prod");
        for body_encoding in [Encoding::Json, Encoding::MsgPack] {
            let body = codec::encode(body_encoding, &error).unwrap_or_default();
            let reply = message(&[(headers::SERVICE_ERROR_CODE, "404")], body);
            for asked in [Encoding::Json, Encoding::MsgPack] {
                match decode::<serde_json::Value>(asked, &reply) {
                    Err(ReplyError::Refused(e)) => assert_eq!(e, error),
                    other => panic!("{other:?}"),
                }
            }
        }
        let unreadable = |code: &str, description: &str| {
            let reply = message(
                &[
                    (headers::SERVICE_ERROR_CODE, code),
                    (headers::SERVICE_ERROR, description),
                ],
                b"\xc1".to_vec(),
            );
            match decode::<serde_json::Value>(Encoding::Json, &reply) {
                Err(ReplyError::Refused(e)) => e,
                other => panic!("{other:?}"),
            }
        };
        let e = unreadable("400", "InvalidParameterException: count must be positive");
        assert_eq!(e.error_type, ErrorType::InvalidParameterException);
        assert_eq!(e.message, "count must be positive");
        let e = unreadable("404", "gone");
        assert_eq!(e.error_type, ErrorType::ClientException);
        let e = unreadable("503", "unavailable");
        assert_eq!(e.error_type, ErrorType::ServerException);
        let e = unreadable("?", "NoSuchException: x");
        assert_eq!(e.error_type, ErrorType::ServerException);
    }

    #[test]
    fn responses_carry_their_sequence() {
        let body =
            codec::encode(Encoding::MsgPack, &serde_json::json!({"a": 1})).unwrap_or_default();
        let reply = message(&[(headers::SEQUENCE, "42")], body);
        let read = decode::<serde_json::Value>(Encoding::MsgPack, &reply);
        assert!(
            matches!(
                read,
                Ok(Reply {
                    sequence: Some(42),
                    ..
                })
            ),
            "{read:?}"
        );
        let reply = message(&[], b"{".to_vec());
        assert!(matches!(
            decode::<serde_json::Value>(Encoding::Json, &reply),
            Err(ReplyError::Undecodable(_))
        ));
    }
}
