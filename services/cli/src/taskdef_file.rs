//! Reading a task definition file in ECS JSON format (the RegisterTaskDefinition request
//! body, as `aws ecs register-task-definition --cli-input-json` takes; the output of
//! DescribeTaskDefinition is accepted too). Mistakes are reported with the file, line,
//! column and field path, and misspelt field names with the field meant, because serde
//! would otherwise ignore them silently.

use crate::error::CliError;
use berth_messages::api::RegisterTaskDefinitionRequest;
use serde_json::{Map, Value};

/// Top-level fields of an ECS RegisterTaskDefinition request that Berth reads.
const TASK_FIELDS: &[&str] = &[
    "family",
    "containerDefinitions",
    "networkMode",
    "volumes",
    "placementConstraints",
    "requiresCompatibilities",
    "cpu",
    "memory",
    "taskRoleArn",
    "executionRoleArn",
    "pidMode",
    "ipcMode",
    "tags",
];

/// Top-level ECS fields Berth accepts and ignores.
const TASK_FIELDS_IGNORED: &[&str] = &[
    "proxyConfiguration",
    "inferenceAccelerators",
    "ephemeralStorage",
    "runtimePlatform",
    "enableFaultInjection",
];

/// Read-only fields of a described task definition (DescribeTaskDefinition output).
const TASK_FIELDS_READ_ONLY: &[&str] = &[
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// Container definition fields Berth reads.
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "cpu",
    "memory",
    "memoryReservation",
    "portMappings",
    "essential",
    "entryPoint",
    "command",
    "environment",
    "workingDirectory",
    "user",
    "dependsOn",
    "startTimeout",
    "stopTimeout",
    "hostname",
    "links",
    "mountPoints",
    "volumesFrom",
    "healthCheck",
    "logConfiguration",
    "dockerLabels",
    "ulimits",
    "privileged",
    "readonlyRootFilesystem",
];

/// Container definition fields ECS has and Berth ignores.
const CONTAINER_FIELDS_IGNORED: &[&str] = &[
    "repositoryCredentials",
    "restartPolicy",
    "environmentFiles",
    "linuxParameters",
    "secrets",
    "versionConsistency",
    "disableNetworking",
    "dnsServers",
    "dnsSearchDomains",
    "extraHosts",
    "dockerSecurityOptions",
    "interactive",
    "pseudoTerminal",
    "systemControls",
    "resourceRequirements",
    "firelensConfiguration",
    "credentialSpecs",
];

/// A task definition read from a file, and notes about what Berth ignores in it.
#[derive(Debug)]
pub struct ParsedTaskDefinition {
    pub request: RegisterTaskDefinitionRequest,
    pub warnings: Vec<String>,
}

/// Parses `text`, read from `file` (named in messages).
pub fn parse(file: &str, text: &str) -> Result<ParsedTaskDefinition, CliError> {
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
            "{file}: a task definition is a JSON object like \
             {{\"family\": \"hello\", \"containerDefinitions\": [...]}}, not {}",
            kind_of(&document)
        )));
    };
    let mut warnings = Vec::new();
    // DescribeTaskDefinition output: {"taskDefinition": {...}, "tags": [...]}.
    let (definition, wrapped) = match top.get("taskDefinition") {
        Some(Value::Object(inner)) if !top.contains_key("family") => (inner, true),
        _ => (top, false),
    };
    let task_fields = Fields {
        prefix: "",
        what: "a task definition",
        known: TASK_FIELDS,
        ignored: TASK_FIELDS_IGNORED,
        silent: TASK_FIELDS_READ_ONLY,
    };
    check_fields(file, text, &task_fields, definition, &mut warnings)?;
    if let Some(Value::Array(containers)) = definition.get("containerDefinitions") {
        if containers.is_empty() {
            return Err(CliError::input(format!(
                "{file}:{}: containerDefinitions is empty: a task definition needs at least \
                 one container",
                line_of_key(text, "containerDefinitions")
            )));
        }
        for (i, c) in containers.iter().enumerate() {
            if let Value::Object(c) = c {
                let prefix = format!("containerDefinitions[{i}].");
                let container_fields = Fields {
                    prefix: &prefix,
                    what: "a container definition",
                    known: CONTAINER_FIELDS,
                    ignored: CONTAINER_FIELDS_IGNORED,
                    silent: &[],
                };
                check_fields(file, text, &container_fields, c, &mut warnings)?;
            }
        }
    }
    let request: RegisterTaskDefinitionRequest = if wrapped {
        serde_path_to_error::deserialize(Value::Object(definition.clone())).map_err(|e| {
            CliError::input(format!(
                "{file}: taskDefinition.{}: {}",
                e.path(),
                friendlier(&e.inner().to_string())
            ))
        })?
    } else {
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
    };
    Ok(ParsedTaskDefinition { request, warnings })
}

/// What an object of an ECS JSON file may hold.
pub(crate) struct Fields<'a> {
    /// Where the object is (`""` at the top, `containerDefinitions[0].` ...).
    pub prefix: &'a str,
    /// What the object is, for messages ("a task definition").
    pub what: &'a str,
    pub known: &'a [&'a str],
    /// ECS fields Berth does not use: a warning each.
    pub ignored: &'a [&'a str],
    /// Fields accepted without a word (what a describe prints back).
    pub silent: &'a [&'a str],
}

