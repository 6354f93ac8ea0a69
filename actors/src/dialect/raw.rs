//! A summary page read without building its rows: each row stays the bytes the API wrote, and
//! only what the engine decides on is read of it (its received time, its identity, its status).
//! For the pages no hook and no sink reads as events (the fetcher's `passthrough.rs`), whose
//! rows go to the sinks as they came, with the engine's fields spliced in.
//!
//! Only the common envelope is read here: `{"value":[…]}` with `@odata.nextLink` or
//! `odata.nextLink`. Anything else is `None`, and the page takes [`Api::parse_page_of_at_most`],
//! which reads or refuses it with its reasons: verbose OData (`d`, `__next`, `__metadata`), an
//! error document, bytes that are not UTF-8, a row that is not an object, more rows than were
//! asked for, a row with a key the engine writes itself (`_…`, a static field), a row with one
//! of the fields read here twice, a page none of whose rows has any field of a trace row.

use super::{parse_timestamp, resolve_next_link, Api};
use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use url::Url;

/// The most rows [`Api::parse_raw_page`] reserves room for before reading them: the largest page
/// either API serves.
const MAX_RESERVED_ROWS: usize = 5000;

/// A page whose rows are the body's own bytes.
#[derive(Debug)]
pub struct RawPage<'a> {
    /// The rows, in the body's order.
    pub rows: Vec<RawRow<'a>>,
    /// The next page, resolved as [`Api::parse_page`] resolves it; `None` on the last page.
    pub next_link: Option<Url>,
}

/// One row: its JSON object as the body has it, and the fields the engine reads.
#[derive(Debug)]
pub struct RawRow<'a> {
    /// The row's JSON object, exactly as in the body.
    pub text: &'a str,
    /// The received time, when it is a string that parses.
    pub time: Option<DateTime<Utc>>,
    trace_id: Option<Cow<'a, str>>,
    recipient: Option<Cow<'a, str>>,
    status: Option<Cow<'a, str>>,
}

impl RawRow<'_> {
    /// The identity (trace id, recipient), as [`Api::row_identity_ref`] reads it: both fields
    /// non-empty strings.
    pub fn identity(&self) -> Option<(&str, &str)> {
        fn non_empty<'s>(f: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
            f.as_deref().filter(|s| !s.is_empty())
        }
        Some((non_empty(&self.trace_id)?, non_empty(&self.recipient)?))
    }

    /// The delivery status, when it is a string.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }
}

impl Api {
    /// Reads `body` as a [`RawPage`] of at most `max_rows` rows, none of which has a key in
    /// `reserved` or starting with `_`; `None` when the body is anything but the common envelope
    /// (see the module's documentation).
    pub fn parse_raw_page<'a>(
        self,
        body: &'a [u8],
        request_url: &Url,
        max_rows: usize,
        reserved: &[&str],
    ) -> Option<RawPage<'a>> {
        let text = std::str::from_utf8(body).ok()?;
        let mut de = serde_json::Deserializer::from_str(text);
        let envelope = TopSeed {
            api: self,
            max_rows,
            reserved,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        let rows = envelope.rows?;
        if !rows.rows.is_empty() && !rows.any_trace_field {
            return None;
        }
        let link = envelope.odata4.or(envelope.odata3).flatten();
        let next_link = match link.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(link) => Some(resolve_next_link(link, request_url).ok()?),
        };
        Some(RawPage {
            rows: rows.rows,
            next_link,
        })
    }
}

/// What a row's fields are to the engine.
#[derive(Clone, Copy)]
struct Fields<'r> {
    time: &'static str,
    trace_id: &'static str,
    recipient: &'static str,
    status: &'static str,
    reserved: &'r [&'r str],
}

struct TopSeed<'r> {
    api: Api,
    max_rows: usize,
    reserved: &'r [&'r str],
}

#[derive(Default)]
struct Top<'a> {
    rows: Option<Rows<'a>>,
    /// `@odata.nextLink`: `Some(None)` when it is null.
    odata4: Option<Option<Cow<'a, str>>>,
    /// `odata.nextLink`.
    odata3: Option<Option<Cow<'a, str>>>,
}

