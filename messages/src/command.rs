//! Commands and their outcomes. A command is a message on `berth.cmd.<scope>.<Action>`
//! whose body is the ECS request of that action (JSON or MessagePack by `Content-Type`)
//! and whose `Nats-Msg-Id` is the command id. Its outcome, the ECS response or error, is
//! written once to `berth.outcome.<command-id>` and published to `Berth-Reply-To`.

use crate::api::*;
use crate::codec::{self, Encoding};
use crate::error::ApiError;
use crate::service::{
    CreateServiceRequest, DeleteServiceRequest, ServiceResponse, UpdateServiceRequest,
};
use serde::{Deserialize, Serialize};

macro_rules! actions {
    ($($name:ident => $mutation:expr),* $(,)?) => {
        /// Every API action Berth serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action { $($name),* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$name),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Action::$name => stringify!($name)),* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $(stringify!($name) => Some(Action::$name),)* _ => None }
            }

            /// Mutations go through `BERTH_CMD`; reads are served from the view.
            pub fn is_mutation(self) -> bool {
                match self { $(Action::$name => $mutation),* }
            }
        }
    };
}

actions! {
    CreateCluster => true,
    DeleteCluster => true,
    DescribeClusters => false,
    ListClusters => false,
    RegisterContainerInstance => true,
    DeregisterContainerInstance => true,
    DescribeContainerInstances => false,
    ListContainerInstances => false,
    UpdateContainerInstancesState => true,
    PutAttributes => true,
    DeleteAttributes => true,
    ListAttributes => false,
    RegisterTaskDefinition => true,
    DeregisterTaskDefinition => true,
    DescribeTaskDefinition => false,
    ListTaskDefinitions => false,
    ListTaskDefinitionFamilies => false,
    RunTask => true,
    StartTask => true,
    StopTask => true,
    DescribeTasks => false,
    ListTasks => false,
    SubmitTaskStateChange => true,
    SubmitContainerStateChange => true,
    GetCommandOutcome => false,
    CreateService => true,
    UpdateService => true,
    DeleteService => true,
    DescribeServices => false,
    ListServices => false,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request of a mutating action, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandRequest {
    CreateCluster(CreateClusterRequest),
    DeleteCluster(DeleteClusterRequest),
    RegisterContainerInstance(RegisterContainerInstanceRequest),
    DeregisterContainerInstance(DeregisterContainerInstanceRequest),
    UpdateContainerInstancesState(UpdateContainerInstancesStateRequest),
    PutAttributes(AttributesRequest),
    DeleteAttributes(AttributesRequest),
    RegisterTaskDefinition(RegisterTaskDefinitionRequest),
    DeregisterTaskDefinition(TaskDefinitionRefRequest),
    RunTask(RunTaskRequest),
    StartTask(StartTaskRequest),
    StopTask(StopTaskRequest),
    SubmitTaskStateChange(SubmitTaskStateChangeRequest),
    SubmitContainerStateChange(SubmitContainerStateChangeRequest),
    CreateService(CreateServiceRequest),
    UpdateService(UpdateServiceRequest),
    DeleteService(DeleteServiceRequest),
}

/// The default cluster of every action that takes an optional `cluster`.
pub const DEFAULT_CLUSTER: &str = "default";

impl CommandRequest {
    /// Decodes the body of a mutating action; `Err` for reads and undecodable bodies.
    pub fn decode(action: Action, enc: Encoding, body: &[u8]) -> Result<Self, ApiError> {
        fn d<T: serde::de::DeserializeOwned>(enc: Encoding, b: &[u8]) -> Result<T, ApiError> {
            crate::error::decode_request(enc, b)
        }
        Ok(match action {
            Action::CreateCluster => Self::CreateCluster(d(enc, body)?),
            Action::DeleteCluster => Self::DeleteCluster(d(enc, body)?),
            Action::RegisterContainerInstance => Self::RegisterContainerInstance(d(enc, body)?),
            Action::DeregisterContainerInstance => Self::DeregisterContainerInstance(d(enc, body)?),
            Action::UpdateContainerInstancesState => {
                Self::UpdateContainerInstancesState(d(enc, body)?)
            }
            Action::PutAttributes => Self::PutAttributes(d(enc, body)?),
            Action::DeleteAttributes => Self::DeleteAttributes(d(enc, body)?),
            Action::RegisterTaskDefinition => Self::RegisterTaskDefinition(d(enc, body)?),
            Action::DeregisterTaskDefinition => Self::DeregisterTaskDefinition(d(enc, body)?),
            Action::RunTask => Self::RunTask(d(enc, body)?),
            Action::StartTask => Self::StartTask(d(enc, body)?),
            Action::StopTask => Self::StopTask(d(enc, body)?),
            Action::SubmitTaskStateChange => Self::SubmitTaskStateChange(d(enc, body)?),
            Action::SubmitContainerStateChange => Self::SubmitContainerStateChange(d(enc, body)?),
            Action::CreateService => Self::CreateService(d(enc, body)?),
            Action::UpdateService => Self::UpdateService(d(enc, body)?),
            Action::DeleteService => Self::DeleteService(d(enc, body)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "{other} is not a command: it is served on the API only"
                )))
            }
        })
    }

    /// Encodes the request body (for publishing into `BERTH_CMD`).
    pub fn encode(&self, enc: Encoding) -> Result<Vec<u8>, codec::CodecError> {
        match self {
            Self::CreateCluster(r) => codec::encode(enc, r),
            Self::DeleteCluster(r) => codec::encode(enc, r),
            Self::RegisterContainerInstance(r) => codec::encode(enc, r),
            Self::DeregisterContainerInstance(r) => codec::encode(enc, r),
            Self::UpdateContainerInstancesState(r) => codec::encode(enc, r),
            Self::PutAttributes(r) | Self::DeleteAttributes(r) => codec::encode(enc, r),
            Self::RegisterTaskDefinition(r) => codec::encode(enc, r),
            Self::DeregisterTaskDefinition(r) => codec::encode(enc, r),
            Self::RunTask(r) => codec::encode(enc, r),
            Self::StartTask(r) => codec::encode(enc, r),
            Self::StopTask(r) => codec::encode(enc, r),
            Self::SubmitTaskStateChange(r) => codec::encode(enc, r),
            Self::SubmitContainerStateChange(r) => codec::encode(enc, r),
            Self::CreateService(r) => codec::encode(enc, r),
            Self::UpdateService(r) => codec::encode(enc, r),
            Self::DeleteService(r) => codec::encode(enc, r),
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Self::CreateCluster(_) => Action::CreateCluster,
            Self::DeleteCluster(_) => Action::DeleteCluster,
            Self::RegisterContainerInstance(_) => Action::RegisterContainerInstance,
            Self::DeregisterContainerInstance(_) => Action::DeregisterContainerInstance,
            Self::UpdateContainerInstancesState(_) => Action::UpdateContainerInstancesState,
            Self::PutAttributes(_) => Action::PutAttributes,
            Self::DeleteAttributes(_) => Action::DeleteAttributes,
            Self::RegisterTaskDefinition(_) => Action::RegisterTaskDefinition,
            Self::DeregisterTaskDefinition(_) => Action::DeregisterTaskDefinition,
            Self::RunTask(_) => Action::RunTask,
            Self::StartTask(_) => Action::StartTask,
            Self::StopTask(_) => Action::StopTask,
            Self::SubmitTaskStateChange(_) => Action::SubmitTaskStateChange,
            Self::SubmitContainerStateChange(_) => Action::SubmitContainerStateChange,
            Self::CreateService(_) => Action::CreateService,
            Self::UpdateService(_) => Action::UpdateService,
            Self::DeleteService(_) => Action::DeleteService,
        }
    }

    /// The cluster the command names (its ARN reduced to a name), or the default one;
    /// [`crate::subjects::TASKDEF_TOKEN`] for task-definition commands.
    pub fn scope(&self) -> String {
        let given: Option<&str> = match self {
            Self::CreateCluster(r) => Some(r.cluster_name.as_deref().unwrap_or(DEFAULT_CLUSTER)),
            Self::DeleteCluster(r) => Some(&r.cluster),
            Self::RegisterContainerInstance(r) => r.cluster.as_deref(),
            Self::DeregisterContainerInstance(r) => r.cluster.as_deref(),
            Self::UpdateContainerInstancesState(r) => r.cluster.as_deref(),
            Self::PutAttributes(r) | Self::DeleteAttributes(r) => r.cluster.as_deref(),
            Self::RegisterTaskDefinition(_) | Self::DeregisterTaskDefinition(_) => {
                return crate::subjects::TASKDEF_TOKEN.to_string()
            }
            Self::RunTask(r) => r.cluster.as_deref(),
            Self::StartTask(r) => r.cluster.as_deref(),
            Self::StopTask(r) => r.cluster.as_deref(),
            Self::SubmitTaskStateChange(r) => r.cluster.as_deref(),
            Self::SubmitContainerStateChange(r) => r.cluster.as_deref(),
            Self::CreateService(r) => r.cluster.as_deref(),
            Self::UpdateService(r) => r.cluster.as_deref(),
            Self::DeleteService(r) => r.cluster.as_deref(),
        };
        crate::arn::cluster_name(given.unwrap_or(DEFAULT_CLUSTER)).to_string()
    }
}

