//! The parsed form of a document: its entities in one array, in document order, and all their
//! text in one string.
//!
//! Live traces hold the parsed form of every document until it is written into a block. A tree
//! of entities, each with its own vectors, boxes and strings, took more memory than the
//! document's text itself (2,063 bytes for the load generator's mean document of 1,679, in 9.3
//! allocations), and the flush read it back cold, entity by entity, from wherever those lay.
//! Fixed-size records in a few exact-size arrays take 1,165 bytes in five allocations, and are
//! read in order. While a document is parsed they are gathered in this thread's [`Builder`].

use std::cell::RefCell;
use std::fmt;

use crate::document::{AnnotationValue, Http, Link, Text};
use crate::ids::SegmentId;

/// A string of [`Tree::text`]; `start == ABSENT` when the field was not given.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Str {
    start: u32,
    len: u32,
}

const ABSENT: u32 = u32::MAX;

impl Str {
    const NONE: Str = Str { start: ABSENT, len: 0 };
}

/// Indexes `start..end` of one of the tree's record arrays.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(start: u32, end: u32) -> Self {
        Self { start, end }
    }

    pub(crate) fn start(self) -> u32 {
        self.start
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

const IN_PROGRESS: u8 = 1;
const ERROR: u8 = 2;
const FAULT: u8 = 4;
const THROTTLE: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    id: SegmentId,
    start_time: f64,
    /// Zero while in progress.
    end_time: f64,
    /// The index past this entity's subsegments, nested ones included.
    end: u32,
    flags: u8,
    name: Str,
    namespace: Str,
    origin: Str,
    user: Str,
    resource_arn: Str,
    /// Index into [`Tree::http`], or `ABSENT`.
    http: u32,
    /// Index into [`Tree::aws`], or `ABSENT`.
    aws: u32,
    annotations: Span,
    exceptions: Span,
    links: Span,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct HttpRecord {
    method: Str,
    url: Str,
    user_agent: Str,
    client_ip: Str,
    status: Option<u16>,
    traced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct AwsRecord {
    account_id: Str,
    instance_id: Str,
    availability_zone: Str,
    operation: Str,
    table_name: Str,
    queue_url: Str,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StoredValue {
    String(Str),
    Number(f64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct AnnotationRecord {
    key: Str,
    value: StoredValue,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ExceptionRecord {
    kind: Str,
    message: Str,
    remote: bool,
}

/// A document's entities, the top one first and each followed by its subsegments (depth first),
/// with their records and text.
#[derive(Clone, PartialEq)]
pub(crate) struct Tree {
    nodes: Box<[Node]>,
    http: Box<[HttpRecord]>,
    aws: Box<[AwsRecord]>,
    annotations: Box<[AnnotationRecord]>,
    exceptions: Box<[ExceptionRecord]>,
    links: Box<[Link]>,
    text: Box<str>,
}

impl Tree {
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn prefetch(&self) {
        use crate::prefetch::lines;
        // A document of the load generator's mean size: 4.2 entities of 104 bytes, 5 lines of
        // strings.
        lines(&self.nodes, 16);
        lines(&self.http, 2);
        lines(&self.aws, 2);
        lines(&self.annotations, 2);
        lines(self.text.as_bytes(), 8);
    }

    pub(crate) fn top(&self) -> Entity<'_> {
        self.entity(0)
    }

    fn entity(&self, at: usize) -> Entity<'_> {
        Entity { tree: self, node: &self.nodes[at], at }
    }

    fn text(&self, s: Str) -> Option<&str> {
        if s.start == ABSENT {
            return None;
        }
        let start = s.start as usize;
        self.text.get(start..start + s.len as usize)
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        self.top().walk(|e| {
            list.entry(&e);
        });
        list.finish()
    }
}

/// One segment or subsegment of a parsed document, reduced to the fields roentgen indexes; the
/// document itself is kept byte for byte beside it. A view into the document: copy it freely.
#[derive(Clone, Copy)]
pub struct Entity<'a> {
    tree: &'a Tree,
    node: &'a Node,
    at: usize,
}

/// Two views are equal when they are the same entity of the same parsed document.
impl PartialEq for Entity<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.tree, other.tree) && self.at == other.at
    }
}

