//! Reading `berth services create --cli-input-json FILE`: the ECS CreateService request
//! body, as `aws ecs create-service --cli-input-json` takes it. As with task-definition
//! files, mistakes are reported with the file, line, column and field path, misspelt
//! field names with the field meant, and the ECS fields Berth ignores with a warning.

use crate::error::CliError;
use crate::taskdef_file::{
    check_fields, friendlier, kind_of, line_of_key, without_position, Fields,
};
use berth_messages::service::CreateServiceRequest;
use serde_json::Value;

/// Top-level fields of an ECS CreateService request that Berth reads.
const SERVICE_FIELDS: &[&str] = &[
    "cluster",
    "serviceName",
    "taskDefinition",
    "desiredCount",
    "deploymentConfiguration",
    "placementConstraints",
    "placementStrategy",
    "schedulingStrategy",
    "deploymentController",
    "healthCheckGracePeriodSeconds",
    "launchType",
    "clientToken",
    "tags",
    "propagateTags",
    "enableExecuteCommand",
    "loadBalancers",
    "serviceRegistries",
    "networkConfiguration",
];

/// Top-level ECS fields Berth accepts and ignores.
const SERVICE_FIELDS_IGNORED: &[&str] = &[
    "availabilityZoneRebalancing",
    "capacityProviderStrategy",
    "platformVersion",
    "role",
    "enableECSManagedTags",
    "serviceConnectConfiguration",
    "volumeConfigurations",
    "vpcLatticeConfigurations",
];

/// `deploymentConfiguration` fields Berth reads.
const DEPLOYMENT_FIELDS: &[&str] = &[
    "deploymentCircuitBreaker",
    "maximumPercent",
    "minimumHealthyPercent",
];

/// `deploymentConfiguration` fields ECS has and Berth ignores.
const DEPLOYMENT_FIELDS_IGNORED: &[&str] =
    &["alarms", "strategy", "bakeTimeInMinutes", "lifecycleHooks"];

/// A CreateService request read from a file, and notes about what Berth ignores in it.
#[derive(Debug)]
pub struct ParsedService {
    pub request: CreateServiceRequest,
    pub warnings: Vec<String>,
}

