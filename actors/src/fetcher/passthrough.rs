//! A page made ready without building its rows (issue 18 item 2): when no pipeline hook and no
//! sink reads the events themselves (every sink takes NDJSON), each row the page delivers is
//! written as the API wrote it, with the engine's fields spliced in before its closing brace
//! (`_time`, `__isBroken`, `_update`, the static fields), and only its time, identity and
//! status are read of it ([`crate::dialect::raw`]). The same decisions as [`make_ready`] (time
//! filter, re-query skips, identity index, details backlog, oldest rows), made by the same
//! functions; the same lines but for the order of their keys (the API's, then the engine's,
//! where [`make_ready`] writes them sorted).
//!
//! A page the raw reading does not take (see its module) is made ready by [`make_ready`].

use super::*;
use crate::dialect::epoch_seconds;
use crate::dialect::raw::{RawPage, RawRow};

impl PagePlan {
    /// Whether this plan's pages may pass through: nothing reads their events.
    pub(super) fn passes_through(&self) -> bool {
        self.hooks.is_empty() && self.reads.ndjson && !self.reads.events
    }

    /// The names a row may not have for its page to pass through: the static fields'.
    fn reserved(&self) -> Vec<&str> {
        self.fields.keys().map(String::as_str).collect()
    }
}

/// `body` made ready by passing its rows through, when the plan allows it and the body is the
/// common envelope; `None`: the full parse and [`make_ready`] take it.
pub(super) fn try_ready(
    plan: &PagePlan,
    body: &[u8],
    request_url: &url::Url,
    max_rows: usize,
) -> Option<Result<Ready, FetchError>> {
    if !plan.passes_through() {
        return None;
    }
    let page = plan
        .api
        .parse_raw_page(body, request_url, max_rows, &plan.reserved())?;
    Some(ready(plan, page))
}

fn ready(plan: &PagePlan, page: RawPage<'_>) -> Result<Ready, FetchError> {
    let now = Utc::now();
    let static_fields = static_fields(plan);
    let mut lines = crate::buffers::take(lines_capacity(&page.rows, static_fields.len()));
    let mut out = Ready::new(page.rows.len(), page.next_link);
    // Indexes into `page.rows` of the oldest rows delivered, as `make_ready` keeps them.
    let mut oldest: Oldest = None;
    let mut kept = 0;
    for (i, row) in page.rows.iter().enumerate() {
        let (time, identity) = (row.time, row.identity());
        let Some(update) = keep_row(plan, &mut out, row.status(), time, identity)? else {
            continue;
        };
        if let (Some(t), Some(identity)) = (time, identity) {
            note_kept(plan, &mut out, (t, identity, row.status()), i, &mut oldest);
        }
        let is_broken = time.is_none() || identity.is_none();
        out.broken += u64::from(is_broken);
        out.updates += u64::from(update);
        write_line(
            &mut lines,
            row.text,
            epoch_seconds(time.unwrap_or(now)),
            (is_broken, update),
            &static_fields,
        );
        kept += 1;
    }
    out.oldest = oldest.map(|(t, at)| {
        let ids = at
            .into_iter()
            .filter_map(|i| page.rows[i].identity())
            .map(|(id, recipient)| (id.to_owned(), recipient.to_owned()))
            .collect();
        (t, ids)
    });
    out.rows = kept;
    if kept > 0 {
        out.batch = Some(Batch {
            source: plan.input_id.clone(),
            // Set by the slice, which knows the cursor and the URL.
            page: None,
            events: Arc::new(Vec::new()),
            encoded: Some(Arc::new(Ndjson::from_buffer(lines))),
            // Decided by the slice, which knows whether the next page is in.
            sync: true,
        });
    } else {
        crate::buffers::give(lines);
    }
    Ok(out)
}