/// The successful response of a command, tagged by shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    Cluster(ClusterResponse),
    ContainerInstance(ContainerInstanceResponse),
    ContainerInstances(ContainerInstancesResponse),
    Attributes(AttributesResponse),
    TaskDefinition(TaskDefinitionResponse),
    Tasks(TasksResponse),
    Task(TaskResponse),
    Acknowledgment(AcknowledgmentResponse),
    Service(ServiceResponse),
}

impl CommandResponse {
    /// The tag naming the shape (the enum variant).
    pub fn shape(&self) -> &'static str {
        match self {
            Self::Cluster(_) => "Cluster",
            Self::ContainerInstance(_) => "ContainerInstance",
            Self::ContainerInstances(_) => "ContainerInstances",
            Self::Attributes(_) => "Attributes",
            Self::TaskDefinition(_) => "TaskDefinition",
            Self::Tasks(_) => "Tasks",
            Self::Task(_) => "Task",
            Self::Acknowledgment(_) => "Acknowledgment",
            Self::Service(_) => "Service",
        }
    }

    /// Encodes the ECS response body itself (without the tag).
    pub fn encode_body(&self, enc: Encoding) -> Result<Vec<u8>, codec::CodecError> {
        match self {
            Self::Cluster(r) => codec::encode(enc, r),
            Self::ContainerInstance(r) => codec::encode(enc, r),
            Self::ContainerInstances(r) => codec::encode(enc, r),
            Self::Attributes(r) => codec::encode(enc, r),
            Self::TaskDefinition(r) => codec::encode(enc, r),
            Self::Tasks(r) => codec::encode_sized(enc, r, r.expected_size()),
            Self::Task(r) => codec::encode(enc, r),
            Self::Acknowledgment(r) => codec::encode(enc, r),
            Self::Service(r) => codec::encode(enc, r),
        }
    }
}

