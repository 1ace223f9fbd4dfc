//! Boundary validation of names, ids and sizes. Anything that reaches a subject passes
//! through here first, so no input can inject `.`, `*`, `>` or whitespace into one.

use crate::error::ApiError;

/// Longest cluster, family, service or group name ECS accepts.
pub const MAX_NAME: usize = 255;
/// Longest command id / client token Berth accepts (ECS: 64 for RunTask clientToken).
pub const MAX_COMMAND_ID: usize = 64;
/// Largest API request body accepted.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// ECS limit on a task definition's size.
pub const MAX_TASK_DEFINITION_BYTES: usize = 64 * 1024;
/// ECS limit on containers per task definition.
pub const MAX_CONTAINERS: usize = 10;
/// ECS limit on custom attributes per resource.
pub const MAX_ATTRIBUTES: usize = 10;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// An ECS name: 1..=255 of letters, digits, `-`, `_`.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_NAME || !value.chars().all(is_name_char) {
        return Err(ApiError::invalid(format!(
            "{field} '{}' is invalid: up to {MAX_NAME} letters (uppercase and lowercase), numbers, hyphens and underscores are allowed",
            truncate(value)
        )));
    }
    Ok(())
}

/// A cluster name: an ECS name that is not the reserved journal token.
pub fn cluster_name(value: &str) -> Result<(), ApiError> {
    name("cluster", value)?;
    if value == crate::subjects::TASKDEF_TOKEN {
        return Err(ApiError::invalid(format!(
            "cluster name '{value}' is reserved by Berth"
        )));
    }
    Ok(())
}

/// An entity id Berth minted or a caller supplied (instance id, task id): a subject
/// token of name characters.
pub fn id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 || !value.chars().all(is_name_char) {
        return Err(ApiError::invalid(format!(
            "{field} '{}' is not a valid identifier",
            truncate(value)
        )));
    }
    Ok(())
}

/// A command id or client token: 1..=64 of name characters.
pub fn command_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_COMMAND_ID || !value.chars().all(is_name_char) {
        return Err(ApiError::invalid(format!(
            "{field} '{}' is invalid: 1 to {MAX_COMMAND_ID} letters, numbers, hyphens and underscores",
            truncate(value)
        )));
    }
    Ok(())
}

/// An attribute name: 1..=128 of letters, digits, `-`, `_`, `/`, `.`.
pub fn attribute_name(value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| is_name_char(c) || c == '/' || c == '.');
    if !ok {
        return Err(ApiError::invalid(format!(
            "attribute name '{}' is invalid: 1 to 128 letters, numbers, hyphens, underscores, slashes and periods",
            truncate(value)
        )));
    }
    Ok(())
}

/// An attribute value: 1..=128 of letters, digits, `-_./@:` and inner spaces.
pub fn attribute_value(value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && value
            .chars()
            .all(|c| is_name_char(c) || "/.@: ".contains(c));
    if !ok {
        return Err(ApiError::invalid(format!(
            "attribute value '{}' is invalid: 1 to 128 letters, numbers, hyphens, underscores, periods, at signs, colons, slashes and inner spaces",
            truncate(value)
        )));
    }
    Ok(())
}

/// A free-text field with a length limit (startedBy, reason, group).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// `maxResults` of a List action: 1..=100.
pub fn max_results(value: Option<i64>) -> Result<usize, ApiError> {
    match value {
        None => Ok(100),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(format!(
            "maxResults must be between 1 and 100, got {n}"
        ))),
    }
}

/// A batch of identifiers in a Describe-like action: 1..=max entries.
pub fn batch(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 || len > max {
        return Err(ApiError::invalid(format!(
            "{field} must contain between 1 and {max} items, got {len}"
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert!(name("cluster", "prod-1_a").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(256)] {
            assert!(name("cluster", bad).is_err(), "{bad}");
        }
        assert!(cluster_name("taskdef").is_err());
        assert!(attribute_name("ecs.availability-zone").is_ok());
        assert!(attribute_value("us-east-1a").is_ok());
        assert!(attribute_value(" x").is_err());
        assert!(max_results(Some(0)).is_err());
        assert_eq!(max_results(None).unwrap(), 100);
    }

    proptest! {
        #[test]
        fn valid_names_never_break_subjects(s in "\\PC{0,300}") {
            if name("n", &s).is_ok() {
                prop_assert!(!s.contains(['.', '*', '>', ' ', '\t', '\n']));
            }
        }
    }
}
