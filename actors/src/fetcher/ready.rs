//! What a parsed page becomes for its sinks: events, pipeline hooks, NDJSON (pure).

use super::*;
use crate::dialect::epoch_seconds;

/// Makes a parsed page ready on a thread of the blocking pool (pages that must be made in order:
/// see [`PagePlan::index`]).
pub(super) async fn make_ready_off_thread(
    shared: &Shared,
    plan: Arc<PagePlan>,
    page: Page,
    url: &str,
) -> Result<Ready, FetchError> {
    let source: Arc<str> = Arc::from(url);
    shared
        .off_thread(move || make_ready(&plan, page, source))
        .await
        .unwrap_or(Err(FetchError::Stopping))
}

/// How a page's rows become what its sinks read: fixed for a run of pages (it changes only at a
/// re-query, which drops the pages fetched ahead), so that the thread that parses a page can
/// make it ready too ([`make_ready`]).
pub(super) struct PagePlan {
    pub(super) api: Api,
    /// The source id.
    pub(super) input_id: Arc<str>,
    /// The source's static fields.
    pub(super) fields: serde_json::Map<String, serde_json::Value>,
    /// The slice, for the time filter; `None` when the filter is off.
    pub(super) filter: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The end instant of a re-query, and the rows delivered at it before the re-query: skipped.
    pub(super) query_end: Option<DateTime<Utc>>,
    pub(super) skip: Vec<(String, String)>,
    pub(super) hooks: Vec<crate::hook::Hook>,
    pub(super) reads: Reads,
    /// Which rows have their details fetched: entered in the details backlog with the page.
    pub(super) details: crate::dialect::details::DetailsMode,
    /// The identity index (the source re-reads its windows) and the source id: each page is
    /// checked against the index as committed by the pages before it, so such pages are made
    /// ready in order, after the page before them is committed, never ahead.
    pub(super) index: Option<(Store, String)>,
}

impl PagePlan {
    pub(super) fn new(env: &FetcherEnv, task: &SliceTask, track: &Progress) -> Arc<PagePlan> {
        let spec = &env.spec;
        Arc::new(PagePlan {
            api: spec.api,
            input_id: Arc::from(spec.id.as_str()),
            fields: spec.fields.clone(),
            filter: (!spec.disable_time_filter).then_some((task.start, task.end)),
            query_end: track.query_end,
            skip: track.skip.clone(),
            hooks: env.hooks.clone(),
            reads: env.reads,
            details: spec.details,
            index: spec
                .window
                .reread
                .is_some()
                .then(|| (env.store.clone(), spec.id.clone())),
        })
    }
}

impl PagePlan {
    /// How detail records become what the sinks read: the source's static fields, hooks and
    /// reads; no time filter, re-query or identity index (the details backlog has its own).
    pub(super) fn for_details(env: &FetcherEnv) -> PagePlan {
        let spec = &env.spec;
        PagePlan {
            api: spec.api,
            input_id: Arc::from(spec.id.as_str()),
            fields: spec.fields.clone(),
            filter: None,
            query_end: None,
            skip: Vec::new(),
            hooks: env.hooks.clone(),
            reads: env.reads,
            details: crate::dialect::details::DetailsMode::None,
            index: None,
        }
    }
}

/// A fetched page: parsed only, or already made ready (with a [`PagePlan`] that allows it).
pub(super) enum Parsed {
    Rows(Page),
    Ready(Result<Ready, FetchError>),
}

impl Parsed {
    pub(super) fn next_link(&self) -> Option<&url::Url> {
        match self {
            Parsed::Rows(page) => page.next_link.as_ref(),
            Parsed::Ready(Ok(ready)) => ready.next_link.as_ref(),
            Parsed::Ready(Err(_)) => None,
        }
    }
}

/// A page ready for its sinks: its batch, and what the job record and the checkpoint need.
pub(super) struct Ready {
    /// What the hooks left of the events, encoded for the sinks; `None` when nothing is left.
    pub(super) batch: Option<Batch>,
    /// Rows in the page as the API sent them.
    pub(super) parsed: usize,
    /// Events built (before the hooks).
    pub(super) rows: u64,
    /// Events flagged `__isBroken`: no readable time or identity, or bytes that were not UTF-8.
    pub(super) broken: u64,
    /// Rows outside the slice (time filter).
    pub(super) dropped: u64,
    /// Rows skipped after a re-query (delivered before it).
    pub(super) skipped: u64,
    /// Rows skipped because the identity index has them with the same status.
    pub(super) known: u64,
    /// Rows emitted as updates (the identity index has them with another status).
    pub(super) updates: u64,
    /// Identity index entries for the rows emitted (only when re-reading is on).
    pub(super) seen: Vec<SeenEntry>,
    /// Details backlog entries for the rows emitted whose details are to be fetched.
    pub(super) details: Vec<DetailEntry>,
    /// The oldest instant among the rows emitted, and their identities (for re-queries).
    pub(super) oldest: Option<(DateTime<Utc>, Vec<Identity>)>,
    /// The page's next link.
    pub(super) next_link: Option<url::Url>,
}

