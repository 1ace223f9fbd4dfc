//! Read actions, answered from this replica's view (no journal round trip). List
//! actions page with an opaque `nextToken` that encodes the view's resume key.

use super::{decode, encode, Reply};
use crate::commands::active_cluster;
use crate::shared::Shared;
use berth_journal::view::{FamilyStatusFilter, Page, TaskFilter};
use berth_messages::api::*;
use berth_messages::codec::Encoding;
use berth_messages::command::{Action, DEFAULT_CLUSTER};
use berth_messages::model::*;
use berth_messages::service::{
    DescribeServicesRequest, DescribeServicesResponse, ListServicesRequest, ListServicesResponse,
    ServiceStatus,
};
use berth_messages::{arn, validate, ApiError};
use std::sync::Arc;

pub async fn read(
    shared: &Shared,
    action: Action,
    enc: Encoding,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let body = match action {
        Action::DescribeClusters => encode(enc, &describe_clusters(shared, decode(enc, body)?)?),
        Action::ListClusters => encode(enc, &list_clusters(shared, decode(enc, body)?)?),
        Action::DescribeContainerInstances => {
            encode(enc, &describe_instances(shared, decode(enc, body)?).await?)
        }
        Action::ListContainerInstances => {
            encode(enc, &list_instances(shared, decode(enc, body)?).await?)
        }
        Action::ListAttributes => encode(enc, &list_attributes(shared, decode(enc, body)?).await?),
        Action::DescribeTaskDefinition => encode(
            enc,
            &describe_task_definition(shared, decode(enc, body)?).await?,
        ),
        Action::ListTaskDefinitions => {
            encode(enc, &list_task_definitions(shared, decode(enc, body)?)?)
        }
        Action::ListTaskDefinitionFamilies => {
            encode(enc, &list_families(shared, decode(enc, body)?)?)
        }
        Action::DescribeTasks => encode(enc, &describe_tasks(shared, decode(enc, body)?).await?),
        Action::ListTasks => encode(enc, &list_tasks(shared, decode(enc, body)?).await?),
        Action::DescribeServices => {
            encode(enc, &describe_services(shared, decode(enc, body)?).await?)
        }
        Action::ListServices => encode(enc, &list_services(shared, decode(enc, body)?).await?),
        Action::GetCommandOutcome => {
            let r: GetCommandOutcomeRequest = decode(enc, body)?;
            validate::command_id("commandId", &r.command_id)?;
            let outcome = shared
                .journal
                .read_outcome(&r.command_id)
                .await
                .map_err(|e| ApiError::server(e.to_string()))?
                .ok_or_else(|| {
                    ApiError::new(
                        berth_messages::ErrorType::ResourceNotFoundException,
                        format!("no outcome for command {}", r.command_id),
                    )
                })?;
            encode(enc, &outcome)
        }
        other => Err(ApiError::invalid(format!("{other} is not a read action"))),
    }?;
    Ok(Reply {
        body,
        sequence: Some(shared.view.applied_sequence()),
    })
}

/// nextToken <-> view resume key: hex, so the token is opaque and always a valid token.
fn token_of(key: Option<String>) -> Option<String> {
    key.map(|k| k.bytes().map(|b| format!("{b:02x}")).collect())
}

fn key_of(token: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(t) = token else { return Ok(None) };
    let bad = || ApiError::invalid("nextToken is invalid");
    if t.len() % 2 != 0 || t.len() > 2048 {
        return Err(bad());
    }
    let bytes = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2).unwrap_or("zz"), 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// Fills a page of `limit` items that pass `keep`, fetching from the view as needed.
fn filtered_page<T>(
    limit: usize,
    mut after: Option<String>,
    fetch: impl Fn(Option<&str>, usize) -> Page<T>,
    keep: impl Fn(&T) -> bool,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    loop {
        let page = fetch(after.as_deref(), limit.max(16));
        let more = page.next.is_some();
        for item in page.items {
            let k = key(&item);
            if keep(&item) {
                out.push(item);
                if out.len() == limit {
                    return (out, Some(k));
                }
            }
            after = Some(k);
        }
        if !more {
            return (out, None);
        }
    }
}

fn cluster_name(given: Option<&str>) -> Result<String, ApiError> {
    let name = arn::cluster_name(given.unwrap_or(DEFAULT_CLUSTER)).to_string();
    validate::cluster_name(&name)?;
    Ok(name)
}

async fn require_cluster(shared: &Shared, given: Option<&str>) -> Result<String, ApiError> {
    let name = cluster_name(given)?;
    active_cluster(shared, &name)
        .await
        .map_err(ApiError::from)?;
    Ok(name)
}

