//! Golden tests: a fixed set of traces and, for each expression, exactly which traces match.

use proptest::prelude::*;
use roentgen_model::{MAX_DOCUMENT_BYTES, ParsedDocument, TraceId, parse_document};

use super::{Filter, GroupKey};
use crate::summary::{TraceSummary, summarize};

fn trace_id(n: u32) -> TraceId {
    TraceId::parse(&format!("1-5f000000-{n:024x}")).unwrap()
}

fn trace(n: u32, docs: &[&str]) -> TraceSummary {
    let id = trace_id(n);
    let parsed: Vec<ParsedDocument> = docs
        .iter()
        .map(|d| {
            let doc = d.replace("TRACE", &id.to_string());
            parse_document(doc.as_bytes(), MAX_DOCUMENT_BYTES).unwrap()
        })
        .collect();
    summarize(id, &parsed.iter().collect::<Vec<_>>(), 1)
}

/// Six traces covering every field the language reads.
fn traces() -> Vec<TraceSummary> {
    vec![
        trace(
            1,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a1","name":"api","start_time":100,"end_time":100.5,"user":"alice",
               "http":{"request":{"method":"GET","url":"https://api.example.com/checkout","user_agent":"curl/8","client_ip":"10.0.0.1"},"response":{"status":200}},
               "annotations":{"tenant":"acme","attempt":1,"vip":true},
               "aws":{"ec2":{"instance_id":"i-1","availability_zone":"us-east-1a"}},
               "subsegments":[
                 {"id":"00000000000000c1","name":"DynamoDB","namespace":"aws","start_time":100.1,"end_time":100.2,"aws":{"table_name":"users"}},
                 {"id":"00000000000000c2","name":"auth","namespace":"remote","start_time":100.2,"end_time":100.4,"http":{"response":{"status":200}}}]}"#,
                r#"{"trace_id":"TRACE","id":"00000000000000b1","name":"auth","parent_id":"00000000000000c2","start_time":100.21,"end_time":100.39,"http":{"response":{"status":200}}}"#,
            ],
        ),
        trace(
            2,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a2","name":"api","start_time":100,"end_time":103,"user":"bob","fault":true,
               "http":{"request":{"method":"POST","url":"https://api.example.com/pay"},"response":{"status":500}},
               "annotations":{"tenant":"globex"},
               "subsegments":[{"id":"00000000000000c3","name":"payments","namespace":"remote","start_time":100.5,"end_time":102.5,"fault":true,"http":{"response":{"status":500}}}]}"#,
                r#"{"trace_id":"TRACE","id":"00000000000000b2","name":"payments","parent_id":"00000000000000c3","start_time":100.55,"end_time":102.45,"fault":true}"#,
            ],
        ),
        trace(
            3,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a3","name":"api","start_time":100,"end_time":100.3,"throttle":true,"error":true,
               "http":{"request":{"method":"GET","url":"https://api.example.com/items"},"response":{"status":429}},
               "annotations":{"tenant":"acme","attempt":3},
               "subsegments":[{"id":"00000000000000c4","name":"cache","start_time":100.1,"in_progress":true}]}"#,
            ],
        ),
        trace(
            4,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a4","name":"web","origin":"AWS::EC2::Instance","start_time":100,"end_time":106,"error":true,
               "http":{"request":{"method":"GET","url":"http://web/missing"},"response":{"status":404}},
               "subsegments":[{"id":"00000000000000c5","name":"db@host","namespace":"remote","start_time":100.5,"end_time":105.5,"fault":true,
                 "cause":{"exceptions":[{"id":"00000000000000e1","type":"TimeoutError","message":"db timed out","remote":true}]}}]}"#,
            ],
        ),
        trace(
            5,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a5","name":"lambda-fn","origin":"AWS::Lambda::Function","start_time":100,"end_time":100.1,
               "aws":{"account_id":"123456789012"},"resource_arn":"arn:aws:lambda:us-east-1:123456789012:function:lambda-fn",
               "annotations":{"a.b":1}}"#,
            ],
        ),
        trace(
            6,
            &[
                r#"{"trace_id":"TRACE","id":"00000000000000a6","name":"api","start_time":100,"end_time":101,
               "http":{"request":{"method":"GET","url":"https://api.example.com/v2/items"},"response":{"status":200}},
               "annotations":{"tenant":"acme"},
               "subsegments":[{"id":"00000000000000c6","name":"SQS","namespace":"aws","start_time":100.5,"end_time":100.6,"aws":{"queue_url":"https://sqs/123/jobs"}}]}"#,
                r#"{"trace_id":"TRACE","id":"00000000000000b6","name":"worker","parent_id":"00000000000000c6","start_time":101,"end_time":108}"#,
            ],
        ),
    ]
}