impl Eq for Entity<'_> {}

impl fmt::Debug for Entity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entity")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("start_time", &self.start_time())
            .field("end_time", &self.end_time())
            .field("flags", &self.node.flags)
            .field("namespace", &self.namespace())
            .field("origin", &self.origin())
            .field("user", &self.user())
            .field("resource_arn", &self.resource_arn())
            .field("http", &self.http())
            .field("aws", &self.aws())
            .field("annotations", &self.annotations().collect::<Vec<_>>())
            .field("exceptions", &self.exceptions().collect::<Vec<_>>())
            .field("links", &self.links())
            .field("subsegments", &self.subsegments().count())
            .finish()
    }
}

/// The `http` block: only what is indexed or summarised.
#[derive(Clone, Copy)]
pub struct HttpRef<'a> {
    tree: &'a Tree,
    record: &'a HttpRecord,
}

impl<'a> HttpRef<'a> {
    pub fn method(&self) -> Option<&'a str> {
        self.tree.text(self.record.method)
    }

    pub fn url(&self) -> Option<&'a str> {
        self.tree.text(self.record.url)
    }

    pub fn user_agent(&self) -> Option<&'a str> {
        self.tree.text(self.record.user_agent)
    }

    pub fn client_ip(&self) -> Option<&'a str> {
        self.tree.text(self.record.client_ip)
    }

    pub fn status(&self) -> Option<u16> {
        self.record.status
    }

    pub fn traced(&self) -> bool {
        self.record.traced
    }

    pub fn to_http(&self) -> Http {
        Http {
            method: self.method().map(Text::from),
            url: self.url().map(Text::from),
            user_agent: self.user_agent().map(Text::from),
            client_ip: self.client_ip().map(Text::from),
            status: self.status(),
            traced: self.traced(),
        }
    }
}

impl fmt::Debug for HttpRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_http(), f)
    }
}

/// The `aws` block: only what is indexed or summarised.
#[derive(Clone, Copy)]
pub struct AwsRef<'a> {
    tree: &'a Tree,
    record: &'a AwsRecord,
}

impl<'a> AwsRef<'a> {
    pub fn account_id(&self) -> Option<&'a str> {
        self.tree.text(self.record.account_id)
    }

    pub fn instance_id(&self) -> Option<&'a str> {
        self.tree.text(self.record.instance_id)
    }

    pub fn availability_zone(&self) -> Option<&'a str> {
        self.tree.text(self.record.availability_zone)
    }

    pub fn operation(&self) -> Option<&'a str> {
        self.tree.text(self.record.operation)
    }

    pub fn table_name(&self) -> Option<&'a str> {
        self.tree.text(self.record.table_name)
    }

    pub fn queue_url(&self) -> Option<&'a str> {
        self.tree.text(self.record.queue_url)
    }
}

impl fmt::Debug for AwsRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws")
            .field("account_id", &self.account_id())
            .field("instance_id", &self.instance_id())
            .field("availability_zone", &self.availability_zone())
            .field("operation", &self.operation())
            .field("table_name", &self.table_name())
            .field("queue_url", &self.queue_url())
            .finish()
    }
}

/// An exception recorded in a `cause`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExceptionRef<'a> {
    pub kind: Option<&'a str>,
    pub message: Option<&'a str>,
    /// The exception came from a downstream service.
    pub remote: bool,
}

/// A typed annotation value, borrowed from the document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnnotationRef<'a> {
    String(&'a str),
    Number(f64),
    Bool(bool),
}

impl AnnotationRef<'_> {
    pub fn to_value(self) -> AnnotationValue {
        match self {
            Self::String(s) => AnnotationValue::String(Text::from(s)),
            Self::Number(n) => AnnotationValue::Number(n),
            Self::Bool(b) => AnnotationValue::Bool(b),
        }
    }
}

