//! Lenient serde shapes for segment documents.
//!
//! Every leaf is a [`Scalar`] and every object a [`MapOr`], so a value of the wrong type never
//! aborts the parse: validation then decides, per field, whether that is an error code
//! (`InvalidStartTime`) or a value to ignore, as the X-Ray service does. An entity's `http`,
//! `aws`, `annotations`, `cause`, `links` and `subsegments` are read by the document module
//! straight into the parsed document's builder, subsegments validated as they come.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};

use crate::Text;
use crate::document::{Annotations, AwsBlock, Exceptions, HttpBlock, Links, Subsegments};
use crate::ids::{InvalidTraceId, TraceId};

/// Visitor methods that answer every non-container JSON value with `$value`.
macro_rules! ignore_leaves {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}
pub(crate) use ignore_leaves;

/// Any JSON value, reduced to what a leaf field can be.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum Scalar {
    #[default]
    Absent,
    Null,
    Str(Text),
    Num(f64),
    Bool(bool),
    /// An object or an array where a leaf was expected.
    Other,
}

impl Scalar {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_missing(&self) -> bool {
        matches!(self, Scalar::Absent | Scalar::Null)
    }

    pub(crate) fn truthy(&self) -> bool {
        matches!(self, Scalar::Bool(true))
    }

    /// Numbers, and numbers sent as strings (`"content_length": "86"` happens in the wild).
    pub(crate) fn as_number(&self) -> Option<f64> {
        match self {
            Scalar::Num(n) => Some(*n),
            Scalar::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// What a leaf field makes of a JSON value: a string, or anything else as a [`Scalar`].
pub(crate) trait Leaf: Sized {
    fn text(text: &str) -> Self;
    fn owned_text(text: String) -> Self {
        Self::text(&text)
    }
    fn other(value: Scalar) -> Self;
}

impl Leaf for Scalar {
    fn text(text: &str) -> Self {
        Scalar::Str(Text::new(text))
    }
    fn owned_text(text: String) -> Self {
        Scalar::Str(Text::from(text))
    }
    fn other(value: Scalar) -> Self {
        value
    }
}

struct LeafVisitor<T>(PhantomData<T>);

impl<'de, T: Leaf> Visitor<'de> for LeafVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<T, E> {
        Ok(T::other(Scalar::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<T, E> {
        Ok(T::other(Scalar::Num(v as f64)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<T, E> {
        Ok(T::other(Scalar::Num(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<T, E> {
        Ok(T::other(Scalar::Num(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok(T::text(v))
    }
    fn visit_string<E>(self, v: String) -> Result<T, E> {
        Ok(T::owned_text(v))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::other(Scalar::Null))
    }
    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::other(Scalar::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::other(Scalar::Other))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(T::other(Scalar::Other))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LeafVisitor(PhantomData))
    }
}

/// A `trace_id`, parsed as it is read: the 35 characters are too many to hold inline, and every
/// document has one.
#[derive(Debug)]
pub(crate) enum WireTraceId {
    Text(Result<TraceId, InvalidTraceId>),
    NotText(Scalar),
}

impl Default for WireTraceId {
    fn default() -> Self {
        Self::NotText(Scalar::Absent)
    }
}

impl Leaf for WireTraceId {
    fn text(text: &str) -> Self {
        Self::Text(TraceId::parse(text))
    }
    fn other(value: Scalar) -> Self {
        Self::NotText(value)
    }
}

impl<'de> Deserialize<'de> for WireTraceId {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LeafVisitor(PhantomData))
    }
}

/// An object decoded as `T`, or `None` when the value is anything but an object.
#[derive(Debug)]
pub(crate) struct MapOr<T>(pub Option<T>);

impl<T> Default for MapOr<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOr<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MapOr<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|v| MapOr(Some(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MapOr(None))
            }
            ignore_leaves!(MapOr(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Array elements, each `None` when it is not an object; a non-array gives an empty list.
#[derive(Debug)]
pub(crate) struct Items<T>(pub Vec<Option<T>>);

impl<T> Default for Items<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Items<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(MapOr(item)) = seq.next_element::<MapOr<T>>()? {
                    out.push(item);
                }
                Ok(Items(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Items::default())
            }
            ignore_leaves!(Items::default());
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// One segment or subsegment as it arrives. The fields that decide whether it is valid are kept
/// as they came, to be judged once the object is whole, in X-Ray's order; the rest is read
/// straight into the parsed document's builder, and subsegments are validated as they are read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireEntity {
    pub id: Scalar,
    pub name: Scalar,
    pub trace_id: WireTraceId,
    pub parent_id: Scalar,
    #[serde(rename = "type")]
    pub kind: Scalar,
    pub start_time: Scalar,
    pub end_time: Scalar,
    pub in_progress: Flag,
    pub error: Flag,
    pub fault: Flag,
    pub throttle: Flag,
    pub namespace: Scalar,
    pub origin: Scalar,
    pub user: Scalar,
    pub resource_arn: Scalar,
    pub http: HttpBlock,
    pub aws: AwsBlock,
    pub annotations: Annotations,
    pub subsegments: Subsegments,
    /// An object with `exceptions`, or (ignored here) the id of an exception recorded elsewhere.
    pub cause: Exceptions,
    pub links: Links,
}

/// `true` only for JSON `true`; any other value, of any type, is `false`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scalar::deserialize(d).map(|value| Flag(value.truthy()))
    }
}

/// A span link: the trace and entity this one follows from (an SQS message's sender, say).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireLink {
    pub trace_id: Scalar,
    pub id: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireCause {
    pub exceptions: Items<WireException>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireException {
    #[serde(rename = "type")]
    pub kind: Scalar,
    pub message: Scalar,
    pub remote: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireHttp {
    pub request: MapOr<WireHttpRequest>,
    pub response: MapOr<WireHttpResponse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireHttpRequest {
    pub method: Scalar,
    pub url: Scalar,
    pub user_agent: Scalar,
    pub client_ip: Scalar,
    pub traced: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireHttpResponse {
    pub status: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireAws {
    pub account_id: Scalar,
    pub ec2: MapOr<WireEc2>,
    pub operation: Scalar,
    pub table_name: Scalar,
    pub queue_url: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireEc2 {
    pub instance_id: Scalar,
    pub availability_zone: Scalar,
}
