//! Unit and property tests of the cluster query language: the ECS documentation's
//! examples, precedence, every operator and subject, dates, versions and numbers, errors
//! with their positions and limits; generated expressions print and parse back to the same
//! tree, and no input makes the parser panic.

use super::literal::compare_version;
use super::*;
use crate::candidate::Candidate;
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
                let text = format!("{} {word} {}", wrap(&a, Level::And), wrap(&b, Level::Unary));
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