/// The one outcome of a command: `berth.outcome.<command-id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub command_id: String,
    pub action: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<CommandResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default)]
    pub completed_at: f64,
    /// Highest journal sequence the command wrote (0 if it wrote nothing): a reader that
    /// waits for its view to reach it reads its own write.
    #[serde(default)]
    pub journal_sequence: u64,
    /// Digest of the request, so a reused RunTask clientToken with other parameters is
    /// answered with ConflictException.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
}

impl Outcome {
    /// The outcome's record (named MessagePack, as [`codec::encode_record`] writes it)
    /// given its response's body already encoded as named MessagePack
    /// ([`CommandResponse::encode_body`]): the body is copied in, not encoded again.
    /// Field order aside (the response comes last), the record is the same.
    pub fn encode_record_with_body(&self, body: &[u8]) -> Result<Vec<u8>, codec::CodecError> {
        let Some(response) = &self.response else {
            return codec::encode_record(self);
        };
        let without = OutcomeFields {
            command_id: &self.command_id,
            action: &self.action,
            cluster: &self.cluster,
            error: self.error.as_ref(),
            completed_at: self.completed_at,
            journal_sequence: self.journal_sequence,
            request_digest: self.request_digest.as_deref(),
        };
        let mut record = codec::encode_sized(Encoding::MsgPack, &without, 256 + body.len())?;
        let mut field = Vec::with_capacity(32 + body.len());
        // "response": {<shape>: <body>}, the externally tagged enum's named encoding.
        rmp::encode::write_str(&mut field, "response").map_err(codec::CodecError::from_write)?;
        rmp::encode::write_map_len(&mut field, 1).map_err(codec::CodecError::from_write)?;
        rmp::encode::write_str(&mut field, response.shape())
            .map_err(codec::CodecError::from_write)?;
        field.extend_from_slice(body);
        codec::append_field(&mut record, &field)?;
        Ok(record)
    }