impl PartialEq<AnnotationRef<'_>> for AnnotationValue {
    fn eq(&self, other: &AnnotationRef<'_>) -> bool {
        match (self, other) {
            (Self::String(a), AnnotationRef::String(b)) => a == b,
            (Self::Number(a), AnnotationRef::Number(b)) => a == b,
            (Self::Bool(a), AnnotationRef::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> Entity<'a> {
    fn text(&self, s: Str) -> Option<&'a str> {
        self.tree.text(s)
    }

    fn flag(&self, flag: u8) -> bool {
        self.node.flags & flag != 0
    }

    pub fn id(&self) -> SegmentId {
        self.node.id
    }

    pub fn name(&self) -> &'a str {
        self.text(self.node.name).unwrap_or_default()
    }

    pub fn start_time(&self) -> f64 {
        self.node.start_time
    }

    /// `None` exactly when the entity is in progress.
    pub fn end_time(&self) -> Option<f64> {
        let node = self.node;
        (node.flags & IN_PROGRESS == 0).then_some(node.end_time)
    }

    pub fn in_progress(&self) -> bool {
        self.flag(IN_PROGRESS)
    }

    pub fn error(&self) -> bool {
        self.flag(ERROR)
    }

    pub fn fault(&self) -> bool {
        self.flag(FAULT)
    }

    pub fn throttle(&self) -> bool {
        self.flag(THROTTLE)
    }

    pub fn namespace(&self) -> Option<&'a str> {
        self.text(self.node.namespace)
    }

    pub fn origin(&self) -> Option<&'a str> {
        self.text(self.node.origin)
    }

    pub fn user(&self) -> Option<&'a str> {
        self.text(self.node.user)
    }

    pub fn resource_arn(&self) -> Option<&'a str> {
        self.text(self.node.resource_arn)
    }

    pub fn http(&self) -> Option<HttpRef<'a>> {
        let record = self.tree.http.get(self.node.http as usize)?;
        Some(HttpRef { tree: self.tree, record })
    }

    pub fn http_status(&self) -> Option<u16> {
        self.tree.http.get(self.node.http as usize)?.status
    }

    pub fn aws(&self) -> Option<AwsRef<'a>> {
        let record = self.tree.aws.get(self.node.aws as usize)?;
        Some(AwsRef { tree: self.tree, record })
    }

    /// Valid annotations in the order of their first appearance, each key once.
    pub fn annotations(&self) -> impl Iterator<Item = (&'a str, AnnotationRef<'a>)> + use<'a> {
        let tree = self.tree;
        tree.annotations[self.node.annotations.range()].iter().map(move |a| {
            let value = match a.value {
                StoredValue::String(s) => AnnotationRef::String(tree.text(s).unwrap_or_default()),
                StoredValue::Number(n) => AnnotationRef::Number(n),
                StoredValue::Bool(b) => AnnotationRef::Bool(b),
            };
            (tree.text(a.key).unwrap_or_default(), value)
        })
    }

    pub fn exceptions(&self) -> impl Iterator<Item = ExceptionRef<'a>> + use<'a> {
        let tree = self.tree;
        tree.exceptions[self.node.exceptions.range()].iter().map(move |x| ExceptionRef {
            kind: tree.text(x.kind),
            message: tree.text(x.message),
            remote: x.remote,
        })
    }

    /// The entities this one follows from in other traces (asynchronous links), at most
    /// [`MAX_LINKS`](crate::MAX_LINKS); links whose ids are not valid are left out.
    pub fn links(&self) -> &'a [Link] {
        &self.tree.links[self.node.links.range()]
    }

    /// The entity's own subsegments, in document order.
    pub fn subsegments(&self) -> impl Iterator<Item = Entity<'a>> + use<'a> {
        let (tree, end) = (self.tree, self.node.end as usize);
        let mut next = self.at + 1;
        std::iter::from_fn(move || {
            let at = next;
            if at >= end {
                return None;
            }
            let entity = tree.entity(at);
            next = entity.node.end as usize;
            Some(entity)
        })
    }

    /// The latest time this entity is known to cover: its end, or its start while in progress.
    pub fn last_time(&self) -> f64 {
        self.end_time().unwrap_or(self.start_time())
    }

    /// Calls `f` on this entity and every nested subsegment, depth first: they lie in order.
    pub fn walk(&self, mut f: impl FnMut(Entity<'a>)) {
        for (at, node) in self.tree.nodes[self.at..self.node.end as usize].iter().enumerate() {
            f(Entity { tree: self.tree, node, at: self.at + at });
        }
    }
}