/// Turns a parsed page's rows into events (time filter, re-query skips, identity index, `_time`,
/// static fields), runs the pipeline hooks on them, and encodes them for the sinks that take
/// NDJSON; when no sink reads the events themselves, they are freed here, on the thread that
/// allocated them. `source` is the page's URL without query.
pub(super) fn make_ready(
    plan: &PagePlan,
    page: Page,
    source: Arc<str>,
) -> Result<Ready, FetchError> {
    let api = plan.api;
    let is_last = page.next_link.is_none();
    let now = Utc::now();
    let mut out = Ready::new(page.rows.len(), page.next_link);
    let (rows, repaired) = (page.rows, page.repaired);
    let mut events = Vec::with_capacity(rows.len());
    // The oldest rows of the page delivered (indexes into `events`), for re-queries: their
    // identities are copied once, at the end, not for every row (rows come newest first, so
    // nearly every row is the oldest so far when it is seen).
    let mut oldest: Oldest = None;
    // Each row becomes its event's fields as it is (moved, not copied).
    for mut fields in rows {
        let time = api.row_time(&fields);
        let identity = api.row_identity_ref(&fields);
        let status = fields.get(api.status_field()).and_then(|s| s.as_str());
        let Some(update) = keep_row(plan, &mut out, status, time, identity)? else {
            continue;
        };
        let is_broken = time.is_none()
            || identity.is_none()
            || (repaired && fields.values().any(holds_replacement));
        if let (Some(t), Some(identity)) = (time, identity) {
            note_kept(
                plan,
                &mut out,
                (t, identity, status),
                events.len(),
                &mut oldest,
            );
        }
        fields.insert("_time".into(), epoch_seconds(time.unwrap_or(now)).into());
        if is_broken {
            out.broken += 1;
            fields.insert("__isBroken".into(), true.into());
        }
        if update {
            out.updates += 1;
            fields.insert("_update".into(), true.into());
        }
        events.push(Event {
            fields,
            meta: EventMeta {
                input_id: plan.input_id.clone(),
                source: source.clone(),
                is_final: false,
                is_broken,
            },
        });
    }
    out.oldest = oldest.map(|(t, at)| {
        let ids = at
            .into_iter()
            .filter_map(|i| api.row_identity(&events[i].fields))
            .collect();
        (t, ids)
    });
    out.batch = into_batch(plan, events, is_last, &mut out.rows)?;
    Ok(out)
}

impl Ready {
    /// A page of `parsed` rows, nothing of it delivered yet.
    pub(super) fn new(parsed: usize, next_link: Option<url::Url>) -> Ready {
        Ready {
            batch: None,
            parsed,
            rows: 0,
            broken: 0,
            dropped: 0,
            skipped: 0,
            known: 0,
            updates: 0,
            seen: Vec::new(),
            details: Vec::new(),
            oldest: None,
            next_link,
        }
    }
}

/// The oldest instant of the rows a page delivers, and their indexes among its events.
pub(super) type Oldest = Option<(DateTime<Utc>, Vec<usize>)>;

/// A row [`keep_row`] kept, with its time and identity, as event number `at`: it enters the
/// details backlog if its details are wanted, and the page's oldest rows if it is one of them.
pub(super) fn note_kept(
    plan: &PagePlan,
    out: &mut Ready,
    (t, (trace_id, recipient), status): (DateTime<Utc>, (&str, &str), Option<&str>),
    at: usize,
    oldest: &mut Oldest,
) {
    let status = status.unwrap_or_default();
    if plan.details.wants(status) {
        out.details.push(DetailEntry {
            received: t,
            trace_id: trace_id.to_owned(),
            recipient: recipient.to_owned(),
            status: status.to_owned(),
        });
    }
    match oldest {
        Some((o, _)) if t > *o => {}
        Some((o, at_oldest)) if t == *o => at_oldest.push(at),
        _ => *oldest = Some((t, vec![at])),
    }
}

/// Whether a row is delivered (`Some(update)`: with `_update` when the identity index knew it
/// with another status) or not (`None`: outside the slice, delivered before a re-query, or
/// known with the same status), counted in `out`; a row it keeps is entered in `out.seen`.
pub(super) fn keep_row(
    plan: &PagePlan,
    out: &mut Ready,
    status: Option<&str>,
    time: Option<DateTime<Utc>>,
    identity: Option<(&str, &str)>,
) -> Result<Option<bool>, FetchError> {
    if let (Some(t), Some((start, end))) = (time, plan.filter) {
        if t < start || t >= end {
            out.dropped += 1;
            return Ok(None);
        }
    }
    // A re-query asks up to its end: a row after it was delivered before the re-query (a
    // server that ignores the filter sends it again).
    if let (Some(t), Some(end)) = (time, plan.query_end) {
        if t > end {
            out.skipped += 1;
            return Ok(None);
        }
    }
    let (Some(t), Some((trace_id, recipient))) = (time, identity) else {
        return Ok(Some(false));
    };
    if !plan.skip.is_empty()
        && Some(t) == plan.query_end
        && plan
            .skip
            .iter()
            .any(|(a, b)| a == trace_id && b == recipient)
    {
        out.skipped += 1;
        return Ok(None);
    }
    let Some((store, source_id)) = &plan.index else {
        return Ok(Some(false));
    };
    let status = status.unwrap_or_default().to_owned();
    let entry = SeenEntry {
        time: t,
        trace_id: trace_id.to_owned(),
        recipient: recipient.to_owned(),
        status,
    };
    let update = match store
        .seen_status(source_id, &entry)
        .map_err(FetchError::IdentityIndex)?
    {
        Some(prev) if prev.eq_ignore_ascii_case(&entry.status) => {
            out.known += 1;
            return Ok(None);
        }
        Some(_) => true,
        None => false,
    };
    out.seen.push(entry);
    Ok(Some(update))
}