    pub fn result(&self) -> Result<&CommandResponse, ApiError> {
        match (&self.response, &self.error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(ApiError::server(
                "outcome carries neither response nor error",
            )),
        }
    }
}

/// [`Outcome`] without its response, borrowed: what
/// [`Outcome::encode_record_with_body`] encodes before appending the response.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutcomeFields<'a> {
    command_id: &'a str,
    action: &'a str,
    cluster: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ApiError>,
    completed_at: f64,
    journal_sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_digest: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_encoded_with_its_body_decodes_as_the_outcome() {
        let task = crate::model::Task {
            task_arn: "arn:aws:ecs:r:1:task/c/t1".into(),
            started_by: Some("me".into()),
            ..Default::default()
        };
        let tasks = CommandResponse::Tasks(TasksResponse {
            tasks: vec![task],
            failures: vec![crate::model::Failure::new("arn", "RESOURCE:CPU")],
        });
        let outcome = |response: Option<CommandResponse>, error: Option<ApiError>| Outcome {
            command_id: "cmd-1".into(),
            action: "RunTask".into(),
            cluster: "c".into(),
            response,
            error,
            completed_at: 1.5,
            journal_sequence: 42,
            request_digest: Some("d".into()),
        };
        for o in [
            outcome(Some(tasks.clone()), None),
            outcome(None, Some(ApiError::invalid("bad"))),
            Outcome {
                request_digest: None,
                ..outcome(Some(tasks.clone()), None)
            },
        ] {
            let body = match &o.response {
                Some(r) => r.encode_body(Encoding::MsgPack).unwrap(),
                None => Vec::new(),
            };
            let spliced = o.encode_record_with_body(&body).unwrap();
            let decoded: Outcome = codec::decode_record(&spliced).unwrap();
            assert_eq!(decoded, o);
            // The same named map as the derived encoding, field order aside.
            let named: serde_json::Value = rmp_serde::from_slice(&spliced).unwrap();
            let derived: serde_json::Value =
                rmp_serde::from_slice(&codec::encode_record(&o).unwrap()).unwrap();
            assert_eq!(named, derived);
        }
    }

    #[test]
    fn actions_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(*a));
        }
        assert!(Action::RunTask.is_mutation());
        assert!(!Action::DescribeTasks.is_mutation());
    }

    #[test]
    fn decode_requires_required_fields() {
        let err =
            CommandRequest::decode(Action::RunTask, Encoding::Json, br#"{"count":1}"#).unwrap_err();
        assert_eq!(err.error_type, crate::ErrorType::InvalidParameterException);
        assert!(err.message.contains("taskDefinition"), "{}", err.message);
        let ok = CommandRequest::decode(
            Action::RunTask,
            Encoding::Json,
            br#"{"taskDefinition":"web","cluster":"arn:aws:ecs:r:1:cluster/prod"}"#,
        )
        .unwrap();
        assert_eq!(ok.scope(), "prod");
    }

    #[test]
    fn outcome_round_trips() {
        let o = Outcome {
            command_id: "c1".into(),
            action: "RunTask".into(),
            cluster: "default".into(),
            response: Some(CommandResponse::Tasks(TasksResponse::default())),
            error: None,
            completed_at: 1.0,
            journal_sequence: 5,
            request_digest: None,
        };
        let b = codec::encode_record(&o).unwrap();
        assert_eq!(codec::decode_record::<Outcome>(&b).unwrap(), o);
    }
}
