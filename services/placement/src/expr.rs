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

use crate::candidate::Candidate;
use berth_messages::arn;
use berth_messages::error::ApiError;
use berth_messages::validate;
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

// ---------------------------------------------------------------------------------------
// Parsing

const EXPECTED_SUBJECT: &str = "a subject (agentConnected, agentVersion, attribute:<name>, \
     ec2InstanceId, registeredAt, runningTasksCount, task:group), 'not' or '('";
const EXPECTED_OPERATOR: &str = "an operator (==, !=, >, >=, <, <=, exists, !exists, in, !in, \
     =~, !~ or their word forms)";
const EXPECTED_ATTRIBUTE_NAME: &str = "an attribute name (1 to 128 letters, numbers, hyphens, \
     underscores, slashes and periods)";
const EXPECTED_ATTRIBUTE_VALUE: &str = "an attribute value (1 to 128 letters, numbers, \
     hyphens, underscores, periods, at signs, colons, slashes and inner spaces)";
const EXPECTED_DATE: &str = "a date (2018-06-18T22:28:28+00:00, 2018-06-18T22:28:28Z, \
     2018-06-18T22:28:28 or 2018-06-18)";

/// Parses one cluster query expression (at most [`MAX_EXPRESSION_CHARS`] characters).
pub fn parse(expression: &str) -> Result<Expr, ParseError> {
    if let Some((position, _)) = expression.char_indices().nth(MAX_EXPRESSION_CHARS) {
        return Err(ParseError {
            position,
            expected: format!("at most {MAX_EXPRESSION_CHARS} characters"),
            found: format!("{} characters", expression.chars().count()),
        });
    }
    let mut parser = Parser {
        src: expression,
        pos: 0,
        depth: 0,
    };
    let expr = parser.parse_or()?;
    parser.skip_whitespace();
    if parser.pos < parser.src.len() {
        return Err(parser.error("'and', 'or' or the end of the expression"));
    }
    Ok(expr)
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    depth: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:/*@+".contains(&b)
}

fn is_reserved(word: &str) -> bool {
    ["and", "or", "not"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

impl<'s> Parser<'s> {
    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// The bare word starting at the current position (possibly empty).
    fn word(&self) -> &'s str {
        let rest = self.rest();
        let len = rest.bytes().take_while(|b| is_word_byte(*b)).count();
        &rest[..len]
    }

    /// Consumes the keyword `word` (case-insensitive) if it is the whole next word.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let word = self.word();
        if word.eq_ignore_ascii_case(keyword) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            true
        } else {
            false
        }
    }

    fn error(&self, expected: impl Into<String>) -> ParseError {
        self.error_at(self.pos, expected)
    }

    fn error_at(&self, position: usize, expected: impl Into<String>) -> ParseError {
        ParseError {
            position,
            expected: expected.into(),
            found: describe_token(&self.src[position..]),
        }
    }

    fn parse_or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_and()?;
        loop {
            self.skip_whitespace();
            if !(self.eat_symbol("||") || self.eat_keyword("or")) {
                return Ok(left);
            }
            let right = self.parse_and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
    }

    fn parse_and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_unary()?;
        loop {
            self.skip_whitespace();
            if !(self.eat_symbol("&&") || self.eat_keyword("and")) {
                return Ok(left);
            }
            let right = self.parse_unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
    }

    fn parse_unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        let rest = self.rest();
        let bang = rest.starts_with('!') && !rest.starts_with("!=") && !rest.starts_with("!~");
        if bang || self.word().eq_ignore_ascii_case("not") {
            self.enter(start)?;
            self.pos += if bang { 1 } else { 3 };
            let inner = self.parse_unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.eat_symbol("(") {
            self.enter(start)?;
            let inner = self.parse_or()?;
            self.skip_whitespace();
            if !self.eat_symbol(")") {
                return Err(self.error("'and', 'or' or ')'"));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.parse_condition().map(Expr::Condition)
    }

    fn enter(&mut self, start: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(ParseError {
                position: start,
                expected: format!("at most {MAX_NESTING} nested 'not's and parentheses"),
                found: "more".into(),
            });
        }
        Ok(())
    }

    fn parse_condition(&mut self) -> Result<Condition, ParseError> {
        let subject = self.parse_subject()?;
        self.skip_whitespace();
        let operator_at = self.pos;
        let operator = self.parse_operator()?;
        let valid = subject.operators();
        if !valid.contains(&operator) {
            let list: Vec<&str> = valid.iter().map(|o| o.symbol()).collect();
            return Err(self.error_at(
                operator_at,
                format!("an operator valid for {subject} ({})", list.join(", ")),
            ));
        }
        let argument = match operator {
            Operator::Exists | Operator::NotExists => Argument::None,
            Operator::In | Operator::NotIn => {
                self.skip_whitespace();
                if !self.eat_symbol("[") {
                    return Err(self.error("'[' starting a list of values"));
                }
                let mut values = Vec::new();
                loop {
                    values.push(self.parse_value(&subject)?);
                    self.skip_whitespace();
                    if self.eat_symbol("]") {
                        break;
                    }
                    if !self.eat_symbol(",") {
                        return Err(self.error("',' or ']'"));
                    }
                }
                Argument::List(values)
            }
            Operator::Matches | Operator::NotMatches => {
                let (at, text) = self.parse_literal()?;
                let pattern = Pattern::new(&text).map_err(|e| {
                    self.error_at(
                        at,
                        format!("a valid regular expression ({})", regex_reason(&e)),
                    )
                })?;
                Argument::Pattern(pattern)
            }
            _ => Argument::Value(self.parse_value(&subject)?),
        };
        Ok(Condition {
            subject,
            operator,
            argument,
        })
    }

    fn parse_subject(&mut self) -> Result<Subject, ParseError> {
        let start = self.pos;
        let word = self.word();
        let fixed = [
            ("agentConnected", Subject::AgentConnected),
            ("agentVersion", Subject::AgentVersion),
            ("ec2InstanceId", Subject::Ec2InstanceId),
            ("registeredAt", Subject::RegisteredAt),
            ("runningTasksCount", Subject::RunningTasksCount),
            ("task:group", Subject::TaskGroup),
        ];
        if let Some((_, subject)) = fixed
            .into_iter()
            .find(|(name, _)| word.eq_ignore_ascii_case(name))
        {
            self.pos += word.len();
            return Ok(subject);
        }
        const PREFIX: &str = "attribute:";
        if word.len() >= PREFIX.len() && word[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            let name = &word[PREFIX.len()..];
            if validate::attribute_name(name).is_err() {
                let at = start + PREFIX.len();
                return Err(ParseError {
                    position: at,
                    expected: EXPECTED_ATTRIBUTE_NAME.into(),
                    found: if name.is_empty() {
                        describe_token(&self.src[at..])
                    } else {
                        quote(name)
                    },
                });
            }
            self.pos += word.len();
            return Ok(Subject::Attribute(name.to_string()));
        }
        Err(self.error(EXPECTED_SUBJECT))
    }

    fn parse_operator(&mut self) -> Result<Operator, ParseError> {
        use Operator::*;
        let rest = self.rest();
        if let Some(negated) = rest.strip_prefix('!') {
            let word = &negated[..negated.bytes().take_while(|b| is_word_byte(*b)).count()];
            for (name, op) in [("exists", NotExists), ("in", NotIn)] {
                if word.eq_ignore_ascii_case(name) {
                    self.pos += 1 + word.len();
                    return Ok(op);
                }
            }
        }
        for (symbol, op) in [
            ("==", Equals),
            ("!=", NotEquals),
            (">=", GreaterThanEqual),
            ("<=", LessThanEqual),
            ("=~", Matches),
            ("!~", NotMatches),
            (">", GreaterThan),
            ("<", LessThan),
        ] {
            if self.eat_symbol(symbol) {
                return Ok(op);
            }
        }
        let word = self.word();
        if let Some(op) = Operator::ALL
            .into_iter()
            .find(|op| word.eq_ignore_ascii_case(op.word()))
        {
            self.pos += word.len();
            return Ok(op);
        }
        Err(self.error(EXPECTED_OPERATOR))
    }

    /// A quoted string or bare word: (its position, its text).
    fn parse_literal(&mut self) -> Result<(usize, String), ParseError> {
        self.skip_whitespace();
        let at = self.pos;
        let rest = self.rest();
        if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &rest[1..];
            let Some(end) = body.find(quote) else {
                return Err(ParseError {
                    position: at,
                    expected: format!("a closing {quote}"),
                    found: "end of expression".into(),
                });
            };
            if end == 0 {
                return Err(self.error("a value"));
            }
            self.pos += end + 2;
            return Ok((at, body[..end].to_string()));
        }
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("a value"));
        }
        if is_reserved(word) {
            return Err(self.error("a value (quote it if it is 'and', 'or' or 'not')"));
        }
        self.pos += word.len();
        Ok((at, word.to_string()))
    }

    /// A literal checked against what the subject compares it as.
    fn parse_value(&mut self, subject: &Subject) -> Result<Value, ParseError> {
        let (at, text) = self.parse_literal()?;
        let value = Value::new(text);
        let expected = match subject {
            Subject::AgentConnected
                if !["true", "false"]
                    .iter()
                    .any(|b| value.text.eq_ignore_ascii_case(b)) =>
            {
                Some("true or false")
            }
            Subject::AgentVersion if value.version.is_none() => {
                Some("an agent version such as 1.14.5")
            }
            Subject::RegisteredAt if value.date.is_none() => Some(EXPECTED_DATE),
            Subject::RunningTasksCount if parse_integer(&value.text).is_none() => {
                Some("a whole number")
            }
            Subject::Attribute(_) if validate::attribute_value(&value.text).is_err() => {
                Some(EXPECTED_ATTRIBUTE_VALUE)
            }
            _ => None,
        };
        match expected {
            Some(expected) => Err(ParseError {
                position: at,
                expected: expected.into(),
                found: quote(&value.text),
            }),
            None => Ok(value),
        }
    }
}

/// How an error message names what is at the start of `rest`.
fn describe_token(rest: &str) -> String {
    let Some(first) = rest.chars().next() else {
        return "end of expression".into();
    };
    let word_len = rest.bytes().take_while(|b| is_word_byte(*b)).count();
    if word_len > 0 {
        return quote(&rest[..word_len]);
    }
    if first == '\'' || first == '"' {
        let body = &rest[1..];
        return quote(body.find(first).map_or(body, |end| &body[..end]));
    }
    for symbol in ["==", "!=", ">=", "<=", "=~", "!~", "&&", "||"] {
        if rest.starts_with(symbol) {
            return quote(symbol);
        }
    }
    quote(&first.to_string())
}

/// `'text'`, cut to 40 characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("'{}...'", &text[..cut]),
        None => format!("'{text}'"),
    }
}

/// The last line of a regex error ("unclosed group"), which is what the user needs.
fn regex_reason(e: &regex::Error) -> String {
    let message = e.to_string();
    let last = message.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

// ---------------------------------------------------------------------------------------
// Literal readings

/// An optional sign, digits, and optionally a fraction: the strings that compare
/// numerically.
fn parse_number(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    text.parse().ok()
}

fn parse_integer(text: &str) -> Option<i64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `1.14.5` (an optional leading `v`) as its components.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    version_components(text).collect()
}

fn version_components(text: &str) -> impl Iterator<Item = Option<u64>> + '_ {
    let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
    text.split('.').map(|part| {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            part.parse().ok()
        }
    })
}

/// Compares an instance's version string with a parsed version, missing components being
/// 0; None if the instance's version is not a version.
fn compare_version(instance: &str, value: &[u64]) -> Option<Ordering> {
    let mut ours = version_components(instance);
    let mut theirs = value.iter().copied();
    let mut ordering = Ordering::Equal;
    loop {
        let (a, b) = match (ours.next(), theirs.next()) {
            (None, None) => return Some(ordering),
            (Some(a), b) => (a?, b.unwrap_or(0)),
            (None, Some(b)) => (0, b),
        };
        if ordering == Ordering::Equal {
            ordering = a.cmp(&b);
        }
    }
}

/// `YYYY-MM-DD` (the whole day) or `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` (one second; UTC
/// without an offset).
fn parse_date(text: &str) -> Option<Moment> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = days_from_civil(year, month, day) * 86_400;
    if bytes.len() == 10 {
        return Some(Moment {
            start: midnight,
            end: midnight + 86_400,
        });
    }
    if !bytes[10].eq_ignore_ascii_case(&b'T')
        || bytes.get(13) != Some(&b':')
        || bytes.get(16) != Some(&b':')
    {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        rest = &fraction[len..];
    }
    let offset = match rest.as_bytes() {
        [] => 0,
        [z] if z.eq_ignore_ascii_case(&b'Z') => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let zone = &rest.as_bytes()[1..];
            let (h, m) = match zone {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    let two = |a: u8, b: u8| -> Option<i64> {
                        (a.is_ascii_digit() && b.is_ascii_digit())
                            .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
                    };
                    (two(*h1, *h2)?, two(*m1, *m2)?)
                }
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let seconds = h * 3600 + m * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let start = midnight + hour * 3600 + minute * 60 + second - offset;
    Some(Moment {
        start,
        end: start + 1,
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------------------
// Evaluation

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

#[cfg(test)]
mod tests {
    use super::*;
    use berth_messages::model::{Attribute, ContainerInstance, VersionInfo};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn condition(subject: Subject, operator: Operator, argument: Argument) -> Expr {
        Expr::Condition(Condition {
            subject,
            operator,
            argument,
        })
    }

    fn attr(name: &str) -> Subject {
        Subject::Attribute(name.into())
    }

    fn not(e: Expr) -> Expr {
        Expr::Not(Box::new(e))
    }

    fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(Box::new(a), Box::new(b))
    }

    fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(Box::new(a), Box::new(b))
    }

    /// `attribute:<name> exists`, a short leaf for structure tests.
    fn has(name: &str) -> Expr {
        condition(attr(name), Operator::Exists, Argument::None)
    }

    struct Host {
        instance: ContainerInstance,
        groups: BTreeMap<String, u32>,
        running: i64,
    }

    impl Host {
        fn candidate(&self) -> Candidate<'_> {
            Candidate {
                instance: &self.instance,
                groups: &self.groups,
                running_tasks: self.running,
            }
        }

        fn eval(&self, expression: &str) -> bool {
            evaluate(&parse(expression).unwrap(), &self.candidate())
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn host(
        ec2: &str,
        instance_type: &str,
        zone: &str,
        agent: &str,
        registered: &str,
        groups: &[(&str, u32)],
        running: i64,
    ) -> Host {
        Host {
            instance: ContainerInstance {
                container_instance_arn: format!("arn:aws:ecs:r:a:container-instance/c/{ec2}"),
                ec2_instance_id: ec2.into(),
                version_info: VersionInfo {
                    agent_version: Some(agent.into()),
                    ..Default::default()
                },
                agent_connected: true,
                attributes: vec![
                    Attribute {
                        name: "ecs.instance-type".into(),
                        value: Some(instance_type.into()),
                        ..Default::default()
                    },
                    Attribute {
                        name: "ecs.availability-zone".into(),
                        value: Some(zone.into()),
                        ..Default::default()
                    },
                    Attribute {
                        name: "ecs.capability.task-eni".into(),
                        value: None,
                        ..Default::default()
                    },
                ],
                registered_at: parse_date(registered).unwrap().start as f64 + 0.25,
                ..Default::default()
            },
            groups: groups.iter().map(|(g, n)| (g.to_string(), *n)).collect(),
            running,
        }
    }

    fn three_hosts() -> [Host; 3] {
        [
            host(
                "i-abcd1234",
                "t2.small",
                "us-east-1a",
                "1.14.4",
                "2018-02-01T10:00:00Z",
                &[("service:production", 1)],
                1,
            ),
            host(
                "i-wxyx7890",
                "g2.2xlarge",
                "us-east-1d",
                "1.14.5",
                "2018-03-01",
                &[("database", 2), ("family:web", 0)],
                2,
            ),
            host(
                "i-00000000",
                "g2.8xlarge",
                "us-east-1b",
                "1.20.0",
                "2018-02-13T00:00:00Z",
                &[],
                0,
            ),
        ]
    }

    #[test]
    fn ecs_documentation_examples() {
        let hosts = three_hosts();
        let examples: [(&str, [bool; 3]); 9] = [
            (
                "attribute:ecs.instance-type == t2.small",
                [true, false, false],
            ),
            (
                "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]",
                [true, false, true],
            ),
            (
                "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d",
                [false, false, true],
            ),
            ("task:group == service:production", [true, false, false]),
            ("not(task:group == database)", [true, false, true]),
            ("runningTasksCount == 1", [true, false, false]),
            ("agentVersion < 1.14.5", [true, false, false]),
            ("registeredAt < 2018-02-13", [true, false, false]),
            (
                "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']",
                [true, true, false],
            ),
        ];
        for (expression, expected) in examples {
            let e = parse(expression).unwrap_or_else(|err| panic!("{expression}: {err}"));
            assert_eq!(parse(&e.to_string()).as_ref(), Ok(&e), "{expression}");
            let got = hosts.each_ref().map(|h| evaluate(&e, &h.candidate()));
            assert_eq!(got, expected, "{expression}");
        }
    }

    #[test]
    fn canonical_forms() {
        for (input, canonical) in [
            (
                "attribute:ecs.instance-type equals t2.small",
                "attribute:ecs.instance-type == t2.small",
            ),
            ("not(task:group == database)", "not task:group == database"),
            (
                "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']",
                "ec2InstanceId in [i-abcd1234, i-wxyx7890]",
            ),
            (
                "attribute:stack   not_in [\"and\",'a b',x]",
                "attribute:stack !in [\"and\", \"a b\", x]",
            ),
            (
                "(attribute:a exists || attribute:b exists) && !attribute:c exists",
                "(attribute:a exists or attribute:b exists) and not attribute:c exists",
            ),
            (
                "attribute:a exists and (attribute:b exists and attribute:c exists)",
                "attribute:a exists and (attribute:b exists and attribute:c exists)",
            ),
            ("((attribute:a exists))", "attribute:a exists"),
            (
                "ec2InstanceId =~ 'i-(ab|cd)[0-9]+'",
                "ec2InstanceId =~ \"i-(ab|cd)[0-9]+\"",
            ),
            (
                "registeredAt>=2018-06-18T22:28:28+00:00",
                "registeredAt >= 2018-06-18T22:28:28+00:00",
            ),
            ("AgentConnected NOT_EQUALS TRUE", "agentConnected != TRUE"),
        ] {
            let e = parse(input).unwrap();
            assert_eq!(e.to_string(), canonical, "{input}");
            assert_eq!(parse(canonical), Ok(e), "{input}");
        }
        // No escapes: a quote ends the value.
        assert_eq!(error("task:group == 'it''s'").position, 18);
        let quoted = parse(r#"task:group == "it's""#).unwrap();
        assert_eq!(quoted.to_string(), r#"task:group == "it's""#);
        let quoted = parse(r#"task:group == 'say "hi"'"#).unwrap();
        assert_eq!(quoted.to_string(), r#"task:group == 'say "hi"'"#);
        assert_eq!(parse(&quoted.to_string()), Ok(quoted));
    }

    #[test]
    fn precedence_and_associativity() {
        let (a, b, c) = (has("a"), has("b"), has("c"));
        let p = |s: &str| parse(s).unwrap();
        assert_eq!(
            p("attribute:a exists or attribute:b exists and attribute:c exists"),
            or(a.clone(), and(b.clone(), c.clone()))
        );
        assert_eq!(
            p("attribute:a exists and attribute:b exists or attribute:c exists"),
            or(and(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            p("not attribute:a exists and attribute:b exists"),
            and(not(a.clone()), b.clone())
        );
        assert_eq!(
            p("! attribute:a exists || attribute:b exists"),
            or(not(a.clone()), b.clone())
        );
        assert_eq!(
            p("not (attribute:a exists and attribute:b exists)"),
            not(and(a.clone(), b.clone()))
        );
        assert_eq!(
            p("attribute:a exists and attribute:b exists and attribute:c exists"),
            and(and(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            p("attribute:a exists or attribute:b exists or attribute:c exists"),
            or(or(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(
            p("(attribute:a exists or attribute:b exists) and attribute:c exists"),
            and(or(a.clone(), b.clone()), c.clone())
        );
        assert_eq!(p("not not attribute:a exists"), not(not(a.clone())));
        assert_eq!(p("!!attribute:a exists"), not(not(a)));
        // Nodes that need parentheses get them back.
        let right = or(has("a"), or(has("b"), has("c")));
        assert_eq!(
            right.to_string(),
            "attribute:a exists or (attribute:b exists or attribute:c exists)"
        );
        assert_eq!(parse(&right.to_string()), Ok(right));
    }

    #[test]
    fn every_operator_in_symbol_and_word_form() {
        for op in Operator::ALL {
            let argument = match op {
                Operator::Exists | Operator::NotExists => "",
                Operator::In | Operator::NotIn => " [x, y]",
                _ => " x",
            };
            let expected = parse(&format!("attribute:k {}{argument}", op.symbol())).unwrap();
            let Expr::Condition(c) = &expected else {
                panic!("{op:?}")
            };
            assert_eq!(c.operator, op);
            for form in [op.word().to_string(), op.word().to_ascii_uppercase()] {
                assert_eq!(
                    parse(&format!("attribute:k {form}{argument}")).as_ref(),
                    Ok(&expected),
                    "{form}"
                );
            }
            assert_eq!(parse(&expected.to_string()).as_ref(), Ok(&expected));
        }
        for (symbol, word) in [("&&", "and"), ("||", "or"), ("!", "not ")] {
            let with = |c: &str| {
                if c.ends_with(' ') || c == "!" {
                    parse(&format!("{c}attribute:a exists"))
                } else {
                    parse(&format!("attribute:a exists {c} attribute:b exists"))
                }
            };
            assert_eq!(with(symbol), with(word), "{symbol}");
            assert_eq!(with(symbol), with(&word.to_ascii_uppercase()), "{symbol}");
        }
    }

    #[test]
    fn operators_follow_each_subject() {
        let hosts = three_hosts();
        let h = &hosts[0];
        // agentConnected, ec2InstanceId: equality, lists and regexes.
        assert!(h.eval("agentConnected == true"));
        assert!(h.eval("agentConnected != false"));
        assert!(h.eval("agentConnected in [true]"));
        assert!(h.eval("agentConnected =~ tr.*"));
        assert!(!h.eval("agentConnected !~ 'true'"));
        assert!(h.eval("ec2InstanceId == i-abcd1234"));
        assert!(h.eval("ec2InstanceId =~ 'i-[a-d]+[0-9]{4}'"));
        assert!(
            !h.eval("ec2InstanceId =~ i-abcd"),
            "matches the whole value"
        );
        assert!(h.eval("ec2InstanceId not_matches i-abcd"));
        // agentVersion, registeredAt, runningTasksCount: comparisons.
        assert!(h.eval("agentVersion >= 1.14.4 and agentVersion <= 1.14.4"));
        assert!(h.eval("agentVersion == 1.14.4.0"));
        assert!(h.eval("agentVersion > 1.9"), "numeric components");
        assert!(h.eval("agentVersion != 1.14"));
        assert!(hosts[2].eval("agentVersion greater_than 1.14.5"));
        assert!(
            h.eval("registeredAt == 2018-02-01"),
            "a date is the whole day"
        );
        assert!(h.eval("registeredAt <= 2018-02-01"));
        assert!(!h.eval("registeredAt > 2018-02-01"));
        assert!(h.eval("registeredAt > 2018-01-31"));
        assert!(h.eval("registeredAt == 2018-02-01T10:00:00Z"));
        assert!(h.eval("registeredAt == 2018-02-01T11:00:00+01:00"));
        assert!(h.eval("registeredAt == 2018-02-01T05:00:00-05:00"));
        assert!(h.eval("registeredAt < 2018-02-01T10:00:01"));
        assert!(h.eval("registeredAt > 2018-02-01T09:59:59.999Z"));
        assert!(hosts[2].eval("registeredAt >= 2018-02-13"));
        assert!(h.eval("runningTasksCount > 0 and runningTasksCount < 2"));
        assert!(hosts[2].eval("runningTasksCount less_than_equal 0"));
        // attributes: numbers compare as numbers, everything else as strings.
        let mut numeric = host("i-1", "t3.micro", "z", "1.0.0", "2020-01-01", &[], 0);
        numeric.instance.attributes.push(Attribute {
            name: "cores".into(),
            value: Some("16".into()),
            ..Default::default()
        });
        assert!(numeric.eval("attribute:cores > 4"));
        assert!(numeric.eval("attribute:cores == 16.0"));
        assert!(numeric.eval("attribute:cores in [8, 16]"));
        assert!(numeric.eval("attribute:ecs.instance-type > t2.micro"));
        assert!(numeric.eval("attribute:ecs.instance-type < t3.small"));
        // exists, and the negations of a missing attribute.
        assert!(h.eval("attribute:ecs.capability.task-eni exists"));
        assert!(!h.eval("attribute:ecs.capability.task-eni == x"));
        assert!(h.eval("attribute:ecs.capability.task-eni != x"));
        assert!(h.eval("attribute:missing !exists"));
        assert!(h.eval("attribute:missing not_exists"));
        assert!(!h.eval("attribute:missing == x"));
        assert!(h.eval("attribute:missing != x"));
        assert!(h.eval("attribute:missing !in [x]"));
        assert!(!h.eval("attribute:missing =~ .*"));
        // task:group.
        assert!(h.eval("task:group in [database, service:production]"));
        assert!(h.eval("task:group =~ service:.*"));
        assert!(
            !hosts[1].eval("task:group == family:web"),
            "zero tasks is none"
        );
        assert!(hosts[2].eval("task:group != database and task:group !~ .*"));
    }

    #[test]
    fn ec2_instance_id_falls_back_to_the_container_instance_id() {
        let mut h = host("", "t2.small", "z", "1.0.0", "2020-01-01", &[], 0);
        h.instance.container_instance_arn =
            "arn:aws:ecs:r:a:container-instance/c/0123456789abcdef".into();
        assert!(h.eval("ec2InstanceId == 0123456789abcdef"));
    }

    #[test]
    fn batch_placements_count_as_tasks() {
        let hosts = three_hosts();
        let c = hosts[2].candidate();
        let e = parse("task:group == web and runningTasksCount == 2").unwrap();
        assert!(!evaluate(&e, &c));
        let facts = Facts {
            candidate: &c,
            placed: Some(("web", 2)),
        };
        assert!(facts.eval(&e));
        assert!(facts.eval(&parse("task:group =~ w.b").unwrap()));
        assert!(e.depends_on_tasks());
        assert!(!parse("attribute:a exists").unwrap().depends_on_tasks());
    }

    fn error(expression: &str) -> ParseError {
        parse(expression).expect_err(expression)
    }

    #[test]
    fn errors_name_position_and_expectation() {
        let e = error("attribute:ecs.instance-type foo t2.small");
        assert_eq!(e.position, 28);
        assert_eq!(
            e.to_string(),
            "at position 28: expected an operator (==, !=, >, >=, <, <=, exists, !exists, in, \
             !in, =~, !~ or their word forms), found 'foo'"
        );
        let cases: &[(&str, usize, &str, &str)] = &[
            ("", 0, "a subject", "end of expression"),
            ("   ", 3, "a subject", "end of expression"),
            ("instanceType == x", 0, "a subject", "'instanceType'"),
            ("attribute: exists", 10, "an attribute name", "' '"),
            ("attribute:bad* exists", 10, "an attribute name", "'bad*'"),
            (
                "agentConnected > true",
                15,
                "an operator valid for agentConnected (==, !=, in, !in, =~, !~)",
                "'>'",
            ),
            (
                "runningTasksCount exists",
                18,
                "an operator valid for runningTasksCount",
                "'exists'",
            ),
            ("agentConnected == yes", 18, "true or false", "'yes'"),
            ("agentVersion < latest", 15, "an agent version", "'latest'"),
            ("registeredAt < 2018-02-30", 15, "a date", "'2018-02-30'"),
            (
                "registeredAt < 2018-02-13T25:00:00Z",
                15,
                "a date",
                "'2018-02-13T25:00:00Z'",
            ),
            ("runningTasksCount == 1.5", 21, "a whole number", "'1.5'"),
            ("attribute:a == t2.*", 15, "an attribute value", "'t2.*'"),
            ("attribute:a == ", 15, "a value", "end of expression"),
            ("attribute:a == and", 15, "a value (quote it", "'and'"),
            ("attribute:a == ''", 15, "a value", "''"),
            (
                "attribute:a == 'open",
                15,
                "a closing '",
                "end of expression",
            ),
            ("attribute:a in x", 15, "'['", "'x'"),
            ("attribute:a in [x y]", 18, "',' or ']'", "'y'"),
            ("attribute:a in [x,]", 18, "a value", "']'"),
            ("attribute:a in [x", 17, "',' or ']'", "end of expression"),
            (
                "attribute:a =~ '(unclosed'",
                15,
                "a valid regular expression (unclosed group)",
                "'(unclosed'",
            ),
            (
                "attribute:a =~ 'a)(b'",
                15,
                "a valid regular expression",
                "'a)(b'",
            ),
            (
                "attribute:a exists attribute:b exists",
                19,
                "'and', 'or' or the end of the expression",
                "'attribute:b'",
            ),
            (
                "attribute:a exists and",
                22,
                "a subject",
                "end of expression",
            ),
            (
                "(attribute:a exists",
                19,
                "'and', 'or' or ')'",
                "end of expression",
            ),
            ("attribute:a exists)", 18, "'and', 'or' or the end", "')'"),
            (
                "attribute:a exists & attribute:b exists",
                19,
                "'and', 'or' or the end",
                "'&'",
            ),
            ("not", 3, "a subject", "end of expression"),
            ("attribute:a === b", 14, "a value", "'='"),
            ("task:group == x and !=", 20, "a subject", "'!='"),
            ("attribute:a ≠ b", 12, "an operator", "'≠'"),
        ];
        for (expression, position, expected, found) in cases {
            let e = error(expression);
            assert_eq!(e.position, *position, "{expression}: {e}");
            assert!(e.expected.starts_with(expected), "{expression}: {e}");
            assert_eq!(e.found, *found, "{expression}: {e}");
        }
        let api: ApiError = error("x").into();
        assert_eq!(
            api.error_type,
            berth_messages::error::ErrorType::InvalidParameterException
        );
        assert!(api
            .message
            .starts_with("Invalid query expression: at position 0: expected a subject"));
    }

    #[test]
    fn length_and_nesting_limits() {
        let filler = "attribute:a exists and ".repeat(80);
        let long = format!("{filler}attribute:b exists");
        assert!(long.len() <= MAX_EXPRESSION_CHARS);
        assert!(parse(&long).is_ok());
        let too_long = format!(
            "{long}{}",
            " ".repeat(MAX_EXPRESSION_CHARS + 1 - long.len())
        );
        let e = error(&too_long);
        assert_eq!(e.position, MAX_EXPRESSION_CHARS);
        assert_eq!(e.expected, "at most 2000 characters");
        // Characters, not bytes.
        let wide = format!("task:group == '{}'", "é".repeat(1980));
        assert!(parse(&wide).is_ok());

        let nested = |n: usize| format!("{}attribute:a exists{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_NESTING)).is_ok());
        let e = error(&nested(MAX_NESTING + 1));
        assert_eq!(e.position, MAX_NESTING);
        assert!(e.expected.contains("nested"));
        let nots = |n: usize| format!("{}attribute:a exists", "!".repeat(n));
        assert!(parse(&nots(MAX_NESTING)).is_ok());
        assert!(parse(&nots(MAX_NESTING + 1)).is_err());
        // Siblings do not nest.
        let siblings = vec!["(attribute:a exists)"; 70].join(" or ");
        assert!(parse(&siblings).is_ok());
    }

    #[test]
    fn dates_versions_and_numbers() {
        assert_eq!(
            parse_date("1970-01-01").map(|m| (m.start, m.end)),
            Some((0, 86_400))
        );
        assert_eq!(
            parse_date("2018-06-18T22:28:28+00:00").map(|m| m.start),
            Some(1_529_360_908)
        );
        assert_eq!(
            parse_date("2018-06-18T22:28:28Z"),
            parse_date("2018-06-18T22:28:28+00:00")
        );
        assert_eq!(
            parse_date("2018-06-18T22:28:28"),
            parse_date("2018-06-18T23:28:28+0100")
        );
        assert_eq!(parse_date("2000-02-29").map(|m| m.start), Some(951_782_400));
        for bad in [
            "2018-6-18",
            "2018-06-18T",
            "2018-06-18T22:28",
            "2018-06-18 22:28:28",
            "2018-13-01",
            "2019-02-29",
            "2018-06-18T22:28:28+",
            "2018-06-18T22:28:28+0",
            "2018-06-18T22:28:28+24:00",
            "2018-06-18T22:28:28.Z",
            "2018-06-18T22:28:60Z",
            "2018-06-18x",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_version("1.14.5"), Some(vec![1, 14, 5]));
        assert_eq!(parse_version("v2"), Some(vec![2]));
        assert_eq!(parse_version("1..2"), None);
        assert_eq!(parse_version("1.x"), None);
        assert_eq!(
            compare_version("1.14.5", &[1, 14, 5]),
            Some(Ordering::Equal)
        );
        assert_eq!(compare_version("1.14", &[1, 14, 5]), Some(Ordering::Less));
        assert_eq!(compare_version("1.9.0", &[1, 14]), Some(Ordering::Less));
        assert_eq!(compare_version("2.0.0.1", &[2]), Some(Ordering::Greater));
        assert_eq!(compare_version("1.0-beta", &[1]), None);
        assert_eq!(parse_number("-2.5"), Some(-2.5));
        assert_eq!(parse_number("+3"), Some(3.0));
        for bad in ["", "1e5", "inf", "NaN", "1.", ".5", "1.2.3", "--1"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    // ---- generated expressions ----

    /// (text in one of many surface forms, the tree it must parse to, the text's own
    /// precedence level).
    type Generated = (String, Expr, Level);

    fn op_text(op: Operator, word: bool) -> String {
        if word {
            op.word().to_string()
        } else {
            op.symbol().to_string()
        }
    }

    fn literal(text: &str, style: u8) -> String {
        let bare = !text.is_empty() && text.bytes().all(is_word_byte) && !is_reserved(text);
        match style % 3 {
            0 if bare => text.to_string(),
            1 if !text.contains('\'') => format!("'{text}'"),
            _ if !text.contains('"') => format!("\"{text}\""),
            _ => format!("'{text}'"),
        }
    }

    fn arb_condition() -> impl Strategy<Value = Generated> {
        let attribute_values = prop::sample::select(vec![
            "t2.small",
            "us-east-1a",
            "10",
            "-2.5",
            "a b",
            "and",
            "Or",
            "x@y:z/w",
            "NOT",
        ]);
        let groups = prop::sample::select(vec![
            "service:web",
            "family:db",
            "it's",
            "say \"hi\"",
            "a,b",
            "x]",
            "(",
            "not",
        ]);
        let patterns = prop::sample::select(vec![
            "t2.*", "g2\\..*", "(a|b)c", "[0-9]+", "i-.*", "", "x{2,3}",
        ]);
        let subjects = prop::sample::select(vec![
            attr("ecs.instance-type"),
            attr("stack"),
            attr("a_b/c.d"),
            Subject::AgentConnected,
            Subject::AgentVersion,
            Subject::Ec2InstanceId,
            Subject::RegisteredAt,
            Subject::RunningTasksCount,
            Subject::TaskGroup,
        ]);
        (
            subjects,
            any::<prop::sample::Index>(),
            any::<bool>(),
            prop::collection::vec((attribute_values, groups, any::<u8>()), 1..4),
            patterns,
            any::<u8>(),
            prop::sample::select(vec![" ", "  ", "\t", ""]),
        )
            .prop_map(
                |(subject, op_index, word, literals, pattern, style, space)| {
                    let ops = subject.operators();
                    let op = ops[op_index.index(ops.len())];
                    let pick = |(attribute_value, group, n): &(&str, &str, u8)| -> String {
                        match &subject {
                            Subject::Attribute(_) => attribute_value.to_string(),
                            Subject::AgentConnected => {
                                ["true", "false", "TRUE"][usize::from(*n) % 3].into()
                            }
                            Subject::AgentVersion => {
                                ["1.14.5", "2", "v1.0.10"][usize::from(*n) % 3].into()
                            }
                            Subject::RegisteredAt => [
                                "2018-06-18",
                                "2018-06-18T22:28:28+00:00",
                                "2018-06-18T22:28:28Z",
                                "2018-06-18T22:28:28",
                            ][usize::from(*n) % 4]
                                .into(),
                            Subject::RunningTasksCount => (i64::from(*n) - 10).to_string(),
                            Subject::Ec2InstanceId => format!("i-{n:08x}"),
                            Subject::TaskGroup => group.to_string(),
                        }
                    };
                    // Symbols need no space around them; words do.
                    let gap = if word || op_text(op, word).starts_with(char::is_alphabetic) {
                        " "
                    } else {
                        space
                    };
                    let subject_text = subject.to_string();
                    let (text, argument) = match op {
                        Operator::Exists | Operator::NotExists => (
                            format!("{subject_text} {}", op_text(op, word)),
                            Argument::None,
                        ),
                        Operator::In | Operator::NotIn => {
                            let values: Vec<String> = literals.iter().map(&pick).collect();
                            let shown: Vec<String> = values
                                .iter()
                                .zip(&literals)
                                .map(|(v, (_, _, n))| literal(v, *n))
                                .collect();
                            (
                                format!(
                                    "{subject_text} {} [{}]",
                                    op_text(op, word),
                                    shown.join(&format!(",{space}"))
                                ),
                                Argument::List(values.iter().map(Value::new).collect()),
                            )
                        }
                        Operator::Matches | Operator::NotMatches => {
                            let source = if pattern.is_empty() { "x" } else { pattern };
                            (
                                format!(
                                    "{subject_text}{gap}{}{gap}{}",
                                    op_text(op, word),
                                    literal(source, style)
                                ),
                                Argument::Pattern(Pattern::new(source).unwrap()),
                            )
                        }
                        _ => {
                            let v = pick(&literals[0]);
                            let gap = if literal(&v, style).starts_with(['\'', '"']) {
                                gap
                            } else {
                                " "
                            };
                            (
                                format!(
                                    "{subject_text}{gap}{}{gap}{}",
                                    op_text(op, word),
                                    literal(&v, style)
                                ),
                                Argument::Value(Value::new(v)),
                            )
                        }
                    };
                    let expr = condition(subject, op, argument);
                    (text, expr, Level::Unary)
                },
            )
    }

    fn wrap((text, _, level): &Generated, at_least: Level) -> String {
        if *level < at_least {
            format!("({text})")
        } else {
            text.clone()
        }
    }

    fn arb_expr() -> impl Strategy<Value = Generated> {
        arb_condition().prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), any::<bool>()).prop_map(|(e, bang)| {
                    let text = if bang {
                        format!("!{}", wrap(&e, Level::Unary))
                    } else {
                        format!("not {}", wrap(&e, Level::Unary))
                    };
                    (text, not(e.1), Level::Unary)
                }),
                (inner.clone(), inner.clone(), any::<bool>()).prop_map(|(a, b, symbol)| {
                    let word = if symbol { "&&" } else { "and" };
                    let text =
                        format!("{} {word} {}", wrap(&a, Level::And), wrap(&b, Level::Unary));
                    (text, and(a.1, b.1), Level::And)
                }),
                (inner.clone(), inner.clone(), any::<bool>()).prop_map(|(a, b, symbol)| {
                    let word = if symbol { "||" } else { "OR" };
                    let text = format!("{} {word} {}", wrap(&a, Level::Or), wrap(&b, Level::And));
                    (text, or(a.1, b.1), Level::Or)
                }),
                inner.prop_map(|(text, e, _)| (format!("( {text} )"), e, Level::Unary)),
            ]
        })
    }

    fn fuzz_cases() -> u32 {
        std::env::var("BERTH_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    }

    /// Strings built from the language's own pieces, so the fuzzer reaches deep into the
    /// grammar rather than failing at the first character.
    fn token_soup() -> impl Strategy<Value = String> {
        let tokens = prop::sample::select(vec![
            "attribute:ecs.instance-type",
            "attribute:",
            "task:group",
            "agentConnected",
            "agentVersion",
            "registeredAt",
            "runningTasksCount",
            "ec2InstanceId",
            "==",
            "!=",
            ">",
            ">=",
            "<",
            "<=",
            "=~",
            "!~",
            "exists",
            "!exists",
            "in",
            "!in",
            "not_in",
            "equals",
            "matches",
            "and",
            "or",
            "not",
            "&&",
            "||",
            "!",
            "(",
            ")",
            "[",
            "]",
            ",",
            "'",
            "\"",
            "t2.*",
            "1.14.5",
            "2018-02-13",
            "2018-06-18T22:28:28+00:00",
            "-1",
            "(a|b",
            "x{99999}",
            "\\",
            "é",
            " ",
            "  ",
            "\u{0}",
            "🚢",
        ]);
        prop::collection::vec(tokens, 0..40).prop_map(|t| t.concat())
    }

    proptest! {
        #[test]
        fn generated_expressions_parse_and_round_trip(generated in arb_expr()) {
            let (text, expected, _) = generated;
            let parsed = parse(&text);
            prop_assert_eq!(parsed.as_ref(), Ok(&expected), "{}", text);
            let canonical = expected.to_string();
            let reparsed = parse(&canonical);
            prop_assert_eq!(reparsed.as_ref(), Ok(&expected), "{}", canonical);
            prop_assert_eq!(reparsed.unwrap().to_string(), canonical);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: fuzz_cases(),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn parse_never_panics(input in prop_oneof![any::<String>(), token_soup()]) {
            if let Ok(e) = parse(&input) {
                let canonical = e.to_string();
                let reparsed = parse(&canonical);
                prop_assert_eq!(reparsed.as_ref(), Ok(&e), "{} -> {}", input, canonical);
                let hosts = three_hosts();
                for h in &hosts {
                    let _ = evaluate(&e, &h.candidate());
                }
            }
        }
    }
}