/// The page's events as the sinks take them: the static fields added (last, so that the
/// identities read before are the API's, whatever they name), the last event of the last page
/// marked final, the hooks run, NDJSON encoded for the sinks that read it and the events freed
/// when no sink reads them. `None` when no event is left. `rows`: the events before the hooks.
pub(super) fn into_batch(
    plan: &PagePlan,
    mut events: Vec<Event>,
    is_last: bool,
    rows: &mut u64,
) -> Result<Option<Batch>, FetchError> {
    if !plan.fields.is_empty() {
        for e in &mut events {
            for (k, v) in &plan.fields {
                e.fields.insert(k.clone(), v.clone());
            }
        }
    }
    if is_last {
        if let Some(e) = events.last_mut() {
            e.meta.is_final = true;
        }
    }
    *rows = events.len() as u64;
    if events.is_empty() {
        return Ok(None);
    }
    crate::hook::apply(&plan.hooks, &mut events)?;
    if events.is_empty() {
        return Ok(None);
    }
    let encoded = plan.reads.ndjson.then(|| Arc::new(Ndjson::encode(&events)));
    if !plan.reads.events {
        // Freed here, where they were allocated: nothing reads them.
        events = Vec::new();
    }
    Ok(Some(Batch {
        source: plan.input_id.clone(),
        // Set by the slice, which knows the cursor and the URL.
        page: None,
        events: Arc::new(events),
        encoded,
        // Decided by the slice, which knows whether the next page is in.
        sync: true,
    }))
}

/// Whether a value holds U+FFFD, the character a byte that was not UTF-8 became.
pub(super) fn holds_replacement(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\u{FFFD}'),
        serde_json::Value::Array(items) => items.iter().any(holds_replacement),
        serde_json::Value::Object(fields) => fields.values().any(holds_replacement),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(details: crate::dialect::details::DetailsMode) -> PagePlan {
        let t = |s| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        PagePlan {
            api: Api::Graph,
            input_id: Arc::from("s"),
            fields: Default::default(),
            filter: Some((t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"))),
            query_end: None,
            skip: Vec::new(),
            hooks: Vec::new(),
            reads: Reads {
                events: true,
                ndjson: false,
            },
            details,
            index: None,
        }
    }

    #[test]
    fn rows_whose_details_are_wanted_enter_the_backlog_with_their_page() {
        let row = |id: &str, at: &str, status: &str| serde_json::json!({"id": id, "recipientAddress": "R@x", "receivedDateTime": at, "status": status});
        let body = serde_json::json!({"value": [
            row("a", "2026-01-01T10:00:00Z", "failed"),
            row("b", "2026-01-01T09:00:00Z", "Delivered"),
            row("c", "2026-01-01T08:00:00Z", "expanded"),
            row("d", "2026-01-03T08:00:00Z", "failed"),
            {"id": "e", "status": "failed"},
            row("f", "2026-01-01T07:00:00Z", "quarantined"),
        ]});
        let url = url::Url::parse("https://graph.microsoft.com/v1.0/x").unwrap();
        let page = Api::Graph
            .parse_page(body.to_string().as_bytes(), &url)
            .unwrap();
        let ready = |mode| make_ready(&plan(mode), page.clone(), Arc::from("u")).unwrap();
        use crate::dialect::details::DetailsMode;
        let entries = ready(DetailsMode::NotDelivered).details;
        // Not the delivered or expanded row, nor the one outside the slice, nor the broken one.
        let ids: Vec<&str> = entries.iter().map(|e| e.trace_id.as_str()).collect();
        assert_eq!(ids, ["a", "f"]);
        assert_eq!(entries[0].recipient, "R@x");
        assert_eq!(entries[0].status, "failed");
        assert_eq!(
            entries[0].received.to_rfc3339(),
            "2026-01-01T10:00:00+00:00"
        );
        assert_eq!(ready(DetailsMode::All).details.len(), 4);
        assert!(ready(DetailsMode::None).details.is_empty());
    }

    #[test]
    pub(super) fn epoch_has_fractions() {
        let t = DateTime::parse_from_rfc3339("2022-09-05T18:10:13.4907658Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!((epoch_seconds(t) - 1_662_401_413.490_765).abs() < 1e-5);
    }
}
