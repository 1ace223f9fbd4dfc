//! Ids minted by the control plane (see [`berth_messages::ids`] for those derived from a
//! command id).

pub use berth_messages::ids::derived;

/// A fresh command id for an API call without a client token.
pub fn fresh_command_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
