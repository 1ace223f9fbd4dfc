//! The one home of every NATS subject Berth uses: the journal (`berth.state.>`), the
//! command stream (`berth.cmd.>`), command outcomes (`berth.outcome.>`), the API
//! (`berth.api.<Action>`) and the per-host subjects (`berth.host.>`). Builders take
//! tokens that were validated at the boundary (see [`crate::validate`]); the parser
//! turns a journal subject back into the entity it names.

/// Prefix of the journal stream's subjects.
pub const STATE_PREFIX: &str = "berth.state";
/// All journal subjects.
pub const STATE_ALL: &str = "berth.state.>";
/// Prefix of the command stream's subjects.
pub const CMD_PREFIX: &str = "berth.cmd";
/// All command subjects.
pub const CMD_ALL: &str = "berth.cmd.>";
/// Prefix of command-outcome subjects.
pub const OUTCOME_PREFIX: &str = "berth.outcome";
/// All outcome subjects.
pub const OUTCOME_ALL: &str = "berth.outcome.>";
/// Prefix of the API subjects.
pub const API_PREFIX: &str = "berth.api";
/// Every heartbeat of every agent: `berth.host.<cluster>.<instance-id>.heartbeat`.
pub const HEARTBEAT_ALL: &str = "berth.host.*.*.heartbeat";
/// The token that task-definition subjects use where cluster subjects name a cluster.
/// It is therefore reserved and no cluster may be named so.
pub const TASKDEF_TOKEN: &str = "taskdef";

/// `berth.state.<cluster>.cluster`
pub fn cluster(cluster: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.cluster")
}

/// `berth.state.<cluster>.instance.<instance-id>`
pub fn instance(cluster: &str, instance_id: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.instance.{instance_id}")
}

/// `berth.state.<cluster>.instance.*`
pub fn instances_of(cluster: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.instance.*")
}

/// `berth.state.<cluster>.task.<instance-id>.<task-id>`
pub fn task(cluster: &str, instance_id: &str, task_id: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.task.{instance_id}.{task_id}")
}

/// `berth.state.<cluster>.task.*.<task-id>`: a task's record on whichever instance it is.
/// Creations are conditional on this filter being empty, so a task id is created once in
/// the whole cluster.
pub fn task_on_any_instance(cluster: &str, task_id: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.task.*.{task_id}")
}

/// `berth.state.<cluster>.task.<instance-id>.*`: what an agent follows.
pub fn tasks_of_instance(cluster: &str, instance_id: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.task.{instance_id}.*")
}

/// `berth.state.<cluster>.service.<service-name>`
pub fn service(cluster: &str, service_name: &str) -> String {
    format!("{STATE_PREFIX}.{cluster}.service.{service_name}")
}

/// `berth.state.taskdef.<family>.<revision>`
pub fn task_definition(family: &str, revision: u32) -> String {
    format!("{STATE_PREFIX}.{TASKDEF_TOKEN}.{family}.{revision}")
}

/// `berth.state.taskdef.<family>`: the family record that carries the revision counter.
pub fn task_definition_family(family: &str) -> String {
    format!("{STATE_PREFIX}.{TASKDEF_TOKEN}.{family}")
}

/// `berth.cmd.<cluster>.<Action>`; task-definition actions use [`TASKDEF_TOKEN`].
pub fn command(scope: &str, action: &str) -> String {
    format!("{CMD_PREFIX}.{scope}.{action}")
}

/// `berth.outcome.<command-id>`
pub fn outcome(command_id: &str) -> String {
    format!("{OUTCOME_PREFIX}.{command_id}")
}

/// `berth.api.<Action>`
pub fn api(action: &str) -> String {
    format!("{API_PREFIX}.{action}")
}

/// `berth.host.<cluster>.<instance-id>.heartbeat`
pub fn heartbeat(cluster: &str, instance_id: &str) -> String {
    format!("berth.host.{cluster}.{instance_id}.heartbeat")
}

/// `berth.host.<cluster>.<instance-id>.logs`: the agent answers log requests here.
pub fn host_logs(cluster: &str, instance_id: &str) -> String {
    format!("berth.host.{cluster}.{instance_id}.logs")
}

/// `berth.host.<cluster>.<instance-id>.task.*`: where `BERTH_STATE` republishes every
/// task record of a host (see [`TASKS_REPUBLISHED_FROM`]); its agent follows them here.
pub fn host_tasks(cluster: &str, instance_id: &str) -> String {
    format!("berth.host.{cluster}.{instance_id}.task.*")
}

/// The task records `BERTH_STATE` republishes on core NATS as it stores them...
pub const TASKS_REPUBLISHED_FROM: &str = "berth.state.*.task.*.*";
/// ...and where: `berth.host.<cluster>.<instance-id>.task.<task-id>` ([`host_tasks`]).
/// A core subscription per host costs nats-server a lookup per record, where a consumer
/// per host on the stream costs a scan of the records between two of its own.
pub const TASKS_REPUBLISHED_TO: &str =
    "berth.host.{{wildcard(1)}}.{{wildcard(2)}}.task.{{wildcard(3)}}";

