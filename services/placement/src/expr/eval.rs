//! Evaluation of an expression against one instance: the facts a subject reads from the
//! candidate (and from the tasks the current batch placed on it), compared with the
//! condition's argument.

use super::literal::compare_version;
use super::*;
use crate::candidate::Candidate;
use berth_messages::arn;

/// Whether `candidate` satisfies `expr`.
pub fn evaluate(expr: &Expr, candidate: &Candidate<'_>) -> bool {
    Facts {
        candidate,
        placed: None,
    }
    .eval(expr)
}

/// A candidate plus the tasks of one group that the current batch has placed on it.
pub(crate) struct Facts<'c, 'a> {
    pub(crate) candidate: &'c Candidate<'a>,
    pub(crate) placed: Option<(&'c str, u32)>,
}

/// One subject's value on one instance.
enum Fact<'a> {
    Bool(bool),
    Text(&'a str),
    Version(&'a str),
    Count(i64),
    Seconds(i64),
    /// An attribute that is set without a value: it exists and equals nothing.
    Valueless,
}

impl Facts<'_, '_> {
    pub(crate) fn eval(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Condition(c) => self.condition(c),
            Expr::Not(e) => !self.eval(e),
            Expr::And(a, b) => self.eval(a) && self.eval(b),
            Expr::Or(a, b) => self.eval(a) || self.eval(b),
        }
    }

    fn condition(&self, c: &Condition) -> bool {
        use Operator::*;
        let positive = match c.operator {
            NotEquals => Equals,
            NotExists => Exists,
            NotIn => In,
            NotMatches => Matches,
            op => op,
        };
        let holds = self.holds(&c.subject, positive, &c.argument);
        if positive == c.operator {
            holds
        } else {
            !holds
        }
    }

    fn holds(&self, subject: &Subject, op: Operator, argument: &Argument) -> bool {
        if *subject == Subject::TaskGroup {
            return match argument {
                Argument::None => self.any_group(|_| true),
                Argument::Value(v) if op == Operator::Equals => self.group_count(&v.text) > 0,
                Argument::List(values) if op == Operator::In => {
                    values.iter().any(|v| self.group_count(&v.text) > 0)
                }
                Argument::Pattern(p) => self.any_group(|g| p.is_match(g)),
                _ => false,
            };
        }
        let Some(fact) = self.fact(subject) else {
            return false;
        };
        match (op, argument) {
            (Operator::Exists, _) => true,
            (Operator::In, Argument::List(values)) => values
                .iter()
                .any(|v| compare(&fact, v) == Some(Ordering::Equal)),
            (Operator::Matches, Argument::Pattern(p)) => match fact {
                Fact::Bool(b) => p.is_match(if b { "true" } else { "false" }),
                Fact::Text(s) | Fact::Version(s) => p.is_match(s),
                Fact::Count(n) | Fact::Seconds(n) => p.is_match(&n.to_string()),
                Fact::Valueless => false,
            },
            (op, Argument::Value(v)) => compare(&fact, v).is_some_and(|o| op.accepts(o)),
            _ => false,
        }
    }

    fn fact(&self, subject: &Subject) -> Option<Fact<'_>> {
        let instance = self.candidate.instance;
        Some(match subject {
            Subject::AgentConnected => Fact::Bool(instance.agent_connected),
            Subject::AgentVersion => Fact::Version(instance.version_info.agent_version.as_deref()?),
            Subject::Ec2InstanceId => Fact::Text(if instance.ec2_instance_id.is_empty() {
                arn::container_instance_id(&instance.container_instance_arn).1
            } else {
                &instance.ec2_instance_id
            }),
            Subject::RegisteredAt => {
                if !instance.registered_at.is_finite() {
                    return None;
                }
                Fact::Seconds(instance.registered_at.floor() as i64)
            }
            Subject::RunningTasksCount => Fact::Count(
                self.candidate
                    .running_tasks
                    .saturating_add(self.placed.map_or(0, |(_, n)| i64::from(n))),
            ),
            Subject::Attribute(name) => {
                let attribute = instance.attributes.iter().find(|a| a.name == *name)?;
                attribute
                    .value
                    .as_deref()
                    .map_or(Fact::Valueless, Fact::Text)
            }
            Subject::TaskGroup => return None,
        })
    }

    fn group_count(&self, group: &str) -> u32 {
        let placed = match self.placed {
            Some((g, n)) if g == group => n,
            _ => 0,
        };
        self.candidate
            .groups
            .get(group)
            .copied()
            .unwrap_or(0)
            .saturating_add(placed)
    }

    fn any_group(&self, mut matches: impl FnMut(&str) -> bool) -> bool {
        if let Some((g, n)) = self.placed {
            if n > 0 && matches(g) {
                return true;
            }
        }
        self.candidate
            .groups
            .iter()
            .any(|(g, n)| *n > 0 && matches(g))
    }
}

/// The subject's value compared with the argument; None when they do not compare.
fn compare(fact: &Fact<'_>, value: &Value) -> Option<Ordering> {
    match fact {
        Fact::Bool(b) => {
            let other = if value.text.eq_ignore_ascii_case("true") {
                true
            } else if value.text.eq_ignore_ascii_case("false") {
                false
            } else {
                return None;
            };
            Some(b.cmp(&other))
        }
        Fact::Version(v) => compare_version(v, value.version.as_deref()?),
        Fact::Count(n) => (*n as f64).partial_cmp(&value.number?),
        Fact::Seconds(t) => {
            let moment = value.date?;
            Some(if *t < moment.start {
                Ordering::Less
            } else if *t >= moment.end {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        Fact::Text(s) => match (value.number, parse_number(s)) {
            (Some(theirs), Some(ours)) => ours.partial_cmp(&theirs),
            _ => Some((*s).cmp(value.text.as_str())),
        },
        Fact::Valueless => None,
    }
}