#[derive(Default)]
struct Rows<'a> {
    rows: Vec<RawRow<'a>>,
    any_trace_field: bool,
}

/// The reason a body is not read here; the full parser says what it is.
fn other<E: serde::de::Error>() -> E {
    E::custom("not the common envelope")
}

impl<'de, 'r> DeserializeSeed<'de> for TopSeed<'r> {
    type Value = Top<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Top<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 'r> Visitor<'de> for TopSeed<'r> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a page")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let (id, recipient) = self.api.identity_fields();
        let fields = Fields {
            time: self.api.time_field(),
            trace_id: id,
            recipient,
            status: self.api.status_field(),
            reserved: self.reserved,
        };
        let mut top = Top::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key.0.as_ref() {
                "value" if top.rows.is_none() => {
                    top.rows = Some(map.next_value_seed(RowsSeed {
                        fields,
                        max_rows: self.max_rows,
                    })?)
                }
                "@odata.nextLink" if top.odata4.is_none() => {
                    top.odata4 = Some(map.next_value::<Option<Text>>()?.map(|t| t.0))
                }
                "odata.nextLink" if top.odata3.is_none() => {
                    top.odata3 = Some(map.next_value::<Option<Text>>()?.map(|t| t.0))
                }
                "value" | "@odata.nextLink" | "odata.nextLink" | "d" | "__next" | "error"
                | "odata.error" | "ErrorCode" => return Err(other()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

struct RowsSeed<'r> {
    fields: Fields<'r>,
    max_rows: usize,
}

impl<'de, 'r> DeserializeSeed<'de> for RowsSeed<'r> {
    type Value = Rows<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Rows<'de>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'r> Visitor<'de> for RowsSeed<'r> {
    type Value = Rows<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows<'de>, A::Error> {
        let mut rows = Rows {
            // serde_json gives no size hint: a page's rows, reserved at once rather than grown.
            rows: Vec::with_capacity(self.max_rows.min(MAX_RESERVED_ROWS)),
            any_trace_field: false,
        };
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if rows.rows.len() == self.max_rows {
                return Err(other());
            }
            let (row, trace_field) =
                read_row(raw.get(), self.fields).ok_or_else(other::<A::Error>)?;
            rows.any_trace_field |= trace_field;
            rows.rows.push(row);
        }
        Ok(rows)
    }
}

/// A row's fields the engine reads, and whether it has any field of a trace row (time, trace id,
/// recipient); `None` when the row is not read here (a key the engine writes itself, one of the
/// fields read twice). `text` is valid JSON (serde_json took it as a `RawValue`), so its
/// members are found by a scan, not parsed again ([`super::members`]).
fn read_row<'de>(text: &'de str, f: Fields<'_>) -> Option<(RawRow<'de>, bool)> {
    // Each slot: `None` until its key is seen (a key seen twice is not read here).
    let [mut time, mut trace_id, mut recipient, mut status]: [Option<Option<Cow<'de, str>>>; 4] =
        Default::default();
    let mut members = super::members::members(text);
    for (key, value) in &mut members {
        let key = key.as_ref();
        if key.starts_with('_') || f.reserved.contains(&key) {
            return None;
        }
        let slot = match key {
            k if k == f.time => &mut time,
            k if k == f.trace_id => &mut trace_id,
            k if k == f.recipient => &mut recipient,
            k if k == f.status => &mut status,
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(super::members::text(value));
    }
    if !members.closed() {
        return None;
    }
    let trace_field = time.is_some() || trace_id.is_some() || recipient.is_some();
    let row = RawRow {
        text,
        time: time.flatten().as_deref().and_then(parse_timestamp),
        trace_id: trace_id.flatten(),
        recipient: recipient.flatten(),
        status: status.flatten(),
    };
    Some((row, trace_field))
}

/// A key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(Key)
    }
}

