//! Rendering: aligned tables for people and pretty JSON (the ECS response) for programs,
//! plus the short forms of ARNs and resources that tables show.

use crate::error::CliError;
use berth_messages::model::{Resource, Task};
use serde::Serialize;
use std::io::Write;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints to stdout, ignoring a closed pipe (`berth ... | head`).
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Prints a line to stderr (progress, warnings, notes).
pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Pretty JSON of an API response, with a final newline.
pub fn json<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| CliError::other(format!("cannot render JSON: {e}")))
}

/// The id at the end of an ARN (`.../<id>`), or the input when it is not an ARN.
pub fn short_id(arn: &str) -> &str {
    if arn.starts_with("arn:") {
        arn.rsplit('/').next().unwrap_or(arn)
    } else {
        arn
    }
}

/// `family:revision` of a task-definition ARN.
pub fn short_task_definition(arn: &str) -> &str {
    match berth_messages::arn::split(arn) {
        Some(("task-definition", rest)) => rest,
        _ => arn,
    }
}

/// A numeric resource by name.
pub fn resource_number(resources: &[Resource], name: &str) -> Option<i64> {
    resources
        .iter()
        .find(|r| r.name == name)
        .and_then(Resource::number)
}

/// A string-set resource by name (ports).
pub fn resource_set<'a>(resources: &'a [Resource], name: &str) -> &'a [String] {
    resources
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.string_set_value.as_slice())
        .unwrap_or(&[])
}

/// "free/total" of a numeric resource.
pub fn free_of(remaining: &[Resource], registered: &[Resource], name: &str) -> String {
    let show = |v: Option<i64>| v.map_or("-".to_string(), |n| n.to_string());
    format!(
        "{}/{}",
        show(resource_number(remaining, name)),
        show(resource_number(registered, name))
    )
}

/// Exit codes of a task's containers, e.g. "0" or "app=0 sidecar=137"; "-" when none.
pub fn exit_codes(task: &Task) -> String {
    let known: Vec<(&str, i32)> = task
        .containers
        .iter()
        .filter_map(|c| c.exit_code.map(|code| (c.name.as_str(), code)))
        .collect();
    match known.as_slice() {
        [] => "-".into(),
        [(_, code)] if task.containers.len() == 1 => code.to_string(),
        many => many
            .iter()
            .map(|(name, code)| format!("{name}={code}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// A task's one-line table row: id, definition, last, desired, instance, started by, exit.
pub fn task_row(task: &Task) -> Vec<String> {
    vec![
        short_id(&task.task_arn).to_string(),
        short_task_definition(&task.task_definition_arn).to_string(),
        task.last_status.as_str().to_string(),
        task.desired_status.as_str().to_string(),
        short_id(&task.container_instance_arn).to_string(),
        task.started_by.clone().unwrap_or_else(|| "-".into()),
        exit_codes(task),
    ]
}

/// Headers of [`task_row`].
pub const TASK_HEADERS: &[&str] = &[
    "TASK",
    "DEFINITION",
    "LAST",
    "DESIRED",
    "INSTANCE",
    "STARTED BY",
    "EXIT",
];

/// Tasks as a table.
pub fn task_table(tasks: &[Task]) -> String {
    let mut table = Table::new(TASK_HEADERS);
    for t in tasks {
        table.row(task_row(t));
    }
    table.render()
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp (second precision).
pub fn timestamp(epoch_seconds: f64) -> String {
    if !epoch_seconds.is_finite() || epoch_seconds <= 0.0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp(epoch_seconds as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::Container;

    #[test]
    fn table_pads_columns_and_trims_lines() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["default".into(), "ACTIVE".into()]);
        t.row(vec!["x".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME     STATUS\ndefault  ACTIVE\nx\n",
            "{}",
            t.render()
        );
    }

    #[test]
    fn short_forms() {
        assert_eq!(short_id("arn:aws:ecs:local:0:task/default/abc"), "abc");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(
            short_task_definition("arn:aws:ecs:local:0:task-definition/hello:3"),
            "hello:3"
        );
    }

    #[test]
    fn exit_codes_name_containers_when_several() {
        let mut task = Task::default();
        task.containers.push(Container {
            name: "app".into(),
            exit_code: Some(0),
            ..Default::default()
        });
        assert_eq!(exit_codes(&task), "0");
        task.containers.push(Container {
            name: "side".into(),
            exit_code: Some(3),
            ..Default::default()
        });
        assert_eq!(exit_codes(&task), "app=0 side=3");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0.0), "-");
        assert_eq!(timestamp(1_700_000_000.5), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
    }
}