/// Parses `berth.host.<cluster>.<instance-id>.task.<task-id>` into the task id.
pub fn parse_host_task(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("berth.host.")?;
    let mut it = rest.split('.');
    let (_cluster, _instance, kind, task) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (kind == "task" && !task.is_empty() && it.next().is_none()).then_some(task)
}

/// Parses `berth.host.<cluster>.<instance-id>.heartbeat` into (cluster, instance id).
pub fn parse_heartbeat(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("berth.host.")?;
    let mut it = rest.split('.');
    let (c, i, kind) = (it.next()?, it.next()?, it.next()?);
    (kind == "heartbeat" && it.next().is_none()).then_some((c, i))
}

/// Parses `berth.cmd.<scope>.<Action>` into (scope, action).
pub fn parse_command(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("berth.cmd.")?;
    let mut it = rest.split('.');
    let (scope, action) = (it.next()?, it.next()?);
    it.next().is_none().then_some((scope, action))
}

/// The entity a journal subject names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateKey<'a> {
    Cluster {
        cluster: &'a str,
    },
    Instance {
        cluster: &'a str,
        instance_id: &'a str,
    },
    Task {
        cluster: &'a str,
        instance_id: &'a str,
        task_id: &'a str,
    },
    Service {
        cluster: &'a str,
        service: &'a str,
    },
    TaskDefinitionFamily {
        family: &'a str,
    },
    TaskDefinition {
        family: &'a str,
        revision: u32,
    },
}

/// Parses a journal subject; `None` for anything that is not one of Berth's entities.
pub fn parse_state(subject: &str) -> Option<StateKey<'_>> {
    let rest = subject.strip_prefix("berth.state.")?;
    let tokens: Vec<&str> = rest.split('.').collect();
    match tokens.as_slice() {
        [TASKDEF_TOKEN, family] => Some(StateKey::TaskDefinitionFamily { family }),
        [TASKDEF_TOKEN, family, rev] => Some(StateKey::TaskDefinition {
            family,
            revision: rev.parse().ok()?,
        }),
        [cluster, "cluster"] => Some(StateKey::Cluster { cluster }),
        [cluster, "instance", instance_id] => Some(StateKey::Instance {
            cluster,
            instance_id,
        }),
        [cluster, "task", instance_id, task_id] => Some(StateKey::Task {
            cluster,
            instance_id,
            task_id,
        }),
        [cluster, "service", service] => Some(StateKey::Service { cluster, service }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_parser_agree() {
        assert_eq!(
            parse_state(&cluster("prod")),
            Some(StateKey::Cluster { cluster: "prod" })
        );
        assert_eq!(
            parse_state(&instance("prod", "i1")),
            Some(StateKey::Instance {
                cluster: "prod",
                instance_id: "i1"
            })
        );
        assert_eq!(
            parse_state(&task("prod", "i1", "t1")),
            Some(StateKey::Task {
                cluster: "prod",
                instance_id: "i1",
                task_id: "t1"
            })
        );
        assert_eq!(
            parse_state(&task_definition("web", 3)),
            Some(StateKey::TaskDefinition {
                family: "web",
                revision: 3
            })
        );
        assert_eq!(
            parse_state(&task_definition_family("web")),
            Some(StateKey::TaskDefinitionFamily { family: "web" })
        );
        assert_eq!(parse_state("berth.state.x.bogus.y"), None);
        assert_eq!(parse_state("other.x"), None);
    }

    #[test]
    fn command_and_heartbeat_parse() {
        assert_eq!(
            parse_command(&command("c1", "RunTask")),
            Some(("c1", "RunTask"))
        );
        assert_eq!(parse_command("berth.cmd.a.b.c"), None);
        assert_eq!(parse_heartbeat(&heartbeat("c", "i")), Some(("c", "i")));
        assert_eq!(parse_heartbeat("berth.host.c.i.logs"), None);
    }

    #[test]
    fn republished_task_records_land_on_their_host() {
        // The mapping nats-server applies, token by token.
        let state = task("c1", "i1", "t1");
        let tokens: Vec<&str> = state.split('.').collect();
        let republished = TASKS_REPUBLISHED_TO
            .replace("{{wildcard(1)}}", tokens[2])
            .replace("{{wildcard(2)}}", tokens[4])
            .replace("{{wildcard(3)}}", tokens[5]);
        assert_eq!(republished, "berth.host.c1.i1.task.t1");
        assert_eq!(parse_host_task(&republished), Some("t1"));
        assert_eq!(host_tasks("c1", "i1"), "berth.host.c1.i1.task.*");
        assert_eq!(parse_heartbeat(&republished), None);
        assert_eq!(parse_host_task("berth.host.c.i.heartbeat"), None);
        assert_eq!(parse_host_task("berth.host.c.i.task.t.x"), None);
    }
}