/// An entity's own fields, validated, as the parser hands them to [`Builder::entity`]; its
/// blocks are in the builder already.
pub(crate) struct EntityFields<'t> {
    pub id: SegmentId,
    pub name: &'t str,
    pub start_time: f64,
    /// `None` exactly when the entity is in progress.
    pub end_time: Option<f64>,
    pub error: bool,
    pub fault: bool,
    pub throttle: bool,
    pub namespace: Option<&'t str>,
    pub origin: Option<&'t str>,
    pub user: Option<&'t str>,
    pub resource_arn: Option<&'t str>,
    pub http: Option<u32>,
    pub aws: Option<u32>,
    pub annotations: Span,
    pub exceptions: Span,
    pub links: Span,
    /// Where this entity's subsegments begin in the builder, when it has any.
    pub first_subsegment: Option<u32>,
}

/// The `http` block as read.
pub(crate) struct HttpFields<'t> {
    pub method: Option<&'t str>,
    pub url: Option<&'t str>,
    pub user_agent: Option<&'t str>,
    pub client_ip: Option<&'t str>,
    pub status: Option<u16>,
    pub traced: bool,
}

/// The `aws` block as read.
pub(crate) struct AwsFields<'t> {
    pub account_id: Option<&'t str>,
    pub instance_id: Option<&'t str>,
    pub availability_zone: Option<&'t str>,
    pub operation: Option<&'t str>,
    pub table_name: Option<&'t str>,
    pub queue_url: Option<&'t str>,
}

/// A document's entities and their blocks as the parser validates them, in the order they end:
/// an entity's blocks and subsegments before the entity, which is complete only once its object
/// ends. One per thread, emptied before each document; a document that fails leaves what it
/// added, never read.
#[derive(Default)]
pub(crate) struct Builder {
    /// Each entity with where its subsegments begin.
    nodes: Vec<(Node, u32)>,
    http: Vec<HttpRecord>,
    aws: Vec<AwsRecord>,
    annotations: Vec<AnnotationRecord>,
    exceptions: Vec<ExceptionRecord>,
    links: Vec<Link>,
    text: String,
}

thread_local! {
    static BUILDER: RefCell<Builder> = RefCell::new(Builder::default());
}

