//! ECS ARNs with a configurable region and account id, and the reverse: turning an ARN
//! or a short name/id given by a user into the token Berth uses in subjects.

/// Region and account that every ARN this deployment mints carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnScope {
    pub region: String,
    pub account: String,
}

impl Default for ArnScope {
    fn default() -> Self {
        Self {
            region: "local".into(),
            account: "000000000000".into(),
        }
    }
}

impl ArnScope {
    /// `arn:aws:ecs:<region>:<account>:<kind>/<parts joined by '/'>`, built in one
    /// allocation (task and container ARNs are minted for every task placed).
    fn resource(&self, kind: &str, parts: &[&str]) -> String {
        let len = "arn:aws:ecs:::/".len()
            + self.region.len()
            + self.account.len()
            + kind.len()
            + parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut arn = String::with_capacity(len);
        for piece in ["arn:aws:ecs:", &self.region, ":", &self.account, ":", kind] {
            arn.push_str(piece);
        }
        for part in parts {
            arn.push('/');
            arn.push_str(part);
        }
        arn
    }
    /// `arn:aws:ecs:<region>:<account>:cluster/<name>`
    pub fn cluster(&self, name: &str) -> String {
        self.resource("cluster", &[name])
    }
    /// `arn:aws:ecs:<region>:<account>:container-instance/<cluster>/<id>`
    pub fn container_instance(&self, cluster: &str, id: &str) -> String {
        self.resource("container-instance", &[cluster, id])
    }
    /// `arn:aws:ecs:<region>:<account>:task/<cluster>/<id>`
    pub fn task(&self, cluster: &str, id: &str) -> String {
        self.resource("task", &[cluster, id])
    }
    /// `arn:aws:ecs:<region>:<account>:container/<cluster>/<task-id>/<container-id>`
    pub fn container(&self, cluster: &str, task_id: &str, container_id: &str) -> String {
        self.resource("container", &[cluster, task_id, container_id])
    }
    /// `arn:aws:ecs:<region>:<account>:task-definition/<family>:<revision>`
    pub fn task_definition(&self, family: &str, revision: u32) -> String {
        self.resource("task-definition", &[&format!("{family}:{revision}")])
    }
    /// `arn:aws:ecs:<region>:<account>:service/<cluster>/<name>`
    pub fn service(&self, cluster: &str, name: &str) -> String {
        self.resource("service", &[cluster, name])
    }
}

/// Splits `arn:aws:ecs:<region>:<account>:<kind>/<rest>` into (kind, rest). Any region
/// and account are accepted on input.
pub fn split(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (a, p, s, _region, _account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if a != "arn" || p.is_empty() || s != "ecs" {
        return None;
    }
    resource.split_once('/')
}

/// A cluster name from a name or a cluster ARN.
pub fn cluster_name(name_or_arn: &str) -> &str {
    match split(name_or_arn) {
        Some(("cluster", name)) => name,
        _ => name_or_arn,
    }
}

/// (cluster from the ARN if any, id) from a container-instance id or ARN. The long ARN
/// format names the cluster; the legacy one does not.
pub fn container_instance_id(id_or_arn: &str) -> (Option<&str>, &str) {
    scoped_id(id_or_arn, "container-instance")
}

/// (cluster from the ARN if any, name) from a service name or ARN (long format
/// `service/<cluster>/<name>`, or the legacy `service/<name>`).
pub fn service_name(name_or_arn: &str) -> (Option<&str>, &str) {
    scoped_id(name_or_arn, "service")
}

/// (cluster from the ARN if any, id) from a task id or ARN.
pub fn task_id(id_or_arn: &str) -> (Option<&str>, &str) {
    scoped_id(id_or_arn, "task")
}

fn scoped_id<'a>(id_or_arn: &'a str, kind: &str) -> (Option<&'a str>, &'a str) {
    match split(id_or_arn) {
        Some((k, rest)) if k == kind => match rest.split_once('/') {
            Some((cluster, id)) => (Some(cluster), id),
            None => (None, rest),
        },
        _ => (None, id_or_arn),
    }
}

/// A task definition reference: `family`, `family:revision` or a task-definition ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinitionRef {
    pub family: String,
    pub revision: Option<u32>,
}

/// Parses a task definition reference; `None` when a revision is present but not a
/// positive integer.
pub fn task_definition_ref(s: &str) -> Option<TaskDefinitionRef> {
    let body = match split(s) {
        Some(("task-definition", rest)) => rest,
        Some(_) => return None,
        None => s,
    };
    match body.split_once(':') {
        Some((family, rev)) => {
            let revision: u32 = rev.parse().ok()?;
            (revision > 0).then(|| TaskDefinitionRef {
                family: family.to_string(),
                revision: Some(revision),
            })
        }
        None => Some(TaskDefinitionRef {
            family: body.to_string(),
            revision: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let s = ArnScope {
            region: "eu-west-1".into(),
            account: "123456789012".into(),
        };
        let t = s.task("prod", "abc");
        assert_eq!(t, "arn:aws:ecs:eu-west-1:123456789012:task/prod/abc");
        assert_eq!(task_id(&t), (Some("prod"), "abc"));
        assert_eq!(task_id("abc"), (None, "abc"));
        assert_eq!(cluster_name(&s.cluster("prod")), "prod");
        assert_eq!(cluster_name("prod"), "prod");
        let ci = s.container_instance("prod", "i1");
        assert_eq!(container_instance_id(&ci), (Some("prod"), "i1"));
        let td = s.task_definition("web", 7);
        assert_eq!(
            task_definition_ref(&td),
            Some(TaskDefinitionRef {
                family: "web".into(),
                revision: Some(7)
            })
        );
        assert_eq!(
            task_definition_ref("web"),
            Some(TaskDefinitionRef {
                family: "web".into(),
                revision: None
            })
        );
        assert_eq!(task_definition_ref("web:0"), None);
        let prefix = "arn:aws:ecs:eu-west-1:123456789012";
        assert_eq!(s.cluster("prod"), format!("{prefix}:cluster/prod"));
        assert_eq!(ci, format!("{prefix}:container-instance/prod/i1"));
        assert_eq!(
            s.container("prod", "t1", "c1"),
            format!("{prefix}:container/prod/t1/c1")
        );
        assert_eq!(td, format!("{prefix}:task-definition/web:7"));
        assert_eq!(
            s.service("prod", "api"),
            format!("{prefix}:service/prod/api")
        );
        assert_eq!(task_definition_ref("web:x"), None);
    }
}
