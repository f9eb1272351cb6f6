//! Nodes for downstream calls that sent no segment of their own.

use roentgen_model::{Entity, Text};

use crate::summary::ServiceKey;

/// The node X-Ray infers for a subsegment that calls an AWS service or a remote endpoint.
///
/// AWS resources are named after the resource when the SDK recorded it (a DynamoDB table, an SQS
/// queue), else after the service; other remote calls keep the subsegment's name.
pub fn inferred_service(sub: Entity<'_>) -> Option<ServiceKey> {
    match sub.namespace() {
        Some("aws") => {
            let aws = sub.aws();
            let resource = aws.and_then(|a| a.table_name().or_else(|| a.queue_url().and_then(queue_name)));
            Some(ServiceKey {
                name: Text::from(resource.unwrap_or(sub.name())),
                kind: Some(aws_resource_type(sub.name())),
                account_id: aws.and_then(|a| a.account_id()).map(Text::from),
            })
        }
        Some("remote") => {
            Some(ServiceKey { name: Text::from(sub.name()), kind: Some(Text::const_new("remote")), account_id: None })
        }
        _ => None,
    }
}

fn queue_name(url: &str) -> Option<&str> {
    url.rsplit('/').next().filter(|s| !s.is_empty())
}

/// SDKs disagree on case: Java and Node name the subsegment "DynamoDB", Python's botocore patch
/// uses the endpoint prefix "dynamodb".
fn aws_resource_type(service: &str) -> Text {
    const KNOWN: [(&str, &str); 5] = [
        ("DynamoDB", "AWS::DynamoDB::Table"),
        ("SQS", "AWS::SQS::Queue"),
        ("S3", "AWS::S3::Bucket"),
        ("SNS", "AWS::SNS::Topic"),
        ("Lambda", "AWS::Lambda"),
    ];
    KNOWN
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(service))
        .map_or_else(|| Text::from(format!("AWS::{service}")), |(_, kind)| Text::const_new(kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};

    /// The service inferred for the one subsegment of a document.
    fn inferred(json: &str) -> Option<ServiceKey> {
        let doc = format!(
            r#"{{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"0000000000000001","name":"x","start_time":1,"end_time":2,"subsegments":[{json}]}}"#
        );
        let doc = parse_document(doc.as_bytes(), MAX_DOCUMENT_BYTES).unwrap();
        inferred_service(doc.entity().subsegments().next().unwrap())
    }

    #[test]
    fn names_aws_resources() {
        let key = inferred(
            r#"{"id":"0000000000000002","name":"SQS","namespace":"aws","start_time":1,"end_time":2,
            "aws":{"queue_url":"https://sqs.us-east-1.amazonaws.com/123/orders"}}"#,
        )
        .unwrap();
        assert_eq!((key.name.as_str(), key.kind.as_deref()), ("orders", Some("AWS::SQS::Queue")));
        let key = inferred(r#"{"id":"0000000000000002","name":"S3","namespace":"aws","start_time":1,"end_time":2}"#);
        assert_eq!(key.unwrap().kind.as_deref(), Some("AWS::S3::Bucket"));
        let key = inferred(
            r#"{"id":"0000000000000002","name":"dynamodb","namespace":"aws","start_time":1,"end_time":2,
            "aws":{"table_name":"orders","account_id":"123456789012"}}"#,
        )
        .unwrap();
        assert_eq!((key.name.as_str(), key.kind.as_deref()), ("orders", Some("AWS::DynamoDB::Table")));
        assert_eq!(key.account_id.as_deref(), Some("123456789012"));
        let key =
            inferred(r#"{"id":"0000000000000002","name":"db@host","namespace":"remote","start_time":1,"end_time":2}"#);
        assert_eq!(key.unwrap().kind.as_deref(), Some("remote"));
        assert!(inferred(r#"{"id":"0000000000000002","name":"local","start_time":1,"end_time":2}"#).is_none());
    }
}
