//! Placement flags as clap value parsers, so that a malformed flag is a clap error naming
//! the flag: `--placement-constraint memberOf:EXPR` (or `distinctInstance`) and
//! `--placement-strategy spread:FIELD | binpack:cpu | binpack:memory | random`. They
//! become the ECS `placementConstraints` / `placementStrategy` entries; the control plane
//! checks memberOf expressions and spread fields (the same rules as the API's).

use berth_messages::model::{PlacementConstraint, PlacementStrategy};

/// `memberOf:EXPR` or `distinctInstance`. The expression may itself hold colons
/// (`memberOf:attribute:ecs.instance-type == t2.small`): only the first one splits.
pub fn parse_constraint(text: &str) -> Result<PlacementConstraint, String> {
    let (kind, expression) = match text.split_once(':') {
        Some((kind, rest)) => (kind.trim(), Some(rest.trim())),
        None => (text.trim(), None),
    };
    if kind.eq_ignore_ascii_case("memberOf") {
        match expression {
            Some(e) if !e.is_empty() => Ok(PlacementConstraint {
                constraint_type: Some("memberOf".into()),
                expression: Some(e.to_string()),
            }),
            _ => Err(
                "memberOf needs an expression, e.g. 'memberOf:attribute:ecs.instance-type == t2.small'"
                    .into(),
            ),
        }
    } else if kind.eq_ignore_ascii_case("distinctInstance") {
        match expression {
            None | Some("") => Ok(PlacementConstraint {
                constraint_type: Some("distinctInstance".into()),
                expression: None,
            }),
            Some(_) => Err("distinctInstance takes no expression".into()),
        }
    } else {
        Err(format!(
            "'{text}' is not a placement constraint: give 'memberOf:EXPR' or 'distinctInstance'"
        ))
    }
}

/// `spread:FIELD`, `binpack:cpu`, `binpack:memory` or `random`.
pub fn parse_strategy(text: &str) -> Result<PlacementStrategy, String> {
    let (kind, field) = match text.split_once(':') {
        Some((kind, rest)) => (kind.trim(), Some(rest.trim()).filter(|f| !f.is_empty())),
        None => (text.trim(), None),
    };
    let strategy = |kind: &str, field: Option<&str>| PlacementStrategy {
        strategy_type: Some(kind.into()),
        field: field.map(str::to_string),
    };
    if kind.eq_ignore_ascii_case("spread") {
        match field {
            Some(f) => Ok(strategy("spread", Some(f))),
            None => Err(
                "spread needs a field: 'spread:instanceId', 'spread:host' or 'spread:attribute:NAME'"
                    .into(),
            ),
        }
    } else if kind.eq_ignore_ascii_case("binpack") {
        match field {
            Some(f) if f.eq_ignore_ascii_case("cpu") => Ok(strategy("binpack", Some("cpu"))),
            Some(f) if f.eq_ignore_ascii_case("memory") => Ok(strategy("binpack", Some("memory"))),
            _ => Err("binpack needs a field: 'binpack:cpu' or 'binpack:memory'".into()),
        }
    } else if kind.eq_ignore_ascii_case("random") {
        match field {
            None => Ok(strategy("random", None)),
            Some(_) => Err("random takes no field".into()),
        }
    } else {
        Err(format!(
            "'{text}' is not a placement strategy: give 'spread:FIELD', 'binpack:cpu', \
             'binpack:memory' or 'random'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints() {
        let c = parse_constraint("memberOf:attribute:ecs.instance-type == t2.small").unwrap();
        assert_eq!(c.constraint_type.as_deref(), Some("memberOf"));
        assert_eq!(
            c.expression.as_deref(),
            Some("attribute:ecs.instance-type == t2.small")
        );
        let c = parse_constraint("distinctInstance").unwrap();
        assert_eq!(c.constraint_type.as_deref(), Some("distinctInstance"));
        assert_eq!(c.expression, None);
        assert!(parse_constraint("memberOf").is_err());
        assert!(parse_constraint("memberOf:  ").is_err());
        assert!(parse_constraint("distinctInstance:x").is_err());
        assert!(parse_constraint("sameHost:x")
            .unwrap_err()
            .contains("not a placement constraint"));
    }

    #[test]
    fn strategies() {
        let s = parse_strategy("spread:attribute:zone").unwrap();
        assert_eq!(s.strategy_type.as_deref(), Some("spread"));
        assert_eq!(s.field.as_deref(), Some("attribute:zone"));
        let s = parse_strategy("binpack:MEMORY").unwrap();
        assert_eq!(
            (s.strategy_type.as_deref(), s.field.as_deref()),
            (Some("binpack"), Some("memory"))
        );
        let s = parse_strategy("random").unwrap();
        assert_eq!(
            (s.strategy_type.as_deref(), s.field),
            (Some("random"), None)
        );
        assert!(parse_strategy("spread").is_err());
        assert!(parse_strategy("binpack:disk").is_err());
        assert!(parse_strategy("random:x").is_err());
        assert!(parse_strategy("pack").is_err());
    }
}
