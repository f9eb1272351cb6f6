//! Nodes for downstream calls that sent no segment of their own.

use roentgen_model::{Entity, Text};

use crate::summary::ServiceKey;

/// The node X-Ray infers for a subsegment that calls an AWS service or a remote endpoint.
///
/// AWS resources are named after the resource when the SDK recorded it (a DynamoDB table, an SQS
/// queue), else after the service; other remote calls keep the subsegment's name.
pub fn inferred_service(sub: &Entity) -> Option<ServiceKey> {
    match sub.namespace.as_deref() {
        Some("aws") => {
            let aws = sub.aws.as_ref();
            let resource = aws.and_then(|a| {
                a.table_name.clone().or_else(|| a.queue_url.as_deref().and_then(queue_name).map(Text::from))
            });
            Some(ServiceKey {
                name: resource.unwrap_or_else(|| sub.name.clone()),
                kind: Some(aws_resource_type(&sub.name)),
                account_id: aws.and_then(|a| a.account_id.clone()),
            })
        }
        Some("remote") => {
            Some(ServiceKey { name: sub.name.clone(), kind: Some(Text::const_new("remote")), account_id: None })
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

    fn sub(json: &str) -> Entity {
        let doc = format!(
            r#"{{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"0000000000000001","name":"x","start_time":1,"end_time":2,"subsegments":[{json}]}}"#
        );
        parse_document(doc.as_bytes(), MAX_DOCUMENT_BYTES).unwrap().entity.subsegments.remove(0)
    }

    #[test]
    fn names_aws_resources() {
        let s = sub(r#"{"id":"0000000000000002","name":"SQS","namespace":"aws","start_time":1,"end_time":2,
            "aws":{"queue_url":"https://sqs.us-east-1.amazonaws.com/123/orders"}}"#);
        let key = inferred_service(&s).unwrap();
        assert_eq!((key.name.as_str(), key.kind.as_deref()), ("orders", Some("AWS::SQS::Queue")));
        let s = sub(r#"{"id":"0000000000000002","name":"S3","namespace":"aws","start_time":1,"end_time":2}"#);
        assert_eq!(inferred_service(&s).unwrap().kind.as_deref(), Some("AWS::S3::Bucket"));
        let s = sub(r#"{"id":"0000000000000002","name":"dynamodb","namespace":"aws","start_time":1,"end_time":2,
            "aws":{"table_name":"orders"}}"#);
        let key = inferred_service(&s).unwrap();
        assert_eq!((key.name.as_str(), key.kind.as_deref()), ("orders", Some("AWS::DynamoDB::Table")));
        let s = sub(r#"{"id":"0000000000000002","name":"db@host","namespace":"remote","start_time":1,"end_time":2}"#);
        assert_eq!(inferred_service(&s).unwrap().kind.as_deref(), Some("remote"));
        let s = sub(r#"{"id":"0000000000000002","name":"local","start_time":1,"end_time":2}"#);
        assert!(inferred_service(&s).is_none());
    }
}