fn describe_clusters(
    shared: &Shared,
    r: DescribeClustersRequest,
) -> Result<DescribeClustersResponse, ApiError> {
    let names = r
        .clusters
        .unwrap_or_else(|| vec![DEFAULT_CLUSTER.to_string()]);
    validate::batch("clusters", names.len(), 100)?;
    let mut out = DescribeClustersResponse::default();
    for given in names {
        let name = arn::cluster_name(&given).to_string();
        match validate::cluster_name(&name)
            .ok()
            .and_then(|_| shared.view.cluster(&name))
        {
            Some(c) => out.clusters.push(crate::commands::cluster_with_counters(
                shared,
                c.value.clone(),
            )),
            None => out
                .failures
                .push(Failure::new(shared.arns.cluster(&name), reason::MISSING)),
        }
    }
    Ok(out)
}

fn list_clusters(
    shared: &Shared,
    r: ListClustersRequest,
) -> Result<ListClustersResponse, ApiError> {
    let limit = validate::max_results(r.max_results)?;
    let after = key_of(r.next_token.as_deref())?;
    let (items, next) = filtered_page(
        limit,
        after,
        |a, l| shared.view.page_clusters(a, l),
        |c| c.value.status != ClusterStatus::Inactive,
        |c| c.value.cluster_name.clone(),
    );
    Ok(ListClustersResponse {
        cluster_arns: items.iter().map(|c| c.value.cluster_arn.clone()).collect(),
        next_token: token_of(next),
    })
}

async fn describe_instances(
    shared: &Shared,
    r: DescribeContainerInstancesRequest,
) -> Result<ContainerInstancesResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    validate::batch("containerInstances", r.container_instances.len(), 100)?;
    let mut out = ContainerInstancesResponse::default();
    for reference in &r.container_instances {
        crate::validation::instance_ref(reference)?;
        let (in_arn, id) = arn::container_instance_id(reference);
        let found = in_arn
            .is_none_or(|c| c == cluster)
            .then(|| shared.view.instance(&cluster, id))
            .flatten();
        match found {
            Some(ci) => out
                .container_instances
                .push(crate::commands::instance_presented(
                    shared,
                    &cluster,
                    ci.value.clone(),
                    ci.version,
                )),
            None => out.failures.push(Failure::new(
                shared.arns.container_instance(&cluster, id),
                reason::MISSING,
            )),
        }
    }
    Ok(out)
}

async fn list_instances(
    shared: &Shared,
    r: ListContainerInstancesRequest,
) -> Result<ListContainerInstancesResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    let limit = validate::max_results(r.max_results)?;
    let filter = match r.filter.as_deref().map(str::trim) {
        Some(f) if !f.is_empty() => Some(berth_placement::parse(f)?),
        _ => None,
    };
    // Task groups and running counts per instance, only when the filter needs them.
    let entries: std::collections::HashMap<String, berth_journal::view::PlacementEntry> =
        match &filter {
            Some(_) => shared
                .view
                .placement_entries(&cluster)
                .into_iter()
                .map(|e| (e.instance.value.container_instance_arn.clone(), e))
                .collect(),
            None => Default::default(),
        };
    let no_groups = std::collections::BTreeMap::new();
    let matches = |ci: &ContainerInstance| match &filter {
        None => true,
        Some(expr) => {
            let entry = entries.get(&ci.container_instance_arn);
            let candidate = berth_placement::Candidate {
                instance: ci,
                groups: entry.map_or(&no_groups, |e| e.groups.as_ref()),
                running_tasks: entry.map_or(0, |e| e.running_tasks),
            };
            berth_placement::evaluate(expr, &candidate)
        }
    };
    let after = key_of(r.next_token.as_deref())?;
    let status = r.status;
    let (items, next) = filtered_page(
        limit,
        after,
        |a, l| shared.view.page_instances(&cluster, status, a, l),
        |ci| {
            (status.is_some() || ci.value.status != InstanceStatus::Inactive) && matches(&ci.value)
        },
        |ci| {
            arn::container_instance_id(&ci.value.container_instance_arn)
                .1
                .to_string()
        },
    );
    Ok(ListContainerInstancesResponse {
        container_instance_arns: items
            .iter()
            .map(|c| c.value.container_instance_arn.clone())
            .collect(),
        next_token: token_of(next),
    })
}