/// A string value, borrowed from the body unless it has escapes (a link).
struct Text<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(Text)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces?$top=2")
            .unwrap()
    }

    fn raw<'a>(body: &'a str, max: usize, reserved: &[&str]) -> Option<RawPage<'a>> {
        Api::Graph.parse_raw_page(body.as_bytes(), &url(), max, reserved)
    }

    const ROW: &str = r#"{"id":"t1","recipientAddress":"a@b.c","receivedDateTime":"2026-01-20T10:00:00Z","status":"Failed","subject":"x \"y\" \u00e9"}"#;

    #[test]
    fn the_common_envelope_keeps_each_rows_bytes_and_reads_its_fields() {
        let body = format!(
            r#"{{"@odata.context":"c","value":[{ROW}, {{"id":"t\u0032","recipientAddress":"","status":3}}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces?$skiptoken=2"}}"#
        );
        let page = raw(&body, 2, &[]).expect("passed through");
        assert_eq!(page.rows[0].text, ROW);
        assert_eq!(page.rows[0].identity(), Some(("t1", "a@b.c")));
        assert_eq!(page.rows[0].status(), Some("Failed"));
        assert_eq!(
            page.rows[0].time,
            Some("2026-01-20T10:00:00Z".parse().unwrap())
        );
        // An escaped value is read unescaped; an empty recipient is no identity; a number is no
        // status; no time is no time.
        assert_eq!(page.rows[1].trace_id.as_deref(), Some("t2"));
        assert_eq!(page.rows[1].identity(), None);
        assert_eq!(page.rows[1].status(), None);
        assert_eq!(page.rows[1].time, None);
        assert!(page.next_link.unwrap().as_str().ends_with("$skiptoken=2"));
    }

    #[test]
    fn a_null_or_empty_next_link_is_the_last_page() {
        for link in [
            r#","@odata.nextLink":null"#,
            r#","odata.nextLink":"  ""#,
            "",
        ] {
            let body = format!(r#"{{"value":[{ROW}]{link}}}"#);
            assert_eq!(raw(&body, 5, &[]).unwrap().next_link, None, "{link}");
        }
    }

    /// Whatever the full parser reads differently, or refuses, is not read here.
    #[test]
    fn anything_but_the_common_envelope_takes_the_full_parser() {
        let not = [
            "".to_owned(),
            "[]".to_owned(),
            format!(r#"{{"d":{{"results":[{ROW}]}}}}"#),
            format!(r#"{{"value":[{ROW}],"__next":"x"}}"#),
            format!(r#"{{"value":[{ROW}],"error":{{}}}}"#),
            format!(r#"{{"value":[{ROW}],"@odata.nextLink":7}}"#),
            format!(r#"{{"value":[{ROW}],"@odata.nextLink":"https://elsewhere.example/x"}}"#),
            format!(r#"{{"value":[{ROW}],"value":[]}}"#),
            format!(r#"{{"value":[{ROW},{ROW},{ROW}]}}"#),
            r#"{"value":[{"__metadata":{},"id":"t"}]}"#.to_owned(),
            r#"{"value":[{"_time":1,"id":"t"}]}"#.to_owned(),
            r#"{"value":[{"id":"t","id":"u"}]}"#.to_owned(),
            r#"{"value":[{},{}]}"#.to_owned(),
            r#"{"value":[1]}"#.to_owned(),
            format!(r#"{{"value":[{ROW}]}} {{}}"#),
            format!(r#"{{"value":[{ROW}]"#),
        ];
        for body in &not {
            assert!(raw(body, 2, &[]).is_none(), "{body}");
        }
        // A static field's name.
        assert!(raw(&format!(r#"{{"value":[{ROW}]}}"#), 2, &["subject"]).is_none());
        assert!(raw(&format!(r#"{{"value":[{ROW}]}}"#), 2, &["tenant"]).is_some());
        // Bytes that are not UTF-8 (the full parser repairs them).
        let mut bad = format!(r#"{{"value":[{ROW}]}}"#).into_bytes();
        bad[40] = 0xff;
        assert!(Api::Graph.parse_raw_page(&bad, &url(), 2, &[]).is_none());
    }
}