/// Each expression and the numbers of the traces it must match, in order.
const GOLDEN: &[(&str, &[u32])] = &[
    ("ok", &[1, 5, 6]),
    ("!ok", &[2, 3, 4]),
    ("ok = false", &[2, 3, 4]),
    ("fault", &[2]),
    ("Fault", &[2]),
    ("error", &[3, 4]),
    ("throttle", &[3]),
    ("partial", &[3]),
    ("!partial", &[1, 2, 4, 5, 6]),
    ("partial != true", &[1, 2, 4, 5, 6]),
    ("inferred", &[1, 4]),
    ("responsetime > 2", &[2, 4]),
    ("RESPONSETIME > 5", &[4]),
    ("responsetime >= 0.5 AND responsetime <= 1", &[1, 6]),
    ("duration >= 5 AND duration <= 8", &[4, 6]),
    ("ok !partial duration < 3", &[1, 5]),
    ("http.status != 200", &[2, 3, 4]),
    ("http.status = 429", &[3]),
    ("http.url CONTAINS \"/v2/\"", &[6]),
    ("http.url BEGINSWITH \"https://api.example.com/\" AND !service(\"payments\")", &[1, 3, 6]),
    ("http.url ENDSWITH \"/missing\"", &[4]),
    ("http.method = \"POST\"", &[2]),
    ("http.useragent CONTAINS \"curl\"", &[1]),
    ("http.clientip = \"10.0.0.1\"", &[1]),
    ("user CONTAINS \"\"", &[1, 2]),
    ("user = \"alice\"", &[1]),
    ("user != \"alice\"", &[2]),
    ("http.url AND responseTime > 2", &[2, 4]),
    ("service(\"payments\") { fault }", &[2]),
    ("service() { fault }", &[2, 4]),
    ("service(\"api\") {root = true and fault = true}", &[2]),
    ("service(\"api\") { fault = true OR responsetime > 2.5 } AND annotation.tenant = \"globex\"", &[2]),
    ("service(\"auth\") { responsetime < 0.2 }", &[1]),
    ("service(\"web\") { error }", &[4]),
    ("service(\"web\") { ok }", &[]),
    ("service(\"users\") { inferred }", &[1]),
    ("service(\"api\") { http.status = 500 }", &[2]),
    ("edge(\"api\", \"payments\") { fault }", &[2]),
    ("edge(\"api\", \"auth\")", &[1]),
    ("edge(\"api\",\"auth\") { http.status = 200 }", &[1]),
    ("edge(\"web\", \"db@host\") { responsetime > 4 }", &[4]),
    ("edge(\"web\", \"db@host\") { ok }", &[]),
    ("edge(id(name: \"api\"), id(name: \"worker\"))", &[6]),
    ("service(id(name: \"lambda-fn\", type: \"AWS::Lambda::Function\"))", &[5]),
    ("service(id(type: \"AWS::Lambda::Function\")) { error }", &[]),
    ("service(id(account.id: \"123456789012\"))", &[5]),
    ("service(id(type: \"AWS::DynamoDB::Table\"))", &[1]),
    ("!service(\"api\")", &[4, 5]),
    ("annotation.tenant = \"acme\"", &[1, 3, 6]),
    ("annotation.tenant != \"acme\"", &[2]),
    ("annotation.tenant BEGINSWITH \"glo\"", &[2]),
    ("annotation.attempt > 1", &[3]),
    ("annotation.vip", &[1]),
    ("!annotation.vip", &[2, 3, 4, 5, 6]),
    ("annotation.vip = true", &[1]),
    ("annotation[\"a.b\"] = 1", &[5]),
    ("annotation.a.b = 1", &[5]),
    ("annotation.tenant = 1", &[]),
    ("availabilityzone = \"us-east-1a\"", &[1]),
    ("instance.id BEGINSWITH \"i-\"", &[1]),
    ("resource.arn ENDSWITH \":function:lambda-fn\"", &[5]),
    ("(fault OR throttle) AND annotation.tenant = \"acme\"", &[3]),
    ("fault OR throttle AND annotation.tenant = \"acme\"", &[2, 3]),
    ("NOT fault and not error", &[1, 5, 6]),
    ("!(fault OR error) !partial", &[1, 5, 6]),
    ("rootcause.fault.service { name = \"payments\" }", &[2]),
    ("rootcause.fault.service { last and name = \"payments\" }", &[2]),
    ("rootcause.fault.service { inferred and name = \"db@host\" and type = \"remote\" }", &[4]),
    ("rootcause.fault.service { index > 0 }", &[2, 4]),
    ("rootcause.fault.entity { last and name = \"db@host\" and remote }", &[4]),
    ("rootcause.fault.exception { name = \"TimeoutError\" and message CONTAINS \"timed out\" }", &[4]),
    ("rootcause.fault.exception { last and message = \"db timed out\" }", &[4]),
    ("rootcause.error.service { name = \"api\" }", &[3]),
    ("rootcause.error.service { name = web }", &[4]),
    ("rootcause.responsetime.entity { coverage > 0.6 and name = \"payments\" }", &[2]),
    ("rootcause.responsetime.service { last and inferred }", &[4]),
    ("rootcause.json = #[{\"Services\": [{\"Name\": \"api\"}, {\"Name\": \"payments\"}]}]", &[2]),
    ("rootcause.json = #[{\"ClientImpacting\": false}]", &[4]),
];

fn matching(filter: &Filter, traces: &[TraceSummary]) -> Vec<u32> {
    traces.iter().enumerate().filter(|(_, t)| filter.matches(t)).map(|(i, _)| i as u32 + 1).collect()
}

#[test]
fn golden_expressions() {
    let traces = traces();
    for (text, expected) in GOLDEN {
        let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(matching(&filter, &traces), *expected, "{text:?} (canonical: {filter})");
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