async fn list_attributes(
    shared: &Shared,
    r: ListAttributesRequest,
) -> Result<ListAttributesResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    if r.target_type != "container-instance" {
        return Err(ApiError::invalid(format!(
            "targetType must be container-instance, got {}",
            r.target_type
        )));
    }
    if r.attribute_value.is_some() && r.attribute_name.is_none() {
        return Err(ApiError::invalid("attributeValue requires attributeName"));
    }
    let limit = validate::max_results(r.max_results)?;
    let after = key_of(r.next_token.as_deref())?;
    let mut all: Vec<(String, Attribute)> = Vec::new();
    for ci in shared.view.instances(&cluster) {
        if ci.value.status == InstanceStatus::Inactive {
            continue;
        }
        let id = arn::container_instance_id(&ci.value.container_instance_arn)
            .1
            .to_string();
        for a in &ci.value.attributes {
            if r.attribute_name.as_deref().is_some_and(|n| n != a.name) {
                continue;
            }
            if r.attribute_value.is_some() && a.value != r.attribute_value {
                continue;
            }
            all.push((
                format!("{id}/{}", a.name),
                Attribute {
                    name: a.name.clone(),
                    value: a.value.clone(),
                    target_type: Some("container-instance".into()),
                    target_id: Some(ci.value.container_instance_arn.clone()),
                },
            ));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let start = after
        .as_deref()
        .map_or(0, |k| all.partition_point(|(key, _)| key.as_str() <= k));
    let page: Vec<_> = all.iter().skip(start).take(limit).collect();
    let next = (start + page.len() < all.len())
        .then(|| page.last().map(|(k, _)| k.clone()))
        .flatten();
    Ok(ListAttributesResponse {
        attributes: page.into_iter().map(|(_, a)| a.clone()).collect(),
        next_token: token_of(next),
    })
}

async fn describe_task_definition(
    shared: &Shared,
    r: TaskDefinitionRefRequest,
) -> Result<TaskDefinitionResponse, ApiError> {
    let parsed = crate::validation::task_definition_ref(&r.task_definition)?;
    let found = match parsed.revision {
        Some(rev) => shared.view.task_definition(&parsed.family, rev),
        None => shared.view.latest_active_task_definition(&parsed.family),
    };
    let td = found.ok_or_else(|| ApiError::client("Unable to describe task definition."))?;
    let tags = if r.include.iter().any(|i| i == "TAGS") {
        td.value.tags.clone()
    } else {
        Vec::new()
    };
    Ok(TaskDefinitionResponse {
        task_definition: td.value.clone(),
        tags,
    })
}

fn list_task_definitions(
    shared: &Shared,
    r: ListTaskDefinitionsRequest,
) -> Result<ListTaskDefinitionsResponse, ApiError> {
    let limit = validate::max_results(r.max_results)?;
    if let Some(p) = &r.family_prefix {
        validate::name("familyPrefix", p)?;
    }
    let after = key_of(r.next_token.as_deref())?;
    let status = r.status.unwrap_or(TaskDefinitionStatus::Active);
    let descending = r.sort == Some(SortOrder::Desc);
    // In ECS, familyPrefix of ListTaskDefinitions is a full family name ("web" does not
    // list "webapp"), unlike ListTaskDefinitionFamilies where it is a prefix.
    let family = r.family_prefix.as_deref();
    let (items, next) = filtered_page(
        limit,
        after,
        |a, l| {
            shared
                .view
                .page_task_definitions(family, Some(status), descending, a, l)
        },
        |t| family.is_none_or(|f| t.value.family == f),
        |t| format!("{}:{}", t.value.family, t.value.revision),
    );
    Ok(ListTaskDefinitionsResponse {
        task_definition_arns: items
            .iter()
            .map(|t| t.value.task_definition_arn.clone())
            .collect(),
        next_token: token_of(next),
    })
}

fn list_families(
    shared: &Shared,
    r: ListTaskDefinitionFamiliesRequest,
) -> Result<ListTaskDefinitionFamiliesResponse, ApiError> {
    let limit = validate::max_results(r.max_results)?;
    if let Some(p) = &r.family_prefix {
        validate::name("familyPrefix", p)?;
    }
    let after = key_of(r.next_token.as_deref())?;
    // ECS lists ACTIVE and INACTIVE families when no status is given.
    let status = match r.status.unwrap_or(FamilyStatus::All) {
        FamilyStatus::Active => FamilyStatusFilter::Active,
        FamilyStatus::Inactive => FamilyStatusFilter::Inactive,
        FamilyStatus::All => FamilyStatusFilter::All,
    };
    let page =
        shared
            .view
            .page_families(r.family_prefix.as_deref(), status, after.as_deref(), limit);
    Ok(ListTaskDefinitionFamiliesResponse {
        families: page.items,
        next_token: token_of(page.next),
    })
}

async fn describe_tasks(
    shared: &Shared,
    r: DescribeTasksRequest,
) -> Result<TasksResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    validate::batch("tasks", r.tasks.len(), 100)?;
    // Every reference is checked first; the tasks of this cluster are then read under one
    // lock, and each decoded record (fresh, not shared) is moved into the reply.
    let mut ids: Vec<Option<&str>> = Vec::with_capacity(r.tasks.len());
    for reference in &r.tasks {
        crate::validation::task_ref(reference)?;
        let (in_arn, id) = arn::task_id(reference);
        ids.push(in_arn.is_none_or(|c| c == cluster).then_some(id));
    }
    let wanted: Vec<&str> = ids.iter().flatten().copied().collect();
    let mut found = shared.view.tasks_by_id(&cluster, &wanted).into_iter();
    let mut out = TasksResponse::default();
    for (reference, id) in r.tasks.iter().zip(&ids) {
        let entry = id.and_then(|_| found.next().flatten());
        match entry {
            Some(entry) => {
                let task = Arc::try_unwrap(entry)
                    .map_or_else(|kept| kept.task.clone(), |owned| owned.task);
                out.tasks.push(task.value.presented(task.version));
            }
            None => {
                let id = id.unwrap_or_else(|| arn::task_id(reference).1);
                out.failures.push(Failure::new(
                    shared.arns.task(&cluster, id),
                    reason::MISSING,
                ));
            }
        }
    }
    Ok(out)
}