/// Parses `text`, read from `file` (named in messages).
pub fn parse(file: &str, text: &str) -> Result<ParsedService, CliError> {
    let document: Value = serde_json::from_str(text).map_err(|e| {
        CliError::input(format!(
            "{file}:{}:{}: not valid JSON: {}",
            e.line(),
            e.column(),
            without_position(&e)
        ))
    })?;
    let Value::Object(top) = &document else {
        return Err(CliError::input(format!(
            "{file}: a CreateService request is a JSON object like \
             {{\"serviceName\": \"web\", \"taskDefinition\": \"web:1\", \"desiredCount\": 2}}, \
             not {}",
            kind_of(&document)
        )));
    };
    let mut warnings = Vec::new();
    let service_fields = Fields {
        prefix: "",
        what: "a CreateService request",
        known: SERVICE_FIELDS,
        ignored: SERVICE_FIELDS_IGNORED,
        silent: &[],
    };
    check_fields(file, text, &service_fields, top, &mut warnings)?;
    if let Some(Value::Object(c)) = top.get("deploymentConfiguration") {
        let deployment_fields = Fields {
            prefix: "deploymentConfiguration.",
            what: "a deployment configuration",
            known: DEPLOYMENT_FIELDS,
            ignored: DEPLOYMENT_FIELDS_IGNORED,
            silent: &[],
        };
        check_fields(file, text, &deployment_fields, c, &mut warnings)?;
    }
    let request: CreateServiceRequest = if top.contains_key("serviceName") {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner();
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            CliError::input(format!(
                "{file}:{}:{}: {at}{}",
                inner.line(),
                inner.column(),
                friendlier(&without_position(inner))
            ))
        })?
    } else {
        // The name may come from the command line: read the rest without it.
        let mut top = top.clone();
        top.insert("serviceName".into(), Value::String(String::new()));
        serde_path_to_error::deserialize(Value::Object(top)).map_err(|e| {
            let path = e.path().to_string();
            let key = path
                .rsplit('.')
                .next()
                .map(|k| k.split('[').next().unwrap_or(k))
                .unwrap_or_default();
            CliError::input(format!(
                "{file}:{}: {path}: {}",
                line_of_key(text, key),
                friendlier(&e.inner().to_string())
            ))
        })?
    };
    Ok(ParsedService { request, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::service::SchedulingStrategy;

    fn error_of(text: &str) -> String {
        parse("svc.json", text).unwrap_err().to_string()
    }

    #[test]
    fn reads_an_ecs_create_service_body() {
        let parsed = parse(
            "svc.json",
            r#"{
              "cluster": "prod",
              "serviceName": "web",
              "taskDefinition": "web:3",
              "desiredCount": 2,
              "schedulingStrategy": "REPLICA",
              "deploymentConfiguration": {
                "maximumPercent": 150, "minimumHealthyPercent": 50,
                "deploymentCircuitBreaker": {"enable": true, "rollback": true}
              },
              "placementConstraints": [{"type": "memberOf", "expression": "attribute:zone == a"}],
              "placementStrategy": [{"type": "spread", "field": "instanceId"}],
              "healthCheckGracePeriodSeconds": 30,
              "tags": [{"key": "team", "value": "a"}],
              "capacityProviderStrategy": []
            }"#,
        )
        .unwrap();
        let r = &parsed.request;
        assert_eq!(r.cluster.as_deref(), Some("prod"));
        assert_eq!(r.service_name, "web");
        assert_eq!(r.task_definition.as_deref(), Some("web:3"));
        assert_eq!(r.desired_count, Some(2));
        assert_eq!(r.scheduling_strategy, Some(SchedulingStrategy::Replica));
        let c = r.deployment_configuration.as_ref().unwrap();
        assert_eq!(c.maximum_percent, Some(150));
        assert_eq!(c.minimum_healthy_percent, Some(50));
        assert!(c.deployment_circuit_breaker.unwrap().rollback);
        assert_eq!(r.placement_constraints.len(), 1);
        assert_eq!(r.placement_strategy[0].field.as_deref(), Some("instanceId"));
        assert_eq!(r.health_check_grace_period_seconds, Some(30));
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(
            parsed.warnings[0].starts_with("svc.json:15: capacityProviderStrategy"),
            "{:?}",
            parsed.warnings
        );
    }

    #[test]
    fn a_bad_file_says_where_and_what() {
        let e = error_of("{\n  \"serviceName\": \"web\",\n  \"desiredCount\": 2,\n");
        assert!(e.starts_with("svc.json:4:"), "{e}");
        assert!(e.contains("not valid JSON"), "{e}");

        let e = error_of("{\"serviceName\": \"web\",\n \"desiredCount\": \"two\"}");
        assert!(e.starts_with("svc.json:2:"), "{e}");
        assert!(
            e.contains("desiredCount: invalid type: string \"two\", expected an integer"),
            "{e}"
        );

        let e = error_of("{\"serviceName\": \"web\",\n \"desiredcount\": 2}");
        assert_eq!(
            e,
            "svc.json:2: unknown field \"desiredcount\": not a field of a CreateService \
             request in ECS JSON (did you mean \"desiredCount\"?)"
        );

        let e = error_of(
            "{\"serviceName\": \"web\", \"deploymentConfiguration\": {\"maximumPercnt\": 200}}",
        );
        assert!(
            e.contains("deploymentConfiguration.maximumPercnt")
                && e.contains("(did you mean \"maximumPercent\"?)"),
            "{e}"
        );

        let e = error_of("{\"serviceName\": \"web\", \"schedulingStrategy\": \"SOMETIMES\"}");
        assert!(
            e.contains("schedulingStrategy: unknown variant `SOMETIMES`"),
            "{e}"
        );

        assert!(error_of("[1]").contains("not an array"));
    }

    #[test]
    fn service_name_may_come_from_the_command_line() {
        let parsed = parse("svc.json", r#"{"taskDefinition": "web"}"#).unwrap();
        assert_eq!(parsed.request.service_name, "");
        let e = error_of("{\"taskDefinition\": \"web\",\n \"desiredCount\": true}");
        assert_eq!(
            e,
            "svc.json:2: desiredCount: invalid type: boolean `true`, expected an integer"
        );
    }
}
