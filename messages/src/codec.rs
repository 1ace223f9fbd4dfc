//! Encoding of bodies: journal records are always named MessagePack
//! (`rmp_serde::to_vec_named`); API bodies are JSON when the request says
//! `Content-Type: application/json`, MessagePack otherwise, and replies use the
//! request's encoding.

use serde::{de::DeserializeOwned, Serialize};

/// Body encoding of an API request, reply or command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    /// JSON for any `application/json` content type (parameters allowed), MessagePack
    /// otherwise.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct)
                if ct
                    .trim()
                    .to_ascii_lowercase()
                    .starts_with(crate::headers::JSON) =>
            {
                Self::Json
            }
            _ => Self::MsgPack,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => crate::headers::JSON,
            Self::MsgPack => crate::headers::MSGPACK,
        }
    }
}

/// A body that could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid MessagePack: {0}")]
    MsgPackDecode(#[from] rmp_serde::decode::Error),
    #[error("MessagePack encoding failed: {0}")]
    MsgPackEncode(#[from] rmp_serde::encode::Error),
    #[error("MessagePack splice failed: {0}")]
    Splice(String),
}

impl CodecError {
    /// A low-level MessagePack write error (writing into a buffer fails only when
    /// memory does).
    pub fn from_write(e: impl std::fmt::Display) -> Self {
        Self::Splice(e.to_string())
    }
}

/// What an encoding buffer starts with: most records and bodies fit, so encoding rarely
/// regrows (and copies) its buffer.
const START_CAPACITY: usize = 2048;

/// Encodes with the given encoding (MessagePack as a named map).
pub fn encode<T: Serialize>(enc: Encoding, value: &T) -> Result<Vec<u8>, CodecError> {
    encode_sized(enc, value, START_CAPACITY)
}

/// [`encode`] into a buffer of `capacity` bytes to start with (the expected size).
pub fn encode_sized<T: Serialize>(
    enc: Encoding,
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut buffer = Vec::with_capacity(capacity);
    match enc {
        Encoding::Json => serde_json::to_writer(&mut buffer, value)?,
        Encoding::MsgPack => rmp_serde::encode::write_named(&mut buffer, value)?,
    }
    Ok(buffer)
}

/// Decodes with the given encoding. An empty body decodes as an empty object, as the
/// ECS API treats a missing body.
pub fn decode<T: DeserializeOwned>(enc: Encoding, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::from_slice(b"{}")?);
    }
    Ok(match enc {
        Encoding::Json => serde_json::from_slice(bytes)?,
        Encoding::MsgPack => rmp_serde::from_slice(bytes)?,
    })
}

/// Whether a body is exactly one well-formed value of its encoding (an empty body counts
/// as an empty object). Garbage must not be mistaken for a value of the wrong shape.
pub fn is_well_formed(enc: Encoding, body: &[u8]) -> bool {
    use serde::Deserialize;
    if body.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    match enc {
        Encoding::Json => serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
        Encoding::MsgPack => {
            let mut de = rmp_serde::Deserializer::new(body);
            serde::de::IgnoredAny::deserialize(&mut de).is_ok() && de.get_ref().is_empty()
        }
    }
}

/// Encodes a journal record (named MessagePack).
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_sized(Encoding::MsgPack, value, START_CAPACITY)
}

/// Appends one already encoded `key, value` pair to an encoded named-MessagePack map of
/// at most 14 entries (a one-byte map header), e.g. a field encoded once and reused.
pub fn append_field(map: &mut Vec<u8>, field: &[u8]) -> Result<(), CodecError> {
    match map.first_mut() {
        // fixmap: 0x80 | entries, 0 to 15 entries.
        Some(header) if (0x80..0x8f).contains(header) => {
            *header += 1;
            map.extend_from_slice(field);
            Ok(())
        }
        _ => Err(CodecError::Splice(
            "not a map of at most 14 entries".to_string(),
        )),
    }
}

/// Decodes a journal record.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Probe {
        cluster_name: Option<String>,
        count: u32,
    }

    #[test]
    fn round_trips_both_encodings() {
        let p = Probe {
            cluster_name: Some("a".into()),
            count: 3,
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encode(enc, &p).unwrap();
            assert_eq!(decode::<Probe>(enc, &bytes).unwrap(), p);
        }
        assert_eq!(
            decode::<Probe>(Encoding::MsgPack, b"").unwrap(),
            Probe::default()
        );
    }

    #[test]
    fn records_are_named_maps() {
        let bytes = encode_record(&Probe {
            cluster_name: Some("a".into()),
            count: 1,
        })
        .unwrap();
        // fixmap with 2 entries whose first key is the field name
        assert_eq!(bytes[0], 0x82);
        assert!(bytes.windows(11).any(|w| w == b"clusterName"));
    }

    #[test]
    fn well_formed_bodies() {
        assert!(is_well_formed(Encoding::Json, b""));
        assert!(is_well_formed(Encoding::Json, b"{\"count\": \"x\"}"));
        assert!(!is_well_formed(Encoding::Json, b"[1, 2"));
        assert!(!is_well_formed(Encoding::Json, b"{} {"));
        assert!(is_well_formed(Encoding::MsgPack, b"\x81\xa1a\x01"));
        assert!(!is_well_formed(Encoding::MsgPack, b"\x81\xa1a"));
        assert!(!is_well_formed(Encoding::MsgPack, b"\x80\x81"));
        assert!(!is_well_formed(Encoding::MsgPack, b"\xc1"));
    }

    #[test]
    fn content_type_selects_encoding() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")),
            Encoding::Json
        );
        assert_eq!(Encoding::from_content_type(None), Encoding::MsgPack);
    }
}