async fn list_tasks(shared: &Shared, r: ListTasksRequest) -> Result<ListTasksResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    let limit = validate::max_results(r.max_results)?;
    let after = key_of(r.next_token.as_deref())?;
    let empty = ListTasksResponse::default();
    // desiredStatus is never PENDING, and Berth runs no Fargate tasks.
    if r.desired_status == Some(DesiredStatusFilter::Pending)
        || r.launch_type
            .as_deref()
            .is_some_and(|l| l != "EC2" && l != "EXTERNAL")
    {
        return Ok(empty);
    }
    if let Some(f) = &r.family {
        validate::name("family", f)?;
    }
    if let Some(s) = &r.started_by {
        validate::text("startedBy", s, 128)?;
    }
    let group = match &r.service_name {
        Some(name) => {
            let (_, name) = crate::services::validate::service_ref(name)?;
            Some(berth_messages::service::group_of(name))
        }
        None => None,
    };
    let instance_id = match &r.container_instance {
        Some(reference) => {
            crate::validation::instance_ref(reference)?;
            Some(arn::container_instance_id(reference).1.to_string())
        }
        None => None,
    };
    let filter = TaskFilter {
        instance_id,
        family: r.family.clone(),
        started_by: r.started_by.clone(),
        desired_status: Some(match r.desired_status {
            Some(DesiredStatusFilter::Stopped) => TaskStatus::Stopped,
            _ => TaskStatus::Running,
        }),
        group,
    };
    let page = shared
        .view
        .page_tasks(&cluster, &filter, after.as_deref(), limit);
    Ok(ListTasksResponse {
        task_arns: page
            .items
            .iter()
            .map(|t| t.task.value.task_arn.clone())
            .collect(),
        next_token: token_of(page.next),
    })
}

async fn describe_services(
    shared: &Shared,
    r: DescribeServicesRequest,
) -> Result<DescribeServicesResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    validate::batch("services", r.services.len(), 10)?;
    let tags = r.include.iter().any(|i| i == "TAGS");
    let mut out = DescribeServicesResponse::default();
    for reference in &r.services {
        let (in_arn, name) = crate::services::validate::service_ref(reference)?;
        let found = in_arn
            .is_none_or(|c| c == cluster)
            .then(|| shared.view.service(&cluster, name))
            .flatten();
        match found {
            Some(s) => out.services.push(crate::services::present::presented(
                shared, &cluster, &s, tags,
            )),
            None => out.failures.push(Failure::new(
                shared.arns.service(&cluster, name),
                reason::MISSING,
            )),
        }
    }
    Ok(out)
}

async fn list_services(
    shared: &Shared,
    r: ListServicesRequest,
) -> Result<ListServicesResponse, ApiError> {
    let cluster = require_cluster(shared, r.cluster.as_deref()).await?;
    // ECS's default page of ListServices is 10.
    let limit = match r.max_results {
        None => 10,
        given => validate::max_results(given)?,
    };
    let after = key_of(r.next_token.as_deref())?;
    if r.launch_type
        .as_deref()
        .is_some_and(|l| l != "EC2" && l != "EXTERNAL")
    {
        return Ok(ListServicesResponse::default());
    }
    let (items, next) = filtered_page(
        limit,
        after,
        |a, l| {
            let items = shared.view.services_after(&cluster, a, l);
            let next = (items.len() == l)
                .then(|| items.last().map(|s| s.value.service_name.clone()))
                .flatten();
            Page { items, next }
        },
        |s| {
            s.value.status != ServiceStatus::Inactive
                && r.scheduling_strategy
                    .is_none_or(|want| want == s.value.scheduling_strategy)
                && r.launch_type
                    .as_deref()
                    .is_none_or(|l| l == s.value.launch_type)
        },
        |s| s.value.service_name.clone(),
    );
    Ok(ListServicesResponse {
        service_arns: items.iter().map(|s| s.value.service_arn.clone()).collect(),
        next_token: token_of(next),
    })
}
