//! Golden tests: a fixed set of traces and, for each expression, exactly which traces match.

use proptest::prelude::*;
use roentgen_model::{MAX_DOCUMENT_BYTES, ParsedDocument, TraceId, parse_document};

use super::{Filter, GroupKey};
use crate::summary::{TraceSummary, summarize};

/// The golden set shared with the end-to-end test (tests/e2e/test_golden_filters.py).
const GOLDEN: &str = include_str!("../../../../tests/golden/filter-expressions.json");

fn golden() -> serde_json::Value {
    serde_json::from_str(GOLDEN).unwrap()
}

/// The six traces, in order; each document names its trace `TRACE`.
fn traces() -> Vec<TraceSummary> {
    let golden = golden();
    golden["traces"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, docs)| {
            let id = TraceId::parse(&format!("1-5f000000-{:024x}", i + 1)).unwrap();
            let parsed: Vec<ParsedDocument> = docs
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let doc = d.to_string().replace("\"TRACE\"", &format!("\"{id}\""));
                    parse_document(doc.as_bytes(), MAX_DOCUMENT_BYTES).unwrap()
                })
                .collect();
            summarize(id, &parsed.iter().collect::<Vec<_>>(), 1)
        })
        .collect()
}

fn matching(filter: &Filter, traces: &[TraceSummary]) -> Vec<u32> {
    traces.iter().enumerate().filter(|(_, t)| filter.matches(t)).map(|(i, _)| i as u32 + 1).collect()
}

#[test]
fn golden_expressions() {
    let traces = traces();
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 78);
    for case in cases {
        let text = case["filter"].as_str().unwrap();
        let expected: Vec<u32> =
            case["matches"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap() as u32).collect();
        let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(matching(&filter, &traces), expected, "{text:?} (canonical: {filter})");
        let reparsed = Filter::parse(&filter.to_string()).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(reparsed, filter, "printing {text:?} and parsing it again gives the same tree");
    }
}

#[test]
fn errors_teach() {
    let cases = [
        ("http.url CONTAINS 5", "expected a string after CONTAINS, found the number 5 at column 19"),
        ("responsetime > \"5\"", "expected a number after >, found the string \"5\" at column 16"),
        ("fault AND", "expected a condition, found the end of the expression at column 10"),
        ("(fault", "expected ')' to close the '(' at column 1, found the end of the expression at column 7"),
        ("fault )", "this ')' closes nothing at column 7"),
        ("", "the filter expression is empty at column 1"),
        ("fault = maybe", "expected true or false after =, found \"maybe\" at column 9"),
        ("responsetime CONTAINS \"1\"", "responsetime is a number: CONTAINS compares strings at column 14"),
        ("user > \"a\"", "user is a string: use =, !=, CONTAINS, BEGINSWITH or ENDSWITH, not > at column 6"),
        (
            "service(\"a\") { annotation.x }",
            "annotations cannot be used inside service(), edge() or rootcause filters at column 16",
        ),
        ("edge(\"a\") { fault }", "expected ',' between the two services of edge(...), found ')' at column 9"),
        ("service(\"a\" { fault }", "expected ')' to close service(, found '{' at column 13"),
        ("group.name = 5", "expected a quoted group name after group.name = at column 14"),
        ("rootcause.fault.service name", "expected '{' with a condition after rootcause.fault.service at column 25"),
        // Found by the filter_expression fuzz target: an empty key printed as annotation[""].
        ("annotation.", "expected an annotation key after annotation. at column 1"),
    ];
    for (text, message) in cases {
        assert_eq!(Filter::parse(text).unwrap_err().to_string(), message, "{text:?}");
    }
    let unknown = Filter::parse("fault AND latency > 3").unwrap_err();
    assert_eq!(unknown.column, 11);
    assert!(unknown.message.starts_with("unknown keyword \"latency\"; at the trace level the keywords are: ok, error"));
    let misplaced = Filter::parse("root").unwrap_err().message;
    assert!(misplaced.starts_with("\"root\" cannot be used at the trace level"), "{misplaced}");
    let deep = format!("{}fault{}", "(".repeat(100), ")".repeat(100));
    assert!(Filter::parse(&deep).unwrap_err().message.contains("nested deeper than 64"));
    let deep_not = format!("{}fault", "!".repeat(1000));
    assert!(Filter::parse(&deep_not).is_err());
}