/// The most bytes the page's lines take: every row's text and the engine's fields. Reserved at
/// once, the buffer is never grown (and copied, and faulted in again) while the page is written:
/// growing it from empty cost a sixth of the engine's CPU against nginx (perf, session 11).
fn lines_capacity(rows: &[RawRow<'_>], static_fields: usize) -> usize {
    /// `,"_time":` and the longest `f64` (24), `,"__isBroken":true`, `,"_update":true`, `}\n`.
    const ENGINE_FIELDS: usize = 9 + 24 + 18 + 15 + 2;
    rows.iter()
        .map(|r| r.text.len() + ENGINE_FIELDS + static_fields)
        .sum()
}

/// The static fields as `,"key":value` text, written once a page.
fn static_fields(plan: &PagePlan) -> Vec<u8> {
    let mut text = Vec::new();
    for (k, v) in &plan.fields {
        text.push(b',');
        // A string and a JSON value always serialize.
        serde_json::to_writer(&mut text, k).expect("a key serializes");
        text.push(b':');
        serde_json::to_writer(&mut text, v).expect("a value serializes");
    }
    text
}

/// One NDJSON line: the row's object with the engine's fields before its closing brace.
fn write_line(
    out: &mut Vec<u8>,
    row: &str,
    time: f64,
    (is_broken, update): (bool, bool),
    static_fields: &[u8],
) {
    // The raw reading took only objects: `{`, the fields, `}`.
    let inner = row[1..row.len() - 1].trim_ascii();
    out.push(b'{');
    out.extend_from_slice(inner.as_bytes());
    if !inner.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"_time\":");
    serde_json::to_writer(&mut *out, &time).expect("a number serializes");
    if is_broken {
        out.extend_from_slice(b",\"__isBroken\":true");
    }
    if update {
        out.extend_from_slice(b",\"_update\":true");
    }
    out.extend_from_slice(static_fields);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::details::DetailsMode;

    fn plan(ndjson_only: bool) -> PagePlan {
        let t = |s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        PagePlan {
            api: Api::Graph,
            input_id: Arc::from("s"),
            fields: serde_json::json!({"tenant": "contoso", "n": [1, 2]})
                .as_object()
                .unwrap()
                .clone(),
            filter: Some((t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"))),
            query_end: None,
            skip: Vec::new(),
            hooks: Vec::new(),
            reads: Reads {
                events: !ndjson_only,
                ndjson: true,
            },
            details: DetailsMode::NotDelivered,
            index: None,
        }
    }

    fn lines(ready: &Ready) -> Vec<serde_json::Value> {
        let batch = ready.batch.as_ref().expect("a batch");
        let text = batch.ndjson(&mut Vec::new()).to_vec();
        text.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_slice(l).expect("a JSON line");
                // A broken row's `_time` is the moment it was made ready.
                if v.get("__isBroken").is_some() {
                    v["_time"] = serde_json::Value::Null;
                }
                v
            })
            .collect()
    }

    /// What `make_ready` makes of a page, and the pass-through the same: the same counts,
    /// backlog entries, oldest rows and lines (as JSON values), for rows in and out of the
    /// slice, broken ones and escaped text.
    #[test]
    fn a_page_passed_through_is_the_page_make_ready_makes() {
        let row = |id: &str, at: &str, status: &str| serde_json::json!({"id": id, "recipientAddress": "R@x", "receivedDateTime": at, "status": status, "subject": "é \"q\" \u{1F600}"});
        let body = serde_json::json!({"value": [
            row("a", "2026-01-01T10:00:00.1234567Z", "failed"),
            row("b", "2026-01-01T09:00:00Z", "Delivered"),
            row("c", "2026-01-01T09:00:00Z", "expanded"),
            row("d", "2026-01-03T08:00:00Z", "failed"),
            {"id": "e", "status": "failed"},
            {},
        ], "@odata.nextLink": "https://graph.microsoft.com/v1.0/x?$skiptoken=1"})
        .to_string();
        let url = url::Url::parse("https://graph.microsoft.com/v1.0/x").unwrap();
        let page = Api::Graph.parse_page(body.as_bytes(), &url).unwrap();
        let full = make_ready(&plan(false), page, Arc::from("u")).unwrap();
        let passed = try_ready(&plan(true), body.as_bytes(), &url, 10)
            .expect("passed through")
            .unwrap();
        let counts = |r: &Ready| {
            (
                r.parsed, r.rows, r.broken, r.dropped, r.skipped, r.known, r.updates,
            )
        };
        assert_eq!(counts(&passed), counts(&full));
        assert_eq!(counts(&passed), (6, 5, 2, 1, 0, 0, 0));
        assert_eq!(passed.details, full.details);
        assert_eq!(passed.oldest, full.oldest);
        assert_eq!(passed.next_link, full.next_link);
        assert_eq!(lines(&passed), lines(&full));
        assert!(passed.batch.as_ref().unwrap().events.is_empty());
    }

    #[test]
    fn a_page_a_sink_or_hook_reads_as_events_is_not_passed_through() {
        let body = br#"{"value":[{"id":"a"}]}"#;
        let url = url::Url::parse("https://graph.microsoft.com/v1.0/x").unwrap();
        assert!(try_ready(&plan(false), body, &url, 10).is_none());
        assert!(try_ready(&plan(true), body, &url, 10).is_some());
        // A row with a static field's name keeps the full path (its value would be replaced).
        assert!(try_ready(&plan(true), br#"{"value":[{"tenant":"x"}]}"#, &url, 10).is_none());
    }

    #[test]
    fn a_line_is_the_row_with_the_engines_fields_before_its_brace() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            r#"{"id":"t", "n":1 }"#,
            1.5,
            (false, true),
            b",\"k\":\"v\"",
        );
        write_line(&mut out, "{ }", 2.0, (true, false), b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":\"t\", \"n\":1,\"_time\":1.5,\"_update\":true,\"k\":\"v\"}\n\
             {\"_time\":2.0,\"__isBroken\":true}\n"
        );
    }
}
