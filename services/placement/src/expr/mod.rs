//! The ECS cluster query language (memberOf constraints, ListContainerInstances filters):
//! [`parse`] into an [`Expr`], print it back in canonical form ([`Expr`]'s `Display`, which
//! parses to the same tree), and [`evaluate`] it against a [`Candidate`].
//!
//! Grammar (keywords and word operators are ASCII case-insensitive):
//!
//! ```text
//! expr      := and ( ("or" | "||") and )*
//! and       := unary ( ("and" | "&&") unary )*
//! unary     := ("not" | "!") unary | "(" expr ")" | condition
//! condition := subject operator [argument]
//! argument  := value | "[" value ("," value)* "]"
//! value     := bare word | '...' | "..."   (no escapes inside quotes)
//! ```
//!
//! Bare words are letters, digits and `-_.:/*@+` (so `t2.*`, `service:web` and
//! `2018-06-18T22:28:28+00:00` need no quotes); a bare `and`, `or` or `not` is not a value.
//!
//! Semantics:
//! - each negative operator (`!=`, `!exists`, `!in`, `!~`) is exactly the negation of its
//!   positive one, so an instance lacking an attribute satisfies `attribute:x != a`;
//! - `=~` is a full match (like Java's `String.matches`), compiled once at parse time;
//! - `agentVersion` compares versions component-wise (`1.14` = `1.14.0` < `1.14.5`);
//! - `registeredAt` compares dates in UTC against the instance's `registeredAt` (seconds);
//!   a bare date denotes the whole day, so `== 2018-06-18` is any time that day and
//!   `< 2018-06-18` is before it;
//! - `attribute:` values compare as numbers when both sides are numbers, else as strings;
//! - `task:group == g` holds if the instance runs a task of group `g`;
//! - `ec2InstanceId` is the record's `ec2InstanceId`, or the container instance id when
//!   that is empty (instances that are not EC2).
//!
//! Error positions are 0-based byte offsets into the expression.
//!
//! This module owns the syntax tree and its canonical printing; `parse` is the parser,
//! `literal` reads values as numbers, versions and dates, `eval` evaluates a tree against
//! an instance, and `tests` holds the unit and property tests of the whole language.

mod eval;
mod literal;
mod parse;
#[cfg(test)]
mod tests;

pub use eval::evaluate;
pub(crate) use eval::Facts;
pub use parse::parse;

use berth_messages::error::ApiError;
use literal::{parse_date, parse_number, parse_version};
use parse::{is_reserved, is_word_byte};
use regex::{Regex, RegexBuilder};
use std::cmp::Ordering;
use std::fmt;

/// ECS limit on the length of one expression, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 2000;

/// How deeply `not`s and parentheses may nest (keeps recursion bounded).
pub const MAX_NESTING: usize = 100;

/// Compiled regexes are bounded so a hostile pattern cannot take much memory or time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parsed expression. `and` and `or` are left-associative binary nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Condition(Condition),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// `subject operator [argument]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub subject: Subject,
    pub operator: Operator,
    pub argument: Argument,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    AgentConnected,
    AgentVersion,
    /// The EC2 instance id, or the container instance id for instances without one.
    Ec2InstanceId,
    RegisteredAt,
    RunningTasksCount,
    Attribute(String),
    TaskGroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanEqual,
    LessThan,
    LessThanEqual,
    Exists,
    NotExists,
    In,
    NotIn,
    Matches,
    NotMatches,
}

/// What follows the operator: nothing (`exists`), one value, a list (`in`) or a regex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    None,
    Value(Value),
    List(Vec<Value>),
    Pattern(Pattern),
}

/// A literal, with its numeric, version and date readings computed once. Two values are
/// equal when their text is.
#[derive(Debug, Clone)]
pub struct Value {
    text: String,
    number: Option<f64>,
    version: Option<Vec<u64>>,
    date: Option<Moment>,
}

/// A regular expression matched against the whole subject value. Two patterns are equal
/// when their source is.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

/// A span of time in epoch seconds, `start..end`: one second for a timestamp, a day for a
/// bare date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moment {
    start: i64,
    end: i64,
}

/// Why an expression does not parse: where (0-based byte offset), what the parser
/// expected there and what it found (a quoted token, or `end of expression`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: expected {expected}, found {found}")]
pub struct ParseError {
    pub position: usize,
    pub expected: String,
    pub found: String,
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::invalid(format!("Invalid query expression: {e}"))
    }
}

