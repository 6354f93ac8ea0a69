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

use super::scan::{text, Scan};
use super::{parse_timestamp, resolve_next_link, Api};
use chrono::{DateTime, Utc};
use std::borrow::Cow;
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
    /// (see the module's documentation). One validating pass ([`super::scan`]): what is not
    /// valid JSON is `None` too, and the full parser says what is wrong with it.
    pub fn parse_raw_page<'a>(
        self,
        body: &'a [u8],
        request_url: &Url,
        max_rows: usize,
        reserved: &[&str],
    ) -> Option<RawPage<'a>> {
        let text = std::str::from_utf8(body).ok()?;
        let (id, recipient) = self.identity_fields();
        let fields = Fields {
            time: self.time_field(),
            trace_id: id,
            recipient,
            status: self.status_field(),
            reserved,
        };
        let mut scan = Scan::new(text);
        let top = read_top(&mut scan, fields, max_rows)?;
        if !scan.at_end() {
            return None;
        }
        let rows = top.rows?;
        if !rows.rows.is_empty() && !rows.any_trace_field {
            return None;
        }
        let link = top.odata4.or(top.odata3).flatten();
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

/// The page's object: its rows and next links read, every other member checked and skipped.
fn read_top<'a>(s: &mut Scan<'a>, fields: Fields<'_>, max_rows: usize) -> Option<Top<'a>> {
    s.expect(b'{')?;
    let mut top = Top::default();
    if s.eat(b'}') {
        return Some(top);
    }
    loop {
        let key = s.key()?;
        match key.as_ref() {
            "value" if top.rows.is_none() => top.rows = Some(read_rows(s, fields, max_rows)?),
            "@odata.nextLink" if top.odata4.is_none() => top.odata4 = Some(read_link(s)?),
            "odata.nextLink" if top.odata3.is_none() => top.odata3 = Some(read_link(s)?),
            "value" | "@odata.nextLink" | "odata.nextLink" | "d" | "__next" | "error"
            | "odata.error" | "ErrorCode" => return None,
            _ => s.skip_value()?,
        }
        if s.then_close(b'}')? {
            return Some(top);
        }
    }
}

/// A next link: a string, or null (`None`).
fn read_link<'a>(s: &mut Scan<'a>) -> Option<Option<Cow<'a, str>>> {
    match s.value()? {
        "null" => Some(None),
        link => text(link).map(Some),
    }
}

/// The rows' array: objects only, at most `max_rows` of them.
fn read_rows<'a>(s: &mut Scan<'a>, fields: Fields<'_>, max_rows: usize) -> Option<Rows<'a>> {
    s.expect(b'[')?;
    let mut rows = Rows {
        // A page's rows, reserved at once rather than grown.
        rows: Vec::with_capacity(max_rows.min(MAX_RESERVED_ROWS)),
        any_trace_field: false,
    };
    if s.eat(b']') {
        return Some(rows);
    }
    let mut keys = Vec::new();
    loop {
        if rows.rows.len() == max_rows {
            return None;
        }
        let (row, trace_field) = read_row(s, fields, &mut keys)?;
        rows.any_trace_field |= trace_field;
        rows.rows.push(row);
        if s.then_close(b']')? {
            return Some(rows);
        }
    }
}

/// What a key is to the engine: the index of the field read under it, or a field passed over.
#[derive(Clone, Copy)]
enum Role {
    Read(usize),
    Passed,
}

impl Fields<'_> {
    /// `None`: a key the engine writes itself, whose row is not read here.
    fn role(&self, key: &str) -> Option<Role> {
        if key.starts_with('_') || self.reserved.contains(&key) {
            return None;
        }
        Some(match key {
            k if k == self.time => Role::Read(0),
            k if k == self.trace_id => Role::Read(1),
            k if k == self.recipient => Role::Read(2),
            k if k == self.status => Role::Read(3),
            _ => Role::Passed,
        })
    }
}

/// The keys of the rows read so far, by position in the row: each key's token (when it has no
/// escape) and its role. A row's key is first compared with the token at its position
/// ([`Scan::same_key`]); only a different one is scanned and looked up.
type Keys<'a> = Vec<Option<(&'a str, Role)>>;

