//! Ids minted by the control plane. They derive from the command id, so a command that
//! is redelivered after a crash mints the same ids and its writes stay idempotent, and
//! anyone holding a command id (the auditor) can tell which tasks it may have made.

/// Prefix of the causes of writes the control plane makes on its own (liveness,
/// reconciliation, the service scheduler's records): they are no API command and have
/// no outcome.
pub const INTERNAL_COMMAND_PREFIX: &str = "internal-";

/// Most tasks one command launches: RunTask's `count` and StartTask's
/// `containerInstances` are both limited to 10, as in ECS.
pub const MAX_TASKS_PER_COMMAND: usize = 10;

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

/// The id of the `index`-th task a RunTask command launches.
pub fn run_task_id(command_id: &str, index: usize) -> String {
    derived(command_id, &format!("task-{index}"))
}

/// The id of the task a StartTask command launches on its `index`-th instance.
pub fn start_task_id(command_id: &str, index: usize) -> String {
    derived(command_id, &format!("start-{index}"))
}

/// Every task id a command can have launched (RunTask's and StartTask's).
pub fn launched_task_ids(command_id: &str) -> impl Iterator<Item = String> + '_ {
    (0..MAX_TASKS_PER_COMMAND)
        .flat_map(move |i| [run_task_id(command_id, i), start_task_id(command_id, i)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived("c", "0"), derived("c", "0"));
        assert_ne!(derived("c", "0"), derived("c", "1"));
        assert_eq!(derived("c", "0").len(), 32);
        // The name hashed is "berth/<command id>/<salt>": ids already in journals stay.
        assert_eq!(
            derived("c", "0"),
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"berth/c/0")
                .simple()
                .to_string()
        );
    }

    #[test]
    fn launched_task_ids_cover_both_launch_actions() {
        let all: Vec<String> = launched_task_ids("cmd").collect();
        assert_eq!(all.len(), 2 * MAX_TASKS_PER_COMMAND);
        assert!(all.contains(&run_task_id("cmd", 9)));
        assert!(all.contains(&start_task_id("cmd", 0)));
        assert_eq!(run_task_id("cmd", 3), derived("cmd", "task-3"));
    }
}
