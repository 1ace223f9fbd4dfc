//! The smallest custom scheduler: reads the pool through the API, picks the best fit on
//! memory, starts one task there with StartTask, and on a `RESOURCE:*` refusal (another
//! scheduler won the race) reads again and chooses again.
//!
//! `cargo run -p berth-priority-scheduler --example one_shot -- nats://127.0.0.1:4222 default hello`

use berth_client::Client;
use berth_messages::api::*;
use berth_messages::command::Action;
use berth_messages::model::{ContainerInstance, InstanceStatus};
use berth_placement::{demand_of, Demand};

/// Memory left after placing `d` on `i`, judged on the API's `remainingResources`.
fn fit_on_remaining(i: &ContainerInstance, d: &Demand) -> Option<i64> {
    let left = |name: &str| {
        i.remaining_resources
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.number())
            .unwrap_or(0)
    };
    (left("CPU") >= d.cpu && left("MEMORY") >= d.memory).then(|| left("MEMORY") - d.memory)
}

async fn place_one(api: &Client, cluster: &str, family: &str) -> anyhow::Result<String> {
    let td: TaskDefinitionResponse = api
        .call(
            Action::DescribeTaskDefinition,
            &TaskDefinitionRefRequest {
                task_definition: family.into(),
                include: vec![],
            },
        )
        .await?;
    let demand = demand_of(&td.task_definition, None)?;
    for _attempt in 0..5 {
        // 1. Read: the cluster's instances (one page here; follow nextToken in real code).
        let list: ListContainerInstancesResponse = api
            .call(
                Action::ListContainerInstances,
                &ListContainerInstancesRequest {
                    cluster: Some(cluster.into()),
                    ..Default::default()
                },
            )
            .await?;
        if list.container_instance_arns.is_empty() {
            anyhow::bail!("the cluster has no instances");
        }
        let described: ContainerInstancesResponse = api
            .call(
                Action::DescribeContainerInstances,
                &DescribeContainerInstancesRequest {
                    cluster: Some(cluster.into()),
                    container_instances: list.container_instance_arns,
                    include: vec![],
                },
            )
            .await?;
        // 2. Decide: best fit on memory among ACTIVE, connected instances with room.
        let best = described
            .container_instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Active && i.agent_connected)
            .filter_map(|i| fit_on_remaining(i, &demand).map(|left| (left, i)))
            .min_by_key(|(left, _)| *left);
        let Some((_, instance)) = best else {
            anyhow::bail!("no room now")
        };
        // 3. Commit on the chosen instance.
        let started: TasksResponse = api
            .call(
                Action::StartTask,
                &StartTaskRequest {
                    cluster: Some(cluster.into()),
                    task_definition: td.task_definition.task_definition_arn.clone(),
                    container_instances: vec![instance.container_instance_arn.clone()],
                    ..Default::default()
                },
            )
            .await?;
        if let Some(task) = started.tasks.first() {
            return Ok(task.task_arn.clone());
        }
        // 4. A RESOURCE:* failure: another scheduler won this instance. Read, choose again.
        eprintln!("refused: {:?}; trying again", started.failures);
    }
    anyhow::bail!("lost the race five times")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let cluster = args.next().unwrap_or_else(|| "default".into());
    let family = args.next().unwrap_or_else(|| "hello".into());
    let api = Client::new(async_nats::connect(url).await?);
    println!("{}", place_one(&api, &cluster, &family).await?);
    Ok(())
}