/// A row's fields the engine reads, and whether it has any field of a trace row (time, trace id,
/// recipient); `None` when the row is not read here (not an object, a key the engine writes
/// itself, one of the fields read twice) or is not valid JSON.
fn read_row<'a>(
    s: &mut Scan<'a>,
    f: Fields<'_>,
    keys: &mut Keys<'a>,
) -> Option<(RawRow<'a>, bool)> {
    // Time, trace id, recipient, status: `None` until the key is seen (a key seen twice is not
    // read here).
    let mut read: [Option<Option<Cow<'a, str>>>; 4] = Default::default();
    let start = s.here();
    s.expect(b'{')?;
    if !s.eat(b'}') {
        let mut n = 0;
        loop {
            let known = match keys.get(n) {
                Some(&Some((token, role))) => s.same_key(token)?.then_some(role),
                _ => None,
            };
            let role = match known {
                Some(role) => role,
                None => {
                    let (key, token) = s.key_and_token()?;
                    let role = f.role(&key)?;
                    keys.truncate(n);
                    keys.push(token.map(|t| (t, role)));
                    role
                }
            };
            match role {
                Role::Read(i) if read[i].is_some() => return None,
                Role::Read(i) => read[i] = Some(s.string_value()?),
                // Every other value checked, not read.
                Role::Passed => s.skip_value()?,
            }
            n += 1;
            if s.then_close(b'}')? {
                break;
            }
        }
    }
    let trace_field = read[..3].iter().any(Option::is_some);
    let [time, trace_id, recipient, status] = read;
    let row = RawRow {
        text: s.since(start),
        time: time.flatten().as_deref().and_then(parse_timestamp),
        trace_id: trace_id.flatten(),
        recipient: recipient.flatten(),
        status: status.flatten(),
    };
    Some((row, trace_field))
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

    /// Every fixture body, each with a byte changed at a spread of places, and every fixture
    /// row pretty-printed into the envelope: whatever is read here is valid JSON to serde_json,
    /// with the same rows (each row's text its object) and the same fields read.
    #[test]
    fn a_page_read_here_is_the_page_serde_json_reads() {
        use crate::dialect::scan::tests::{fixture_bodies, mutations};
        let mut bodies = Vec::new();
        for body in fixture_bodies() {
            let b = body.as_bytes();
            for at in (0..b.len()).step_by((b.len() / 53).max(1)) {
                bodies.extend(mutations(b, at));
            }
            if let Ok(serde_json::Value::Object(top)) = serde_json::from_str(&body) {
                if let Some(serde_json::Value::Array(rows)) = top.get("value") {
                    let pretty = rows
                        .iter()
                        .map(|r| serde_json::to_string_pretty(r).unwrap());
                    let page = format!(
                        "{{ \"value\" : [ {} ] }}",
                        pretty.collect::<Vec<_>>().join(" ,\n")
                    );
                    bodies.push(page.into_bytes());
                }
            }
            bodies.push(body.into_bytes());
        }
        let (mut read, mut rows_read) = (0, 0);
        for body in &bodies {
            for api in [Api::Graph, Api::Reporting] {
                let Some(page) = api.parse_raw_page(body, &url(), 100_000, &[]) else {
                    continue;
                };
                let valid = serde_json::from_slice::<serde::de::IgnoredAny>(body);
                assert!(valid.is_ok(), "a page read here is valid JSON: {valid:?}");
                // A number past f64's range is valid JSON that a `Value` cannot hold: such a
                // row is passed through as the API wrote it.
                let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(body) else {
                    continue;
                };
                let rows = parsed["value"].as_array().expect("rows");
                assert_eq!(rows.len(), page.rows.len());
                let (id, recipient) = api.identity_fields();
                for (raw, row) in page.rows.iter().zip(rows) {
                    let text: serde_json::Value = serde_json::from_str(raw.text).unwrap();
                    assert_eq!(&text, row);
                    let field = |name: &str| row.get(name).and_then(|v| v.as_str());
                    assert_eq!(raw.status(), field(api.status_field()));
                    assert_eq!(raw.trace_id.as_deref(), field(id));
                    assert_eq!(raw.recipient.as_deref(), field(recipient));
                    let time = field(api.time_field()).and_then(parse_timestamp);
                    assert_eq!(raw.time, time);
                }
                read += 1;
                rows_read += page.rows.len();
            }
        }
        assert!(
            read > 100 && rows_read > 1000,
            "pages read: {read}, rows: {rows_read}"
        );
    }

    /// Session 17: a row's key is first compared with the key at its place in the rows before
    /// it. Later rows whose keys differ from the first row's in every way that comparison could
    /// be fooled by read as serde_json reads them, or not at all where the first row would not be.
    #[test]
    fn keys_like_those_of_the_row_before_are_read_as_their_own() {
        let first = r#"{"MessageTraceId":"a","RecipientAddress":"x@y","Received":"2026-12-01T00:00:00","Status":"Delivered","Size":1}"#;
        let same = r#"{"MessageTraceId":"b","RecipientAddress":"x@z","Received":"2026-12-01T00:00:01","Status":"Failed","Size":2}"#;
        /// A row's trace id and status as read.
        type Read<'s> = (Option<&'s str>, Option<&'s str>);
        // (second row, what is read of it; `None`: the page is not read here)
        let cases: Vec<(&str, Option<Read>)> = vec![
            (same, Some((Some("b"), Some("Failed")))),
            // A longer key, and a shorter one, where a read key was.
            (
                r#"{"MessageTraceIdX":"c","RecipientAddress":"x@y","Received":"2026-12-01T00:00:00","Statu":"Failed"}"#,
                Some((None, None)),
            ),
            // A read key escaped: the same key.
            (
                r#"{"MessageTrace\u0049d":"d","RecipientAddress":"x@y","Received":"2026-12-01T00:00:00","St\u0061tus":"Failed"}"#,
                Some((Some("d"), Some("Failed"))),
            ),
            // Another order, fewer keys, whitespace before the colons.
            (
                r#"{ "Status" : "Expanded" , "MessageTraceId" : "e" }"#,
                Some((Some("e"), Some("Expanded"))),
            ),
            // A read key twice, at a place the first row had another key.
            (
                r#"{"MessageTraceId":"f","RecipientAddress":"x@y","MessageTraceId":"g"}"#,
                None,
            ),
            // A key the engine writes itself, at a place the first row had a passed one.
            (
                r#"{"MessageTraceId":"h","RecipientAddress":"x@y","Received":"2026-12-01T00:00:00","Status":"Failed","_time":2}"#,
                None,
            ),
            // A known key, then no colon: not JSON.
            (r#"{"MessageTraceId" "i"}"#, None),
            (r#"{"MessageTraceId""#, None),
        ];
        for (second, want) in cases {
            // The same row twice after the first: the third is read through the second's keys.
            let body = format!(r#"{{"value":[{first},{second},{second}]}}"#);
            let page = Api::Reporting.parse_raw_page(body.as_bytes(), &url(), 10, &[]);
            let got = page.as_ref().map(|p| {
                assert_eq!(p.rows.len(), 3);
                assert_eq!(p.rows[0].trace_id.as_deref(), Some("a"));
                assert_eq!(p.rows[1].text, second);
                let (two, three) = (&p.rows[1], &p.rows[2]);
                assert_eq!(two.trace_id, three.trace_id);
                assert_eq!(two.status, three.status);
                (two.trace_id.as_deref(), two.status())
            });
            assert_eq!(got, want, "{second}");
            if let Some(p) = &page {
                // What serde_json reads of the same row.
                let row: serde_json::Value = serde_json::from_str(p.rows[1].text).unwrap();
                let field = |k: &str| row.get(k).and_then(|v| v.as_str());
                assert_eq!(got.unwrap(), (field("MessageTraceId"), field("Status")));
            } else {
                let serde_reads = serde_json::from_str::<serde_json::Value>(&body).is_ok();
                let why = ["\"_time\"", "\"g\""].iter().any(|k| second.contains(k));
                assert!(!serde_reads || why, "{second}: refused only for a reason");
            }
        }
    }
}