/// Rejects fields ECS does not have (naming the one probably meant) and notes the ECS
/// fields Berth ignores.
pub(crate) fn check_fields(
    file: &str,
    text: &str,
    fields: &Fields<'_>,
    object: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), CliError> {
    let Fields {
        prefix,
        what,
        known,
        ignored,
        silent,
    } = fields;
    for key in object.keys() {
        if known.contains(&key.as_str()) || silent.contains(&key.as_str()) {
            continue;
        }
        if ignored.contains(&key.as_str()) {
            warnings.push(format!(
                "{file}:{}: {prefix}{key} is an ECS field that Berth does not support yet: ignored",
                line_of_key(text, key)
            ));
            continue;
        }
        let mut message = format!(
            "{file}:{}: unknown field \"{prefix}{key}\": not a field of {what} in ECS JSON",
            line_of_key(text, key)
        );
        if let Some(meant) = closest(key, known.iter().chain(ignored.iter())) {
            message.push_str(&format!(" (did you mean \"{meant}\"?)"));
        }
        return Err(CliError::input(message));
    }
    Ok(())
}

/// The line of the first `"key":` in the text (1-based); 1 when not found.
pub(crate) fn line_of_key(text: &str, key: &str) -> usize {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(found) = text[from..].find(&quoted) {
        let at = from + found;
        let after = text[at + quoted.len()..].trim_start();
        if after.starts_with(':') {
            return text[..at].matches('\n').count() + 1;
        }
        from = at + quoted.len();
    }
    1
}

/// The known name closest to `key`: same letters ignoring case, or at most two edits.
pub(crate) fn closest<'a>(key: &str, known: impl Iterator<Item = &'a &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    known
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// serde_json's message without its " at line L column C" suffix.
pub(crate) fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

/// Serde's type names in words.
pub(crate) fn friendlier(message: &str) -> String {
    message
        .replace("expected i64", "expected an integer")
        .replace("expected i32", "expected an integer")
        .replace("expected u32", "expected a positive integer")
        .replace("expected a sequence", "expected a JSON array")
        .replace("expected a boolean", "expected true or false")
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse("td.json", text).unwrap_err().to_string()
    }

    #[test]
    fn reads_an_ecs_task_definition() {
        let parsed = parse(
            "td.json",
            r#"{
              "family": "hello",
              "containerDefinitions": [
                {"name": "app", "image": "busybox", "memory": 64, "essential": true,
                 "command": ["sh", "-c", "echo hi"], "secrets": []}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(parsed.request.family, "hello");
        assert_eq!(parsed.request.container_definitions[0].memory, Some(64));
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(parsed.warnings[0].contains("containerDefinitions[0].secrets"));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = error_of("{\n  \"family\": \"x\",\n  \"containerDefinitions\": [\n}");
        assert!(e.starts_with("td.json:4:1: not valid JSON:"), "{e}");
    }

    #[test]
    fn type_errors_name_the_field_path_and_line() {
        let e = error_of(
            "{\"family\": \"x\",\n \"containerDefinitions\": [\n  {\"name\": \"a\", \"memory\": \"lots\"}]}",
        );
        assert!(e.starts_with("td.json:3:"), "{e}");
        assert!(
            e.contains("containerDefinitions[0].memory: invalid type: string \"lots\", expected an integer"),
            "{e}"
        );
    }

    #[test]
    fn missing_required_field_is_named() {
        let e = error_of("{\"containerDefinitions\": [{\"name\": \"a\"}]}");
        assert!(e.contains("missing field `family`"), "{e}");
    }

    #[test]
    fn misspelt_fields_are_refused_with_the_one_meant() {
        let e = error_of(
            "{\"family\": \"x\",\n \"containerDefinitions\": [\n  {\"name\": \"a\", \"comand\": [\"true\"]}]}",
        );
        assert_eq!(
            e,
            "td.json:3: unknown field \"containerDefinitions[0].comand\": not a field of a \
             container definition in ECS JSON (did you mean \"command\"?)"
        );
        let e = error_of("{\"Family\": \"x\", \"containerDefinitions\": [{\"name\": \"a\"}]}");
        assert!(e.contains("(did you mean \"family\"?)"), "{e}");
    }

    #[test]
    fn not_an_object_and_no_containers_are_explained() {
        assert!(error_of("[]").contains("not an array"));
        let e = error_of("{\"family\": \"x\", \"containerDefinitions\": []}");
        assert!(e.contains("containerDefinitions is empty"), "{e}");
    }

    #[test]
    fn describe_output_is_accepted() {
        let parsed = parse(
            "td.json",
            r#"{"taskDefinition": {"family": "x", "revision": 3, "status": "ACTIVE",
                "taskDefinitionArn": "arn:aws:ecs:local:0:task-definition/x:3",
                "containerDefinitions": [{"name": "a", "memory": 16}]}, "tags": []}"#,
        )
        .unwrap();
        assert_eq!(parsed.request.family, "x");
    }
}
