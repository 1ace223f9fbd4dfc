//! Placement constraints and strategies as the placer uses them, read from the ECS API
//! shapes ([`PlacementConstraint`], [`PlacementStrategy`]) with ECS's checks: at most 10
//! constraints (task definition and request together) and 5 strategies, known types and
//! fields, valid expressions. Errors are `InvalidParameterException` text.

use crate::expr::{self, Expr, ParseError};
use berth_messages::error::ApiError;
use berth_messages::model::{PlacementConstraint, PlacementStrategy};
use berth_messages::validate;
use std::fmt;

/// ECS limit on placement constraints per placement (task definition plus request).
pub const MAX_CONSTRAINTS: usize = 10;
/// ECS limit on placement strategies per placement.
pub const MAX_STRATEGIES: usize = 5;

/// A binding rule: an instance that breaks one never gets the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// No two tasks of the request's group on one instance.
    DistinctInstance,
    /// The instance must satisfy the expression.
    MemberOf(Expr),
}

/// A best-effort preference; strategies apply in order, each narrowing the candidates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The instances with the least of the field left after placement.
    Binpack(BinpackField),
    /// The instances whose value of the field holds the fewest tasks of the group.
    Spread(SpreadField),
    /// No narrowing.
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinpackField {
    Cpu,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpreadField {
    /// `instanceId` or its alias `host`.
    InstanceId,
    /// `attribute:<name>`; instances lacking the attribute form one bucket of their own.
    Attribute(String),
}

/// Why constraints or strategies are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "Too many placement constraints: {0} given (task definition and request together); at most {MAX_CONSTRAINTS} are allowed."
    )]
    TooManyConstraints(usize),
    #[error("Too many placement strategies: {0} given; at most {MAX_STRATEGIES} are allowed.")]
    TooManyStrategies(usize),
    #[error("A placement constraint needs a type: distinctInstance or memberOf.")]
    MissingConstraintType,
    #[error("Unknown placement constraint type '{0}': must be distinctInstance or memberOf.")]
    UnknownConstraintType(String),
    #[error("The distinctInstance placement constraint takes no expression.")]
    UnexpectedExpression,
    #[error("The memberOf placement constraint needs an expression.")]
    MissingExpression,
    #[error("Invalid memberOf expression '{expression}': {error}")]
    InvalidExpression {
        /// The expression, cut to 200 characters.
        expression: String,
        error: ParseError,
    },
    #[error("A placement strategy needs a type: binpack, spread or random.")]
    MissingStrategyType,
    #[error("Unknown placement strategy type '{0}': must be binpack, spread or random.")]
    UnknownStrategyType(String),
    #[error("The {strategy} placement strategy needs a field: {allowed}.")]
    MissingStrategyField {
        strategy: &'static str,
        allowed: &'static str,
    },
    #[error("Invalid field '{field}' for the {strategy} placement strategy: must be {allowed}.")]
    InvalidStrategyField {
        strategy: &'static str,
        field: String,
        allowed: &'static str,
    },
    #[error("The random placement strategy takes no field (got '{0}').")]
    UnexpectedStrategyField(String),
}

