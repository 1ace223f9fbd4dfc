//! Ids minted by the control plane. They derive from the command id, so a command that
//! is redelivered after a crash mints the same ids and its writes stay idempotent.

/// 32 lowercase hex characters, like ECS task and container-instance ids.
pub fn derived(command_id: &str, salt: &str) -> String {
    let mut name = Vec::with_capacity("berth//".len() + command_id.len() + salt.len());
    for part in ["berth/", command_id, "/", salt] {
        name.extend_from_slice(part.as_bytes());
    }
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name)
        .simple()
        .to_string()
}

/// A fresh command id for an API call without a client token.
pub fn fresh_command_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(super::derived("c", "0"), super::derived("c", "0"));
        assert_ne!(super::derived("c", "0"), super::derived("c", "1"));
        assert_eq!(super::derived("c", "0").len(), 32);
        // The name hashed is "berth/<command id>/<salt>": ids already in journals stay.
        assert_eq!(
            super::derived("c", "0"),
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"berth/c/0")
                .simple()
                .to_string()
        );
    }
}