impl Builder {
    /// Runs `f` on this thread's builder.
    pub(crate) fn with<R>(f: impl FnOnce(&mut Builder) -> R) -> R {
        BUILDER.with_borrow_mut(f)
    }

    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
        self.http.clear();
        self.aws.clear();
        self.annotations.clear();
        self.exceptions.clear();
        self.links.clear();
        self.text.clear();
    }

    /// Where the next entity will go: the start of a subsegment array about to be read.
    pub(crate) fn next_entity(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn str(&mut self, value: Option<&str>) -> Str {
        match value {
            Some(s) => {
                let start = self.text.len() as u32;
                self.text.push_str(s);
                Str { start, len: s.len() as u32 }
            }
            None => Str::NONE,
        }
    }

    pub(crate) fn http(&mut self, h: HttpFields<'_>) -> u32 {
        let record = HttpRecord {
            method: self.str(h.method),
            url: self.str(h.url),
            user_agent: self.str(h.user_agent),
            client_ip: self.str(h.client_ip),
            status: h.status,
            traced: h.traced,
        };
        self.http.push(record);
        self.http.len() as u32 - 1
    }

    pub(crate) fn aws(&mut self, a: AwsFields<'_>) -> u32 {
        let record = AwsRecord {
            account_id: self.str(a.account_id),
            instance_id: self.str(a.instance_id),
            availability_zone: self.str(a.availability_zone),
            operation: self.str(a.operation),
            table_name: self.str(a.table_name),
            queue_url: self.str(a.queue_url),
        };
        self.aws.push(record);
        self.aws.len() as u32 - 1
    }

    pub(crate) fn next_annotation(&self) -> u32 {
        self.annotations.len() as u32
    }

    /// Adds an annotation to those of one object, which begin at `first`: a repeated key keeps
    /// its first place and takes the later value.
    pub(crate) fn annotation(&mut self, first: u32, key: &str, value: AnnotationRef<'_>) {
        let value = match value {
            AnnotationRef::String(s) => StoredValue::String(self.str(Some(s))),
            AnnotationRef::Number(n) => StoredValue::Number(n),
            AnnotationRef::Bool(b) => StoredValue::Bool(b),
        };
        let text = &self.text;
        let same = |s: Str| text.get(s.start as usize..s.start as usize + s.len as usize) == Some(key);
        match self.annotations[first as usize..].iter_mut().find(|a| same(a.key)) {
            Some(slot) => slot.value = value,
            None => {
                let key = self.str(Some(key));
                self.annotations.push(AnnotationRecord { key, value });
            }
        }
    }

    pub(crate) fn exception(&mut self, kind: Option<&str>, message: Option<&str>, remote: bool) {
        let record = ExceptionRecord { kind: self.str(kind), message: self.str(message), remote };
        self.exceptions.push(record);
    }

    pub(crate) fn next_exception(&self) -> u32 {
        self.exceptions.len() as u32
    }

    pub(crate) fn link(&mut self, link: Link) {
        self.links.push(link);
    }

    pub(crate) fn next_link(&self) -> u32 {
        self.links.len() as u32
    }

    /// Adds an entity whose blocks and subsegments were added before it.
    pub(crate) fn entity(&mut self, e: EntityFields<'_>) {
        let first = e.first_subsegment.unwrap_or(self.nodes.len() as u32);
        let flags = [(e.end_time.is_none(), IN_PROGRESS), (e.error, ERROR), (e.fault, FAULT), (e.throttle, THROTTLE)]
            .into_iter()
            .fold(0, |flags, (set, flag)| if set { flags | flag } else { flags });
        let node = Node {
            id: e.id,
            start_time: e.start_time,
            end_time: e.end_time.unwrap_or(0.0),
            end: 0,
            flags,
            name: self.str(Some(e.name)),
            namespace: self.str(e.namespace),
            origin: self.str(e.origin),
            user: self.str(e.user),
            resource_arn: self.str(e.resource_arn),
            http: e.http.unwrap_or(ABSENT),
            aws: e.aws.unwrap_or(ABSENT),
            annotations: e.annotations,
            exceptions: e.exceptions,
            links: e.links,
        };
        self.nodes.push((node, first));
    }

    /// The document whose top entity was the last one added, its entities put in document order:
    /// each entity before its subsegments. They were added after them, so an entity's last
    /// subsegment is the one added just before it.
    pub(crate) fn finish(&self) -> Tree {
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut pending: Vec<usize> = self.nodes.len().checked_sub(1).into_iter().collect();
        while let Some(at) = pending.pop() {
            let (mut node, first) = self.nodes[at];
            node.end = (nodes.len() + at + 1 - first as usize) as u32;
            nodes.push(node);
            // Subsegments last to first, so that the first is taken next.
            let mut child = at;
            while child > first as usize {
                child -= 1;
                pending.push(child);
                child = self.nodes[child].1 as usize;
            }
        }
        Tree {
            nodes: nodes.into_boxed_slice(),
            http: self.http.as_slice().into(),
            aws: self.aws.as_slice().into(),
            annotations: self.annotations.as_slice().into(),
            exceptions: self.exceptions.as_slice().into(),
            links: self.links.as_slice().into(),
            text: self.text.as_str().into(),
        }
    }
}
