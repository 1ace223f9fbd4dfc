//! Header names Berth reads and writes on journal records, commands and API messages.

/// The command that caused a journal write, or the id of a command.
pub const COMMAND_ID: &str = "Berth-Command-Id";
/// Where a command's outcome is published (core NATS) once it is durable.
pub const REPLY_TO: &str = "Berth-Reply-To";
/// JetStream: the subject (wildcards allowed) whose last sequence
/// `Nats-Expected-Last-Subject-Sequence` is checked against, instead of the published one.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
/// JetStream de-duplication id; Berth sets it to the command id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// Request and reply encoding.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Content type of JSON bodies.
pub const JSON: &str = "application/json";
/// Content type of MessagePack bodies (the default).
pub const MSGPACK: &str = "application/msgpack";
/// A read waits until the replica's view has applied at least this journal sequence.
pub const MIN_SEQUENCE: &str = "Berth-Min-Sequence";
/// Journal sequence of the last write a mutation made (on API replies).
pub const SEQUENCE: &str = "Berth-Sequence";
/// NATS micro-service error headers.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";