impl Subject {
    /// The operators ECS allows on this subject.
    pub fn operators(&self) -> &'static [Operator] {
        use Operator::*;
        match self {
            Self::AgentConnected | Self::Ec2InstanceId | Self::TaskGroup => {
                &[Equals, NotEquals, In, NotIn, Matches, NotMatches]
            }
            Self::AgentVersion | Self::RegisteredAt | Self::RunningTasksCount => &[
                Equals,
                NotEquals,
                GreaterThan,
                GreaterThanEqual,
                LessThan,
                LessThanEqual,
            ],
            Self::Attribute(_) => &[
                Equals,
                NotEquals,
                GreaterThan,
                GreaterThanEqual,
                LessThan,
                LessThanEqual,
                Exists,
                NotExists,
                In,
                NotIn,
                Matches,
                NotMatches,
            ],
        }
    }

    /// Whether the subject's value changes as tasks are placed.
    pub(crate) fn depends_on_tasks(&self) -> bool {
        matches!(self, Self::TaskGroup | Self::RunningTasksCount)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AgentConnected => f.write_str("agentConnected"),
            Self::AgentVersion => f.write_str("agentVersion"),
            Self::Ec2InstanceId => f.write_str("ec2InstanceId"),
            Self::RegisteredAt => f.write_str("registeredAt"),
            Self::RunningTasksCount => f.write_str("runningTasksCount"),
            Self::Attribute(name) => write!(f, "attribute:{name}"),
            Self::TaskGroup => f.write_str("task:group"),
        }
    }
}

impl Operator {
    /// The canonical (symbol) form.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Equals => "==",
            Self::NotEquals => "!=",
            Self::GreaterThan => ">",
            Self::GreaterThanEqual => ">=",
            Self::LessThan => "<",
            Self::LessThanEqual => "<=",
            Self::Exists => "exists",
            Self::NotExists => "!exists",
            Self::In => "in",
            Self::NotIn => "!in",
            Self::Matches => "=~",
            Self::NotMatches => "!~",
        }
    }

    /// The word form.
    pub fn word(self) -> &'static str {
        match self {
            Self::Equals => "equals",
            Self::NotEquals => "not_equals",
            Self::GreaterThan => "greater_than",
            Self::GreaterThanEqual => "greater_than_equal",
            Self::LessThan => "less_than",
            Self::LessThanEqual => "less_than_equal",
            Self::Exists => "exists",
            Self::NotExists => "not_exists",
            Self::In => "in",
            Self::NotIn => "not_in",
            Self::Matches => "matches",
            Self::NotMatches => "not_matches",
        }
    }

    pub const ALL: [Operator; 12] = [
        Self::Equals,
        Self::NotEquals,
        Self::GreaterThan,
        Self::GreaterThanEqual,
        Self::LessThan,
        Self::LessThanEqual,
        Self::Exists,
        Self::NotExists,
        Self::In,
        Self::NotIn,
        Self::Matches,
        Self::NotMatches,
    ];

    /// Whether `ordering` (subject compared with the argument) satisfies a comparison.
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Self::Equals => ordering == Ordering::Equal,
            Self::GreaterThan => ordering == Ordering::Greater,
            Self::GreaterThanEqual => ordering != Ordering::Less,
            Self::LessThan => ordering == Ordering::Less,
            Self::LessThanEqual => ordering != Ordering::Greater,
            _ => false,
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

impl Value {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            number: parse_number(&text),
            version: parse_version(&text),
            date: parse_date(&text),
            text,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_literal(f, &self.text)
    }
}

impl Pattern {
    /// Compiles `source` as a whole-value match.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        // Compiled on its own first so that a source such as `a)|(b` cannot borrow the
        // anchoring group's parentheses.
        RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_literal(f, &self.source)
    }
}

impl Expr {
    /// Whether evaluating the expression reads something that placing tasks changes
    /// (`task:group`, `runningTasksCount`).
    pub fn depends_on_tasks(&self) -> bool {
        match self {
            Self::Condition(c) => c.subject.depends_on_tasks(),
            Self::Not(e) => e.depends_on_tasks(),
            Self::And(a, b) | Self::Or(a, b) => a.depends_on_tasks() || b.depends_on_tasks(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Printing

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Or,
    And,
    Unary,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(f, self, Level::Or)
    }
}

/// Writes `e` where an expression of at least `level` is expected, with parentheses only
/// where the grammar needs them.
fn write_expr(f: &mut fmt::Formatter<'_>, e: &Expr, level: Level) -> fmt::Result {
    let own = match e {
        Expr::Or(..) => Level::Or,
        Expr::And(..) => Level::And,
        Expr::Not(_) | Expr::Condition(_) => Level::Unary,
    };
    if own < level {
        f.write_str("(")?;
        write_expr(f, e, own)?;
        return f.write_str(")");
    }
    match e {
        Expr::Or(a, b) => {
            write_expr(f, a, Level::Or)?;
            f.write_str(" or ")?;
            write_expr(f, b, Level::And)
        }
        Expr::And(a, b) => {
            write_expr(f, a, Level::And)?;
            f.write_str(" and ")?;
            write_expr(f, b, Level::Unary)
        }
        Expr::Not(inner) => {
            f.write_str("not ")?;
            write_expr(f, inner, Level::Unary)
        }
        Expr::Condition(c) => write!(f, "{c}"),
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.subject, self.operator)?;
        match &self.argument {
            Argument::None => Ok(()),
            Argument::Value(v) => write!(f, " {v}"),
            Argument::Pattern(p) => write!(f, " {p}"),
            Argument::List(values) => {
                f.write_str(" [")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A literal as a bare word when it reads back as one, else quoted.
fn write_literal(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    if !text.is_empty() && text.bytes().all(is_word_byte) && !is_reserved(text) {
        f.write_str(text)
    } else if text.contains('"') {
        write!(f, "'{text}'")
    } else {
        write!(f, "\"{text}\"")
    }
}
