//! A direct reader for segment documents as the SDKs write them.
//!
//! serde's derived visitors read a document through several layers of generic calls for every
//! key and value, and were a fifth of the server's CPU. This reader walks the bytes once, fills
//! the same wire shapes ([`WireEntity`] and the blocks under it) and hands them to the same
//! validation, so what it accepts and rejects, and with which error, is what the serde path
//! would give. It reads only what it can read exactly as serde_json does: at anything else (an
//! escape in a string that is kept or a key, a repeated field, a number that would overflow,
//! nesting deeper than [`MAX_DEPTH`], malformed JSON) it gives up and the serde path reads the
//! document instead, errors included.

use crate::document::{
    Annotations, AwsBlock, DocumentError, Exceptions, HttpBlock, Links, ParsedDocument, Subsegments, Text, document,
    not_an_object,
};
use crate::ids::TraceId;
use crate::wire::{
    Flag, Items, MapOr, Scalar, WireAws, WireCause, WireEc2, WireEntity, WireException, WireHttp, WireHttpRequest,
    WireHttpResponse, WireLink, WireTraceId,
};

/// Objects and arrays this deep are left to serde_json, which stops at 128.
const MAX_DEPTH: u32 = 64;

/// The document, validated, or `None` when this reader cannot say exactly what serde_json would.
pub(crate) fn read(text: &str) -> Option<Result<ParsedDocument, DocumentError>> {
    let mut r = Reader { text, b: text.as_bytes(), i: 0, depth: 0 };
    r.ws();
    // Filled where it lies, as each subsegment is: an entity is too large to move cheaply.
    let mut top = WireEntity::default();
    let object = r.entity_or_skip(&mut top)?;
    r.ws();
    if r.i != r.b.len() {
        return None;
    }
    Some(if object { document(&mut top) } else { Err(not_an_object()) })
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Objects and arrays open around the value being read (skipped values count their own).
    depth: u32,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// Moves to the next quote, backslash or control character of a string.
    fn next_special(&mut self) -> Option<u8> {
        self.i = crate::byte_classes::next_special(self.b, self.i)?;
        self.peek()
    }

    /// A string whose text is kept: one with no escape, as its bytes are its text.
    fn string(&mut self) -> Option<&'a str> {
        let range = self.string_range()?;
        self.text.get(range)
    }

    /// Where the text of a string with no escape is, the string read.
    fn string_range(&mut self) -> Option<std::ops::Range<usize>> {
        self.i += 1;
        let start = self.i;
        if self.next_special()? != b'"' {
            return None;
        }
        self.i += 1;
        Some(start..self.i - 1)
    }

    /// A string that is only checked, as serde_json checks what it ignores: escapes must be
    /// well formed, control characters are not allowed.
    fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            match self.next_special()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    self.i += 1;
                    match *self.b.get(self.i)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number's syntax, as serde_json checks a number it ignores.
    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// A number's value, correctly rounded, as serde_json computes it with its `float_roundtrip`
    /// feature: where the digits and the power of ten are both exact as doubles, one
    /// multiplication or division (Clinger's fast path); elsewhere the standard library's
    /// parse. Without that feature serde_json takes the fast path's steps for any number, one
    /// unit in the last place off for some, and a canonical filter printed and parsed again was
    /// not always the same. Numbers of more than 19 digits are left to serde_json. It checks
    /// the syntax as [`Reader::skip_number`] does, in the same pass: sharing that pass cost 4%
    /// more instructions for the whole parse.
    fn number(&mut self) -> Option<f64> {
        let begin = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        // Nineteen digits never overflow a u64: they are added up unchecked.
        let mut significand: u64 = 0;
        let mut digits = 0;
        let mut push = |c: u8| {
            significand = significand.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            digits += 1;
        };
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return None;
                }
            }
            b'1'..=b'9' => {
                while let Some(c @ b'0'..=b'9') = self.peek() {
                    push(c);
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let mut exponent: i32 = 0;
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            let start = self.i;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                push(c);
                self.i += 1;
            }
            if self.i == start {
                return None;
            }
            exponent = -((self.i - start) as i32);
        }
        if digits > 19 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            let positive = match self.peek() {
                Some(b'-') => {
                    self.i += 1;
                    false
                }
                Some(b'+') => {
                    self.i += 1;
                    true
                }
                _ => true,
            };
            let start = self.i;
            let digits = self.digits();
            if digits == 0 || digits > 4 {
                return None;
            }
            let value: i32 = std::str::from_utf8(&self.b[start..self.i]).ok()?.parse().ok()?;
            exponent = if positive { exponent + value } else { exponent - value };
        }
        let magnitude = significand as f64;
        if integer {
            return Some(if negative { -magnitude } else { magnitude });
        }
        if significand <= 1 << 53 && exponent.unsigned_abs() < POW10.len() as u32 {
            let pow = POW10[exponent.unsigned_abs() as usize];
            let f = if exponent >= 0 { magnitude * pow } else { magnitude / pow };
            return Some(if negative { -f } else { f });
        }
        let value: f64 = std::str::from_utf8(&self.b[begin..self.i]).ok()?.parse().ok()?;
        value.is_finite().then_some(value)
    }

    /// Any value, checked as serde_json checks what it ignores, without recursion.
    fn skip_value(&mut self) -> Option<()> {
        // One bit a level, set for an object; deeper nesting is left to serde_json.
        let mut objects: u64 = 0;
        let mut depth = 0u32;
        loop {
            self.ws();
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? != close {
                        if depth == u64::BITS || self.depth + depth >= MAX_DEPTH {
                            return None;
                        }
                        objects = objects << 1 | u64::from(open == b'{');
                        depth += 1;
                        if open == b'{' {
                            self.skip_key()?;
                        }
                        continue;
                    }
                    self.i += 1;
                }
                b'"' => self.skip_string()?,
                b'-' | b'0'..=b'9' => self.skip_number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return None,
            }
            // A value ended: close what ends with it, or go on to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let in_object = objects & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if in_object {
                            self.skip_key()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                self.i += 1;
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    fn skip_key(&mut self) -> Option<()> {
        self.ws();
        self.key_bytes().map(drop)
    }

    /// The members of the object or array that starts here, `each` called at each one (for an
    /// object, at its key).
    fn members(&mut self, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let close = if self.peek()? == b'{' { b'}' } else { b']' };
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.peek()? != close {
            loop {
                self.ws();
                each(self)?;
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    c if c == close => break,
                    _ => return None,
                }
            }
        }
        self.i += 1;
        self.depth -= 1;
        Some(())
    }

    /// An object's key, and the colon after it.
    fn key(&mut self) -> Option<&'a str> {
        let start = self.i + 1;
        let key = self.key_bytes()?;
        self.text.get(start..start + key.len())
    }

    /// An object's key as bytes, and the colon after it: a key that is only compared needs no
    /// check that it is cut at characters (its quotes are).
    fn key_bytes(&mut self) -> Option<&'a [u8]> {
        if self.peek()? != b'"' {
            return None;
        }
        let range = self.string_range()?;
        self.eat(b':')?;
        self.ws();
        self.b.get(range)
    }

    /// An object of known fields: `read` gets each field's number, as `field` gives it (a field
    /// given twice is an error to serde's derived readers, so it is left to them); other fields
    /// are skipped.
    fn fields(
        &mut self,
        field: impl Fn(&[u8]) -> Option<usize>,
        mut read: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
        let mut seen: u32 = 0;
        self.members(|r| match field(r.key_bytes()?) {
            Some(field) if seen & 1 << field != 0 => None,
            Some(field) => {
                seen |= 1 << field;
                read(r, field)
            }
            None => r.skip_value(),
        })
    }

    /// A leaf field: any value, as [`Scalar`] takes it.
    fn scalar(&mut self) -> Option<Scalar> {
        Some(match self.peek()? {
            b'"' => Scalar::Str(Text::new(self.string()?)),
            b'-' | b'0'..=b'9' => Scalar::Num(self.number()?),
            b't' => {
                self.literal(b"true")?;
                Scalar::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Scalar::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Scalar::Null
            }
            b'{' | b'[' => {
                self.skip_value()?;
                Scalar::Other
            }
            _ => return None,
        })
    }

    /// A value the serde path does not keep but reads as a value of its own (not skipped
    /// inside another): a string is decoded there and a number computed, so a string with an
    /// escape, or a number out of range, is left to it.
    fn skip_own(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.skip_value(),
        }
    }

    /// A field that [`MapOr`] reads: an object, or anything else, which is skipped.
    fn map_or<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<MapOr<T>> {
        if self.peek()? == b'{' {
            return Some(MapOr(Some(read(self)?)));
        }
        self.skip_own()?;
        Some(MapOr(None))
    }

    /// An array of objects, as [`Items`](crate::wire::Items) reads it.
    fn items<T>(&mut self, mut read: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<Option<T>>> {
        let mut items = Vec::new();
        if self.peek()? == b'[' {
            self.members(|r| {
                let MapOr(item) = r.map_or(&mut read)?;
                items.push(item);
                Some(())
            })?;
        } else {
            self.skip_own()?;
        }
        Some(items)
    }

    /// An entity into `w`, as [`Reader::map_or`] reads one: whether it was an object.
    fn entity_or_skip(&mut self, w: &mut WireEntity) -> Option<bool> {
        if self.peek()? == b'{' {
            self.entity(w)?;
            return Some(true);
        }
        self.skip_own()?;
        Some(false)
    }

    fn entity(&mut self, w: &mut WireEntity) -> Option<()> {
        let field = |key: &[u8]| {
            Some(match key {
                b"id" => 0,
                b"name" => 1,
                b"trace_id" => 2,
                b"parent_id" => 3,
                b"type" => 4,
                b"start_time" => 5,
                b"end_time" => 6,
                b"in_progress" => 7,
                b"error" => 8,
                b"fault" => 9,
                b"throttle" => 10,
                b"namespace" => 11,
                b"origin" => 12,
                b"user" => 13,
                b"resource_arn" => 14,
                b"http" => 15,
                b"aws" => 16,
                b"annotations" => 17,
                b"subsegments" => 18,
                b"cause" => 19,
                b"links" => 20,
                _ => return None,
            })
        };
        self.fields(field, |r, field| {
            match field {
                0 => w.id = r.scalar()?,
                1 => w.name = r.scalar()?,
                2 => w.trace_id = r.trace_id()?,
                3 => w.parent_id = r.scalar()?,
                4 => w.kind = r.scalar()?,
                5 => w.start_time = r.scalar()?,
                6 => w.end_time = r.scalar()?,
                7 => w.in_progress = Flag(r.scalar()?.truthy()),
                8 => w.error = Flag(r.scalar()?.truthy()),
                9 => w.fault = Flag(r.scalar()?.truthy()),
                10 => w.throttle = Flag(r.scalar()?.truthy()),
                11 => w.namespace = r.scalar()?,
                12 => w.origin = r.scalar()?,
                13 => w.user = r.scalar()?,
                14 => w.resource_arn = r.scalar()?,
                15 => w.http = HttpBlock::of(r.map_or(Self::http)?.0),
                16 => w.aws = AwsBlock::of(r.map_or(Self::aws)?.0),
                17 => w.annotations = r.annotations()?,
                18 => w.subsegments = r.subsegments()?,
                19 => w.cause = Exceptions::of(r.map_or(Self::cause)?.0),
                _ => w.links = Links::of(r.items(Self::link)?),
            }
            Some(())
        })
    }

    fn trace_id(&mut self) -> Option<WireTraceId> {
        Some(match self.peek()? {
            b'"' => WireTraceId::Text(TraceId::parse(self.string()?)),
            _ => WireTraceId::NotText(self.scalar()?),
        })
    }

    /// An object whose fields are all leaves: their values in the order of `names`, those not
    /// given [`Scalar::Absent`].
    fn scalars<const N: usize>(&mut self, names: [&str; N]) -> Option<[Scalar; N]> {
        let mut values = std::array::from_fn(|_| Scalar::Absent);
        self.fields(named(&names), |r, field| {
            values[field] = r.scalar()?;
            Some(())
        })?;
        Some(values)
    }

    fn http(&mut self) -> Option<WireHttp> {
        let mut http = WireHttp::default();
        self.fields(named(&["request", "response"]), |r, field| {
            if field == 0 {
                http.request = r.map_or(|r| {
                    let [method, url, user_agent, client_ip, traced] =
                        r.scalars(["method", "url", "user_agent", "client_ip", "traced"])?;
                    Some(WireHttpRequest { method, url, user_agent, client_ip, traced })
                })?;
            } else {
                http.response = r.map_or(|r| {
                    let [status] = r.scalars(["status"])?;
                    Some(WireHttpResponse { status })
                })?;
            }
            Some(())
        })?;
        Some(http)
    }

    fn aws(&mut self) -> Option<WireAws> {
        let mut aws = WireAws::default();
        self.fields(named(&["account_id", "ec2", "operation", "table_name", "queue_url"]), |r, field| {
            if field == 1 {
                aws.ec2 = r.map_or(|r| {
                    let [instance_id, availability_zone] = r.scalars(["instance_id", "availability_zone"])?;
                    Some(WireEc2 { instance_id, availability_zone })
                })?;
                return Some(());
            }
            let value = r.scalar()?;
            match field {
                0 => aws.account_id = value,
                2 => aws.operation = value,
                3 => aws.table_name = value,
                _ => aws.queue_url = value,
            }
            Some(())
        })?;
        Some(aws)
    }

    fn cause(&mut self) -> Option<WireCause> {
        let mut cause = WireCause::default();
        self.fields(named(&["exceptions"]), |r, _| {
            let items = r.items(|r| {
                let [kind, message, remote] = r.scalars(["type", "message", "remote"])?;
                Some(WireException { kind, message, remote })
            })?;
            cause.exceptions = Items(items);
            Some(())
        })?;
        Some(cause)
    }

    fn link(&mut self) -> Option<WireLink> {
        let [trace_id, id] = self.scalars(["trace_id", "id"])?;
        Some(WireLink { trace_id, id })
    }

    fn annotations(&mut self) -> Option<Annotations> {
        if self.peek()? != b'{' {
            self.skip_own()?;
            return Some(Annotations::default());
        }
        let mut annotations = Annotations::begin();
        self.members(|r| {
            let key = r.key()?;
            annotations.add(key, &r.scalar()?);
            Some(())
        })?;
        Some(annotations.finish())
    }

    fn subsegments(&mut self) -> Option<Subsegments> {
        if self.peek()? != b'[' {
            self.skip_own()?;
            return Some(Subsegments::default());
        }
        let mut array = Subsegments::begin();
        self.members(|r| {
            let mut child = WireEntity::default();
            let object = r.entity_or_skip(&mut child)?;
            array.push(object.then_some(&mut child));
            Some(())
        })?;
        Some(array)
    }
}