#[test]
fn printing_keeps_only_the_parentheses_the_tree_needs() {
    for (text, printed) in [
        ("ok AND fault AND error", "ok AND fault AND error"),
        ("ok OR fault OR error", "ok OR fault OR error"),
        ("ok AND (fault AND error)", "ok AND (fault AND error)"),
        ("ok OR (fault OR error)", "ok OR (fault OR error)"),
        ("(ok OR fault) AND error", "(ok OR fault) AND error"),
        ("ok OR fault AND error", "ok OR fault AND error"),
        ("(ok AND fault) OR error", "ok AND fault OR error"),
        ("!(ok AND fault)", "!(ok AND fault)"),
        ("!!ok", "!!ok"),
    ] {
        assert_eq!(Filter::parse(text).unwrap().to_string(), printed, "{text:?}");
    }
    // Found by the filter_expression fuzz target: with a pair of parentheses around each AND, a
    // long chain of them printed deeper than the parser allows.
    let chain = vec![format!("{}ok", "!".repeat(60)); 40].join(" AND ");
    let filter = Filter::parse(&chain).unwrap();
    assert_eq!(Filter::parse(&filter.to_string()).unwrap(), filter);
    // Found by the same target: a number serde_json read one unit in the last place off, so
    // that its shortest form, printed, was read back as another number.
    let json = Filter::parse("rootcause.json = #[9999999949959999999996, 0.20003001000110242]").unwrap();
    assert_eq!(Filter::parse(&json.to_string()).unwrap(), json);
}

#[test]
fn documented_root_cause_forms_parse_and_round_trip() {
    for text in [
        "rootcause.fault.entity { last and name = \"deserialize\" }",
        "rootcause.responsetime.entity { remote and coverage > 0.7 and name = \"traces\" }",
        "rootcause.fault.service { inferred and name = traces and type = \"AWS::DynamoDB\" }",
        "rootcause.fault.exception { last and message = \"Access Denied for account_id: 1234567890\" }",
        "rootcause.fault.service { index > 5 }",
        "rootcause.json = #[{ \"Services\": [ { \"Name\": \"GetWeatherData\" } ] }]",
    ] {
        let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(Filter::parse(&filter.to_string()).unwrap(), filter);
    }
    assert!(Filter::parse("rootcause.responsetime.entity { coverage > 0.5 }").is_ok());
    assert!(Filter::parse("rootcause.fault.entity { coverage > 0.5 }").is_err(), "coverage is for response time");
    let invalid = Filter::parse("rootcause.json = #[{\"a\": }]").unwrap_err();
    assert!(invalid.message.starts_with("the JSON after rootcause.json = is invalid"), "{invalid}");
}

#[test]
fn groups_are_substituted() {
    let traces = traces();
    let filter = Filter::parse("group.name = \"slow\" AND user = \"bob\"").unwrap();
    let resolved = filter
        .clone()
        .resolve_groups(|by, name| {
            assert_eq!((by, name), (GroupKey::Name, "slow"));
            Ok(Filter::parse("responsetime > 2").unwrap())
        })
        .unwrap();
    assert_eq!(matching(&resolved, &traces), [2]);
    let negated = Filter::parse("group.arn != \"arn:x\"").unwrap();
    let resolved = negated.resolve_groups(|_, _| Ok(Filter::parse("fault").unwrap())).unwrap();
    assert_eq!(matching(&resolved, &traces), [1, 3, 4, 5, 6]);
    assert!(filter.resolve_groups(|_, name| Err(format!("no group named {name:?}"))).is_err());
}

proptest! {
    #[test]
    fn parser_never_panics(text in "\\PC{0,80}") {
        let _ = Filter::parse(&text);
    }

    #[test]
    fn printing_round_trips(parts in proptest::collection::vec(prop_oneof![
        Just("fault"), Just("!"), Just("("), Just(")"), Just("AND"), Just("OR"), Just("ok"),
        Just("responsetime > 1.5"), Just("annotation.k = \"v\""), Just("user CONTAINS \"a\\\"b\""),
        Just("service(\"s\") { error }"), Just("edge(\"a\", id(type: \"t\"))"), Just("http.status != 404"),
        Just("annotation[\"x.y z\"]"), Just("{"), Just("}"), Just("duration"),
    ], 1..12)) {
        let text = parts.join(" ");
        if let Ok(filter) = Filter::parse(&text) {
            let printed = filter.to_string();
            prop_assert_eq!(Filter::parse(&printed).unwrap(), filter);
        }
    }
}