impl From<PlacementError> for ApiError {
    fn from(e: PlacementError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

const BINPACK_FIELDS: &str = "cpu or memory";
const SPREAD_FIELDS: &str = "instanceId, host or attribute:<name>";

/// Reads constraints in order (the caller passes the task definition's followed by the
/// request's). An empty expression counts as none.
pub fn constraints_from(list: &[PlacementConstraint]) -> Result<Vec<Constraint>, PlacementError> {
    if list.len() > MAX_CONSTRAINTS {
        return Err(PlacementError::TooManyConstraints(list.len()));
    }
    list.iter()
        .map(|c| {
            let expression = c.expression.as_deref().filter(|e| !e.trim().is_empty());
            match c.constraint_type.as_deref() {
                None | Some("") => Err(PlacementError::MissingConstraintType),
                Some("distinctInstance") => match expression {
                    None => Ok(Constraint::DistinctInstance),
                    Some(_) => Err(PlacementError::UnexpectedExpression),
                },
                Some("memberOf") => {
                    let expression = expression.ok_or(PlacementError::MissingExpression)?;
                    expr::parse(expression)
                        .map(Constraint::MemberOf)
                        .map_err(|error| PlacementError::InvalidExpression {
                            expression: cut(expression, 200),
                            error,
                        })
                }
                Some(other) => Err(PlacementError::UnknownConstraintType(cut(other, 100))),
            }
        })
        .collect()
}

/// Reads strategies in order. Field names are case-insensitive as in ECS (`MEMORY`,
/// `instanceID`); an attribute name keeps its case.
pub fn strategies_from(list: &[PlacementStrategy]) -> Result<Vec<Strategy>, PlacementError> {
    if list.len() > MAX_STRATEGIES {
        return Err(PlacementError::TooManyStrategies(list.len()));
    }
    list.iter()
        .map(|s| {
            let field = s.field.as_deref().map(str::trim).filter(|f| !f.is_empty());
            match s.strategy_type.as_deref() {
                None | Some("") => Err(PlacementError::MissingStrategyType),
                Some("random") => match field {
                    None => Ok(Strategy::Random),
                    Some(f) => Err(PlacementError::UnexpectedStrategyField(cut(f, 100))),
                },
                Some("binpack") => {
                    let invalid = |f: &str| PlacementError::InvalidStrategyField {
                        strategy: "binpack",
                        field: cut(f, 100),
                        allowed: BINPACK_FIELDS,
                    };
                    match field {
                        None => Err(PlacementError::MissingStrategyField {
                            strategy: "binpack",
                            allowed: BINPACK_FIELDS,
                        }),
                        Some(f) if f.eq_ignore_ascii_case("cpu") => {
                            Ok(Strategy::Binpack(BinpackField::Cpu))
                        }
                        Some(f) if f.eq_ignore_ascii_case("memory") => {
                            Ok(Strategy::Binpack(BinpackField::Memory))
                        }
                        Some(f) => Err(invalid(f)),
                    }
                }
                Some("spread") => {
                    let Some(f) = field else {
                        return Err(PlacementError::MissingStrategyField {
                            strategy: "spread",
                            allowed: SPREAD_FIELDS,
                        });
                    };
                    spread_field(f).map(Strategy::Spread).ok_or_else(|| {
                        PlacementError::InvalidStrategyField {
                            strategy: "spread",
                            field: cut(f, 100),
                            allowed: SPREAD_FIELDS,
                        }
                    })
                }
                Some(other) => Err(PlacementError::UnknownStrategyType(cut(other, 100))),
            }
        })
        .collect()
}

fn spread_field(field: &str) -> Option<SpreadField> {
    if field.eq_ignore_ascii_case("instanceId") || field.eq_ignore_ascii_case("host") {
        return Some(SpreadField::InstanceId);
    }
    const PREFIX: &str = "attribute:";
    if field.len() > PREFIX.len() && field[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        let name = &field[PREFIX.len()..];
        if validate::attribute_name(name).is_ok() {
            return Some(SpreadField::Attribute(name.to_string()));
        }
    }
    None
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

impl Constraint {
    /// The ECS API shape (canonical expression).
    pub fn to_model(&self) -> PlacementConstraint {
        match self {
            Self::DistinctInstance => PlacementConstraint {
                constraint_type: Some("distinctInstance".into()),
                expression: None,
            },
            Self::MemberOf(e) => PlacementConstraint {
                constraint_type: Some("memberOf".into()),
                expression: Some(e.to_string()),
            },
        }
    }
}

impl Strategy {
    /// The ECS API shape.
    pub fn to_model(&self) -> PlacementStrategy {
        let (kind, field) = match self {
            Self::Binpack(BinpackField::Cpu) => ("binpack", Some("cpu".to_string())),
            Self::Binpack(BinpackField::Memory) => ("binpack", Some("memory".to_string())),
            Self::Spread(SpreadField::InstanceId) => ("spread", Some("instanceId".to_string())),
            Self::Spread(SpreadField::Attribute(name)) => {
                ("spread", Some(format!("attribute:{name}")))
            }
            Self::Random => ("random", None),
        };
        PlacementStrategy {
            strategy_type: Some(kind.into()),
            field,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DistinctInstance => f.write_str("distinctInstance"),
            Self::MemberOf(e) => write!(f, "memberOf({e})"),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let model = self.to_model();
        match model.field {
            Some(field) => write!(f, "{}({field})", model.strategy_type.unwrap_or_default()),
            None => f.write_str(&model.strategy_type.unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::error::ErrorType;

    fn constraint(kind: Option<&str>, expression: Option<&str>) -> PlacementConstraint {
        PlacementConstraint {
            constraint_type: kind.map(str::to_string),
            expression: expression.map(str::to_string),
        }
    }

    fn strategy(kind: Option<&str>, field: Option<&str>) -> PlacementStrategy {
        PlacementStrategy {
            strategy_type: kind.map(str::to_string),
            field: field.map(str::to_string),
        }
    }

    #[test]
    fn reads_constraints() {
        let got = constraints_from(&[
            constraint(Some("distinctInstance"), None),
            constraint(Some("distinctInstance"), Some("  ")),
            constraint(
                Some("memberOf"),
                Some("attribute:ecs.instance-type == t2.small"),
            ),
        ])
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Constraint::DistinctInstance);
        assert_eq!(got[1], Constraint::DistinctInstance);
        assert_eq!(
            got[2].to_string(),
            "memberOf(attribute:ecs.instance-type == t2.small)"
        );
        assert_eq!(constraints_from(&[got[2].to_model()]).unwrap()[0], got[2]);
        assert_eq!(constraints_from(&[]).unwrap(), vec![]);
    }

    #[test]
    fn bad_constraints_are_invalid_parameters() {
        let cases = [
            (
                constraint(None, None),
                PlacementError::MissingConstraintType,
            ),
            (
                constraint(Some("sameZone"), None),
                PlacementError::UnknownConstraintType("sameZone".into()),
            ),
            (
                constraint(Some("DistinctInstance"), None),
                PlacementError::UnknownConstraintType("DistinctInstance".into()),
            ),
            (
                constraint(Some("distinctInstance"), Some("runningTasksCount == 0")),
                PlacementError::UnexpectedExpression,
            ),
            (
                constraint(Some("memberOf"), None),
                PlacementError::MissingExpression,
            ),
            (
                constraint(Some("memberOf"), Some("")),
                PlacementError::MissingExpression,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(constraints_from(&[input]), Err(expected));
        }
        let e = constraints_from(&[constraint(
            Some("memberOf"),
            Some("attribute:ecs.instance-type foo t2.small"),
        )])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid memberOf expression 'attribute:ecs.instance-type foo t2.small': at position \
             28: expected an operator (==, !=, >, >=, <, <=, exists, !exists, in, !in, =~, !~ or \
             their word forms), found 'foo'"
        );
        let api: ApiError = e.into();
        assert_eq!(api.error_type, ErrorType::InvalidParameterException);

        let eleven = vec![constraint(Some("distinctInstance"), None); 11];
        assert_eq!(
            constraints_from(&eleven),
            Err(PlacementError::TooManyConstraints(11))
        );
        assert!(constraints_from(&eleven[..10]).is_ok());
        assert!(PlacementError::TooManyConstraints(11)
            .to_string()
            .contains("at most 10"));
    }

    #[test]
    fn reads_strategies_case_insensitively() {
        let got = strategies_from(&[
            strategy(Some("spread"), Some("attribute:ecs.availability-zone")),
            strategy(Some("binpack"), Some("MEMORY")),
            strategy(Some("binpack"), Some("cpu")),
            strategy(Some("spread"), Some("host")),
            strategy(Some("random"), None),
        ])
        .unwrap();
        assert_eq!(
            got,
            vec![
                Strategy::Spread(SpreadField::Attribute("ecs.availability-zone".into())),
                Strategy::Binpack(BinpackField::Memory),
                Strategy::Binpack(BinpackField::Cpu),
                Strategy::Spread(SpreadField::InstanceId),
                Strategy::Random,
            ]
        );
        assert_eq!(
            strategies_from(&[strategy(Some("spread"), Some("InstanceID"))]).unwrap(),
            vec![Strategy::Spread(SpreadField::InstanceId)]
        );
        let shown: Vec<String> = got.iter().map(Strategy::to_string).collect();
        assert_eq!(
            shown,
            [
                "spread(attribute:ecs.availability-zone)",
                "binpack(memory)",
                "binpack(cpu)",
                "spread(instanceId)",
                "random"
            ]
        );
        let models: Vec<_> = got.iter().map(Strategy::to_model).collect();
        assert_eq!(strategies_from(&models).unwrap(), got);
    }

    #[test]
    fn bad_strategies_are_invalid_parameters() {
        let cases = [
            (
                strategy(None, Some("cpu")),
                PlacementError::MissingStrategyType,
            ),
            (
                strategy(Some("pack"), Some("cpu")),
                PlacementError::UnknownStrategyType("pack".into()),
            ),
            (
                strategy(Some("binpack"), None),
                PlacementError::MissingStrategyField {
                    strategy: "binpack",
                    allowed: BINPACK_FIELDS,
                },
            ),
            (
                strategy(Some("binpack"), Some("disk")),
                PlacementError::InvalidStrategyField {
                    strategy: "binpack",
                    field: "disk".into(),
                    allowed: BINPACK_FIELDS,
                },
            ),
            (
                strategy(Some("spread"), None),
                PlacementError::MissingStrategyField {
                    strategy: "spread",
                    allowed: SPREAD_FIELDS,
                },
            ),
            (
                strategy(Some("spread"), Some("zone")),
                PlacementError::InvalidStrategyField {
                    strategy: "spread",
                    field: "zone".into(),
                    allowed: SPREAD_FIELDS,
                },
            ),
            (
                strategy(Some("spread"), Some("attribute:bad name")),
                PlacementError::InvalidStrategyField {
                    strategy: "spread",
                    field: "attribute:bad name".into(),
                    allowed: SPREAD_FIELDS,
                },
            ),
            (
                strategy(Some("spread"), Some("attribute:")),
                PlacementError::InvalidStrategyField {
                    strategy: "spread",
                    field: "attribute:".into(),
                    allowed: SPREAD_FIELDS,
                },
            ),
            (
                strategy(Some("random"), Some("cpu")),
                PlacementError::UnexpectedStrategyField("cpu".into()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(strategies_from(&[input]), Err(expected));
        }
        assert_eq!(
            PlacementError::InvalidStrategyField {
                strategy: "binpack",
                field: "disk".into(),
                allowed: BINPACK_FIELDS,
            }
            .to_string(),
            "Invalid field 'disk' for the binpack placement strategy: must be cpu or memory."
        );
        let six = vec![strategy(Some("random"), None); 6];
        assert_eq!(
            strategies_from(&six),
            Err(PlacementError::TooManyStrategies(6))
        );
        assert!(strategies_from(&six[..5]).is_ok());
        let api: ApiError = PlacementError::TooManyStrategies(6).into();
        assert_eq!(api.error_type, ErrorType::InvalidParameterException);
    }
}