/// Finds a key's number among `names`, for [`Reader::fields`].
fn named<'n>(names: &'n [&str]) -> impl Fn(&[u8]) -> Option<usize> + 'n {
    move |key| names.iter().position(|name| name.as_bytes() == key)
}

/// The powers of ten a double holds exactly: Clinger's fast path needs no others.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the reader makes of `text` as a number, and where it stopped.
    fn number(text: &str) -> Option<(f64, usize)> {
        let mut r = Reader { text, b: text.as_bytes(), i: 0, depth: 0 };
        r.number().map(|n| (n, r.i))
    }

    proptest! {
        #[test]
        fn numbers_are_read_as_serde_json_reads_them(
            int in "-?(0|[1-9][0-9]{0,21})",
            fraction in proptest::option::of("[0-9]{1,21}"),
            exponent in proptest::option::of("[eE][+-]?[0-9]{1,3}"),
            tail in "[,}\\] a-df-z]{0,9}",
        ) {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            let number_text = format!("{int}{fraction}{}", exponent.clone().unwrap_or_default());
            let text = format!("{number_text}{tail}");
            let digits = number_text.bytes().take_while(|&b| b != b'e' && b != b'E').filter(u8::is_ascii_digit).count();
            // Up to 19 digits and no exponent: always read here.
            prop_assert!(number(&text).is_some() || exponent.is_some() || digits > 19, "{}", text);
            if let Some((value, end)) = number(&text) {
                let expected: f64 = serde_json::from_str(&number_text).unwrap();
                prop_assert_eq!(value.to_bits(), expected.to_bits(), "{}", text);
                // Correctly rounded, as the standard library reads a float.
                prop_assert_eq!(value.to_bits(), number_text.parse::<f64>().unwrap().to_bits(), "{}", text);
                prop_assert_eq!(end, number_text.len());
            }
        }
    }
}
