//! The parser of the cluster query language: a recursive descent over the grammar in the
//! module's documentation, checking each subject's operators and values as it goes and
//! reporting the first error with its position, what was expected and what was found.

use super::literal::parse_integer;
use super::*;
use berth_messages::validate;

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

pub(super) fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:/*@+".contains(&b)
}

pub(super) fn is_reserved(word: &str) -> bool {
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
