//! The CLI's failures, each worded for a person: what went wrong and what to do about it.
//! ECS error replies keep their type and message and gain a hint where Berth knows the
//! usual fix (a missing cluster, an unregistered task definition, no agent).

use berth_messages::command::Action;
use berth_messages::{subjects, ApiError, ErrorType};
use std::fmt;

/// A failure of a `berth` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// NATS itself cannot be reached.
    #[error(
        "cannot connect to NATS at {url}: {reason}\n\
         hint: is `berth dev` running? Start a local Berth with `scripts/dev` (or `berth dev`), \
         or point --nats / BERTH_NATS_URL at your NATS server"
    )]
    Connect { url: String, reason: String },
    /// NATS answers but no control-plane replica serves the API.
    #[error(
        "no Berth API answers on {url}: is `berth dev` running? \
         (NATS is up, but no berth-control replica serves {})",
        subjects::api(.action.as_str())
    )]
    NoApi { url: String, action: Action },
    /// The API did not answer in time.
    #[error(
        "{} did not answer within {seconds} s on {url}",
        subjects::api(.action.as_str())
    )]
    Timeout {
        url: String,
        action: Action,
        seconds: u64,
    },
    /// An ECS error reply.
    #[error("{}", Hinted(.0))]
    Api(ApiError),
    /// Bad input given on the command line or in a file.
    #[error("{0}")]
    Input(String),
    /// Anything else, already worded for a person.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn input(message: impl Into<String>) -> Self {
        Self::Input(message.into())
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }
    /// The ECS error type when the API refused the request.
    pub fn api_error_type(&self) -> Option<ErrorType> {
        match self {
            Self::Api(e) => Some(e.error_type),
            _ => None,
        }
    }
}

/// An ECS error with the hint that usually fixes it.
struct Hinted<'a>(&'a ApiError);

impl fmt::Display for Hinted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        match hint(e) {
            Some(text) => write!(f, "{text}"),
            None => write!(f, "{}: {}", e.error_type, e.message),
        }
    }
}

/// A person's wording of the ECS errors whose fix is well known.
fn hint(e: &ApiError) -> Option<String> {
    let msg = e.message.as_str();
    match e.error_type {
        ErrorType::ClusterNotFoundException => {
            let name = msg.strip_prefix("Cluster not found: ").unwrap_or(msg);
            Some(format!(
                "cluster {name} not found: create it with `berth clusters create {name}` \
                 (or pick another with --cluster / BERTH_CLUSTER)"
            ))
        }
        ErrorType::ClientException => {
            if let Some(reference) = msg.strip_prefix("Unable to find task definition: ") {
                Some(task_definition_not_found(reference))
            } else if msg.starts_with("Unable to describe task definition") {
                Some(
                    "task definition not found: register it with `berth task-definitions register \
                     <file.json>` (`berth task-definitions list` shows what is registered)"
                        .to_string(),
                )
            } else {
                msg.strip_prefix("TaskDefinition is inactive: ")
                    .map(|reference| {
                        format!(
                            "task definition {reference} is deregistered (INACTIVE): register it \
                             again with `berth task-definitions register <file.json>` and run the \
                             new revision"
                        )
                    })
            }
        }
        ErrorType::InvalidParameterException
            if msg.starts_with("No Container Instances were found") =>
        {
            Some(format!(
                "{msg}\nhint: start an agent on a host (`berth dev` runs one here, or \
                 `berth-agent --cluster <cluster> --nats <url>`), then check `berth instances list`"
            ))
        }
        ErrorType::ClusterContainsContainerInstancesException
        | ErrorType::ClusterContainsTasksException => Some(format!(
            "{msg}\nhint: `berth instances list` and `berth tasks list` show what is left"
        )),
        ErrorType::ClusterContainsServicesException => Some(format!(
            "{msg}\nhint: `berth services list` shows them; `berth services delete <name> \
             --force` deletes one"
        )),
        ErrorType::ServiceNotFoundException => {
            let name = msg.strip_prefix("Service not found: ").unwrap_or(msg);
            Some(format!(
                "service {name} not found: `berth services list` shows the cluster's services \
                 (or pick another cluster with --cluster / BERTH_CLUSTER)"
            ))
        }
        ErrorType::ServiceNotActiveException => {
            let name = msg.strip_prefix("Service was not ACTIVE: ").unwrap_or(msg);
            Some(format!(
                "service {name} is not ACTIVE: it was deleted (`berth services describe {name}` \
                 shows its status); create it again with `berth services create {name} ...`"
            ))
        }
        _ => None,
    }
}

pub fn task_definition_not_found(reference: &str) -> String {
    format!(
        "task definition {reference} not found: register it with \
         `berth task-definitions register <file.json>` (`berth task-definitions list` shows \
         what is registered)"
    )
}

/// Why RunTask or StartTask could not place a task, worded for a person.
pub fn failure_reason(reason: &str) -> String {
    use berth_messages::model::reason as r;
    match reason {
        r::AGENT => {
            "AGENT: no instance with a connected agent can take it (is berth-agent running? \
                     see `berth instances list`)"
                .to_string()
        }
        r::RESOURCE_CPU => {
            "RESOURCE:CPU: not enough free CPU on any instance (see `berth instances list`)"
                .to_string()
        }
        r::RESOURCE_MEMORY => {
            "RESOURCE:MEMORY: not enough free memory on any instance (see `berth instances list`)"
                .to_string()
        }
        r::RESOURCE_PORTS | r::RESOURCE_PORTS_UDP => format!(
            "{reason}: the host port it asks for is taken on every instance \
             (see `berth tasks list`)"
        ),
        r::ATTRIBUTE => "ATTRIBUTE: no instance has the attributes it requires".to_string(),
        r::MISSING => "MISSING: no such resource in this cluster".to_string(),
        r::INACTIVE => "INACTIVE: the instance is deregistered".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cluster_names_the_fix() {
        let e = CliError::Api(ApiError::cluster_not_found("prod"));
        assert_eq!(
            e.to_string(),
            "cluster prod not found: create it with `berth clusters create prod` \
             (or pick another with --cluster / BERTH_CLUSTER)"
        );
    }

    #[test]
    fn unknown_task_definition_names_the_fix() {
        let e = CliError::Api(ApiError::client("Unable to find task definition: web:3"));
        let text = e.to_string();
        assert!(
            text.starts_with("task definition web:3 not found"),
            "{text}"
        );
        assert!(text.contains("berth task-definitions register"), "{text}");
    }

    #[test]
    fn missing_service_names_the_fix() {
        let e = CliError::Api(ApiError::service_not_found("web"));
        let text = e.to_string();
        assert!(text.starts_with("service web not found: "), "{text}");
        assert!(text.contains("berth services list"), "{text}");
        let e = CliError::Api(ApiError::service_not_active("web"));
        assert!(
            e.to_string().starts_with("service web is not ACTIVE"),
            "{e}"
        );
    }

    #[test]
    fn other_errors_keep_type_and_message() {
        let e = CliError::Api(ApiError::invalid("count must be between 1 and 10"));
        assert_eq!(
            e.to_string(),
            "InvalidParameterException: count must be between 1 and 10"
        );
    }
}
