//! The `azure_logs_ingestion` sink: a page's events POSTed to the Azure Monitor Logs Ingestion
//! API (a Log Analytics workspace, and so Microsoft Sentinel), through a data collection rule.
//!
//! Each call is `POST {endpoint}/dataCollectionRules/{dcr_id}/streams/{stream}?api-version=2023-01-01`
//! with `Authorization: Bearer` a token for `<audience>/.default` (the sink's own `[auth]`, through
//! the same [`AuthToken`] machinery as the sources: cached, refreshed ahead of expiry, asked of the
//! configured `login_url` only), `Content-Type: application/json`, optionally
//! `Content-Encoding: gzip`, and a JSON array of events as the body; the API answers 204.
//!
//! - **Events**: exactly what the file sink writes of a row (its own fields with their names,
//!   `_time`, the source's static fields) plus `TimeGenerated`, the row's `_time` as ISO 8601 UTC,
//!   which Log Analytics tables require ([`encode_event`]). A field whose JSON value is over
//!   64 KB is truncated by Azure: the sink warns once per field name.
//! - **Batches**: at most [`MAX_CALL_BYTES`] of JSON per call before compression, never more
//!   ([`batches`]). An event that alone is larger has its string values over 64 KB cut to 64 KB
//!   (what Azure would keep of them anyway) with a warning; one still too large then is dropped
//!   with an error that counts it: the API could never take it, and refusing the page would stop
//!   its source for good.
//! - **Answers**: 413 splits the batch in two and sends the halves; 408, 429 and 5xx (and
//!   connection failures, timeouts) are retried per the sink's retry policy
//!   ([`super::http::default_retry`]) with a `Retry-After` honoured up to [`MAX_RETRY_AFTER`];
//!   a 401 drops the token and tries once more with a new one; 401 and 403 then fail with the
//!   role the application needs ("Monitoring Metrics Publisher on the data collection rule").
//! - **Delivery**: the page is acknowledged (and so checkpointed) only once every one of its
//!   batches was accepted. A failed page is delivered again whole by the next run (the batches
//!   accepted before the failure are skipped when the same page is given again in this process);
//!   after a crash they are sent again. The API has no deduplication: rows of the page that was
//!   in flight may then be in the table twice, as with the other sinks.

use super::http::{default_retry, failed_try, gzip, post, retry_wait};
use crate::config::{AzureLogsConfig, Compression};
use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use msgtrace_actors::auth::{AuthHeader, AuthToken, GetAuthHeader, InvalidateToken};
use msgtrace_actors::dialect::Row;
use msgtrace_actors::event::{Batch, Event};
use msgtrace_actors::retry::RetryPolicy;
use msgtrace_actors::sink::{Sink, SinkError};
use msgtrace_actors::spec::AuthSpec;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, error, warn};

/// The most JSON one call may carry, before compression (the API's limit: 1 MB).
pub const MAX_CALL_BYTES: usize = 1_000_000;

/// Field values larger than this (in JSON) are truncated by Azure.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The longest `Retry-After` the sink waits for (each wait is one retry of its policy); longer
/// ones fall back to the policy's backoff.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The role the sink's application needs.
pub const ROLE: &str = "Monitoring Metrics Publisher on the data collection rule";

/// Events POSTed to the Logs Ingestion API (`type = "azure_logs_ingestion"`).
pub struct AzureLogsSink {
    name: String,
    /// The ingestion URL of the rule's stream.
    url: String,
    /// The URL without its query, for messages.
    shown_url: String,
    dcr_id: String,
    compression: Compression,
    /// The sink's token request (secrets resolved, certificate loaded).
    auth: AuthSpec,
    /// The sink's own token cache, started on the sink's thread at its first delivery.
    tokens: Option<Addr<AuthToken>>,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// Fields already warned about for a value over [`MAX_FIELD_BYTES`].
    warned_fields: HashSet<String>,
    /// Whether events without `_time` were warned about.
    warned_no_time: bool,
    /// Events dropped since the start because they were too large for any call.
    dropped: u64,
    /// The page that failed part way and how many of its events were accepted (see
    /// [`super::HttpSink`]: a page given again in this process skips them).
    partly_sent: Option<(Weak<Vec<Event>>, usize)>,
}

/// How a call ended when it did not succeed.
enum Refused {
    /// 413: the batch is too large for the API.
    TooLarge,
    /// For good, or after the retries: the page fails.
    Failed(SinkError),
}

impl AzureLogsSink {
    /// An `azure_logs_ingestion` sink with this id, configuration and token request (built from
    /// `config.auth` by the engine, which resolves stored secrets and loads certificates).
    pub fn new(name: &str, config: &AzureLogsConfig, auth: AuthSpec) -> AzureLogsSink {
        let url = config.ingestion_url();
        let shown_url = url.split('?').next().unwrap_or(&url).to_owned();
        AzureLogsSink {
            name: name.to_owned(),
            url,
            shown_url,
            dcr_id: config.dcr_id.clone(),
            compression: config.compression,
            auth,
            tokens: None,
            retry: default_retry(),
            request_timeout: Duration::from_secs(30),
            warned_fields: HashSet::new(),
            warned_no_time: false,
            dropped: 0,
            partly_sent: None,
        }
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> AzureLogsSink {
        self.retry = retry;
        self
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
        }
    }

    fn client_id(&self) -> &str {
        self.auth.token_spec().map_or("", |t| t.client_id.as_str())
    }

    /// The events of a page from its `skip`-th on, encoded: (event index, JSON) of each that
    /// fits a call. Warns about large fields; shortens, or drops with an error, an event too
    /// large for a call.
    fn encode_page(&mut self, events: &[Event], skip: usize) -> Vec<(usize, Vec<u8>)> {
        // An event alone in a call is inside `[` and `]`.
        let fits = MAX_CALL_BYTES - 2;
        let mut out = Vec::with_capacity(events.len().saturating_sub(skip));
        for (i, event) in events.iter().enumerate().skip(skip) {
            let mut json = Vec::new();
            let encoded = encode_event(&event.fields, &mut json);
            if !encoded.has_time && !self.warned_no_time {
                self.warned_no_time = true;
                warn!(sink = %self.name, "events without a numeric _time get the time they are sent as TimeGenerated");
            }
            for (field, bytes) in encoded.large_fields {
                if self.warned_fields.insert(field.clone()) {
                    warn!(sink = %self.name, field = %field, bytes, "a value of this field is over 64 KB: Log Analytics truncates it (warned once per field)");
                }
            }
            if json.len() > fits {
                let bytes = json.len();
                json.clear();
                encode_event(&shorten_strings(&event.fields, MAX_FIELD_BYTES), &mut json);
                if json.len() > fits {
                    self.dropped += 1;
                    error!(
                        sink = %self.name,
                        bytes,
                        trace_id = %trace_id(&event.fields),
                        dropped_since_start = self.dropped,
                        "an event is larger than one call may be (1,000,000 bytes) even with its strings cut to 64 KB: dropped; the rest of the page is delivered"
                    );
                    continue;
                }
                warn!(sink = %self.name, bytes, trace_id = %trace_id(&event.fields), "an event is larger than one call may be (1,000,000 bytes): its string values over 64 KB are cut to 64 KB, as Log Analytics would store them");
            }
            out.push((i, json));
        }
        out
    }

    /// The `Authorization` header from the sink's token cache.
    async fn authorization(&mut self) -> Result<AuthHeader, SinkError> {
        let tokens = self
            .tokens
            .get_or_insert_with(|| AuthToken::default().start())
            .clone();
        match tokens.send(GetAuthHeader(self.auth.clone())).await {
            Ok(Ok(header)) => Ok(header),
            Ok(Err(e)) => Err(self.error(format!(
                "no token for the Logs Ingestion API: {e}; the page is not acknowledged and is delivered again on the next run"
            ))),
            Err(e) => Err(self.error(format!("the token cache stopped: {e}"))),
        }
    }

    /// Sends one call body of `rows` events, retrying per the policy.
    async fn send(&mut self, body: Vec<u8>, rows: usize) -> Result<(), Refused> {
        let plain_bytes = body.len();
        let body = match self.compression {
            Compression::None => body,
            Compression::Gzip => gzip(&body).map_err(|e| {
                Refused::Failed(self.error(format!("gzip compression failed: {e}")))
            })?,
        };
        let body = actix_web::web::Bytes::from(body);
        let mut retries = 0u32;
        let mut token_renewed = false;
        loop {
            let header = self.authorization().await.map_err(Refused::Failed)?;
            let mut headers = vec![
                ("Content-Type", "application/json"),
                ("Authorization", header.0.expose()),
            ];
            if self.compression == Compression::Gzip {
                headers.push(("Content-Encoding", "gzip"));
            }
            let answer = post(&self.url, &headers, body.clone(), self.request_timeout).await;
            let (failure, message) = match answer {
                Ok((status, _, _)) if (200..300).contains(&status) => {
                    debug!(sink = %self.name, rows, bytes = plain_bytes, "batch accepted");
                    return Ok(());
                }
                Ok((413, _, _)) => return Err(Refused::TooLarge),
                Ok((401, _, _)) if !token_renewed => {
                    // A token revoked or issued before a change: one more try with a new one.
                    token_renewed = true;
                    if let Some(spec) = self.auth.token_spec() {
                        if let Some(tokens) = &self.tokens {
                            let _ = tokens
                                .send(InvalidateToken {
                                    spec: spec.clone(),
                                    refused: header,
                                })
                                .await;
                        }
                    }
                    continue;
                }
                Ok((status @ (401 | 403), _, answer)) => {
                    return Err(Refused::Failed(self.error(format!(
                        "HTTP {status} from {}: {}; the application {} needs the role {ROLE} {} \
                         (az role assignment create --assignee {} --role \"Monitoring Metrics Publisher\" --scope <the rule's resource id>; \
                         a new assignment can take 30 minutes to apply), and auth.resource must be the Azure Monitor audience of the plan",
                        self.shown_url,
                        msgtrace_actors::dialect::error_summary(&answer),
                        self.client_id(),
                        self.dcr_id,
                        self.client_id(),
                    ))));
                }
                other => failed_try(&self.shown_url, self.request_timeout, other, status_hint)
                    .map_err(|e| Refused::Failed(self.error(e.to_string())))?,
            };
            let (policy, name) = (&self.retry, &self.name);
            retry_wait(
                name,
                policy,
                MAX_RETRY_AFTER,
                &failure,
                message,
                &mut retries,
            )
            .await
            .map_err(|e| Refused::Failed(self.error(e.to_string())))?;
        }
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 => " (check dcr_id and stream, and that endpoint is the data collection endpoint of the rule's region)",
        400 => " (check that stream is declared by the rule and that its columns match the events: see docs/sentinel.md)",
        _ => "",
    }
}

/// The trace id of an event for a log line (no address).
fn trace_id(fields: &Row) -> String {
    super::http::event_identity(fields).map_or_else(|| "(none)".to_owned(), |(id, _)| id)
}

impl Sink for AzureLogsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            // The same page again after a failure part way: its accepted events are skipped.
            let skip = match self.partly_sent.take() {
                Some((page, done)) if std::ptr::eq(page.as_ptr(), Arc::as_ptr(&batch.events)) => {
                    done
                }
                _ => 0,
            };
            let items = self.encode_page(&batch.events, skip);
            let sizes: Vec<usize> = items.iter().map(|(_, json)| json.len()).collect();
            let mut todo: VecDeque<Range<usize>> =
                batches(&sizes, MAX_CALL_BYTES).into_iter().collect();
            let calls = todo.len();
            let mut done = skip;
            while let Some(range) = todo.pop_front() {
                let body = array_body(items[range.clone()].iter().map(|(_, json)| json.as_slice()));
                match self.send(body, range.len()).await {
                    Ok(()) => done = items[range.end - 1].0 + 1,
                    Err(Refused::TooLarge) if range.len() > 1 => {
                        let mid = range.start + range.len() / 2;
                        warn!(sink = %self.name, rows = range.len(), "the API found the batch too large (413): sending it in two halves");
                        todo.push_front(mid..range.end);
                        todo.push_front(range.start..mid);
                    }
                    Err(refused) => {
                        self.partly_sent = Some((Arc::downgrade(&batch.events), done));
                        let mut e = match refused {
                            Refused::Failed(e) => e,
                            Refused::TooLarge => self.error(format!(
                                "HTTP 413 from {}: one event of {} bytes is too large for the API; the page is not acknowledged",
                                self.shown_url, sizes[range.start]
                            )),
                        };
                        if calls > 1 {
                            e.message = format!(
                                "{} of {} events of the page accepted: {}",
                                done,
                                batch.events.len(),
                                e.message
                            );
                        }
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    }
}

/// What [`encode_event`] found in an event.
#[derive(Debug, Default, PartialEq)]
pub struct Encoded {
    /// Whether `TimeGenerated` came from the row's `_time` (else it is the time of encoding).
    pub has_time: bool,
    /// The fields whose JSON value is over [`MAX_FIELD_BYTES`], with that size.
    pub large_fields: Vec<(String, usize)>,
}

/// Appends an event as the API takes it: the row's fields as the file sink writes them, then
/// `TimeGenerated` (the row's `_time`, ISO 8601 UTC with microseconds). A field of the row named
/// `TimeGenerated` is left out: the column is the row's time.
pub fn encode_event(fields: &Row, out: &mut Vec<u8>) -> Encoded {
    let mut found = Encoded::default();
    out.push(b'{');
    for (key, value) in fields {
        if key == "TimeGenerated" {
            continue;
        }
        // Strings and maps of JSON values always serialize.
        serde_json::to_writer(&mut *out, key).expect("serializes");
        out.push(b':');
        let start = out.len();
        serde_json::to_writer(&mut *out, value).expect("serializes");
        if out.len() - start > MAX_FIELD_BYTES {
            found.large_fields.push((key.clone(), out.len() - start));
        }
        out.push(b',');
    }
    let time = time_generated(fields);
    found.has_time = time.is_some();
    let time = time
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    out.extend_from_slice(b"\"TimeGenerated\":");
    serde_json::to_writer(&mut *out, &time).expect("serializes");
    out.push(b'}');
    found
}

/// `TimeGenerated` of a row: its `_time` (epoch seconds) as ISO 8601 UTC, e.g.
/// `2022-09-05T18:10:13.490000Z`; `None` without a usable `_time`.
pub fn time_generated(fields: &Row) -> Option<String> {
    let secs = fields.get("_time")?.as_f64().filter(|t| t.is_finite())?;
    let micros = (secs * 1e6).round();
    if micros.abs() > i64::MAX as f64 {
        return None;
    }
    let t = chrono::DateTime::from_timestamp_micros(micros as i64)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The row with every string value longer than `max` bytes cut to at most `max` bytes (at a
/// character boundary).
pub fn shorten_strings(fields: &Row, max: usize) -> Row {
    fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s.len() > max => {
                    let mut end = max;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    Value::String(s[..end].to_owned())
                }
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Cuts items of these JSON sizes, in order, into calls: each a range of items whose JSON array
/// (`[`, the items with a `,` between them, `]`) is at most `limit` bytes. Every item must fit a
/// call alone (`size + 2 <= limit`); one that does not still gets a call of its own.
pub fn batches(sizes: &[usize], limit: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    // The array so far: `[` and the items with their commas, without the closing `]`.
    let mut len = 1;
    for (i, size) in sizes.iter().enumerate() {
        let comma = usize::from(i > start);
        if i > start && len + comma + size + 1 > limit {
            out.push(start..i);
            start = i;
            len = 1 + size;
        } else {
            len += comma + size;
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The JSON array of these encoded events.
pub fn array_body<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    /// The array bodies of items of these sizes, cut by [`batches`].
    fn bodies(sizes: &[usize], limit: usize) -> Vec<Vec<u8>> {
        let items: Vec<Vec<u8>> = sizes
            .iter()
            .map(|n| {
                let mut s = vec![b'"'];
                s.resize(n - 1, b'x');
                s.push(b'"');
                s
            })
            .collect();
        batches(sizes, limit)
            .into_iter()
            .map(|r| array_body(items[r].iter().map(Vec::as_slice)))
            .collect()
    }

    #[test]
    fn calls_are_never_over_the_limit_and_keep_every_item_once_in_order() {
        let limit = 100;
        let mut seed = 7u64;
        for _ in 0..500 {
            let n = (seed % 40) as usize;
            let sizes: Vec<usize> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    2 + (seed >> 33) as usize % (limit - 3)
                })
                .collect();
            let ranges = batches(&sizes, limit);
            let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(flat, (0..n).collect::<Vec<_>>());
            for body in bodies(&sizes, limit) {
                assert!(body.len() <= limit, "{} bytes", body.len());
                let v: Vec<Value> = serde_json::from_slice(&body).unwrap();
                assert!(!v.is_empty());
            }
        }
    }

    #[test]
    fn a_call_is_filled_up_to_exactly_the_limit() {
        // [ + 3 × 31 + 2 commas + ] = 97; a fourth item does not fit 100.
        assert_eq!(batches(&[31, 31, 31, 31], 97), vec![0..3, 3..4]);
        assert_eq!(batches(&[31, 31, 31, 31], 96), vec![0..2, 2..4]);
        assert_eq!(bodies(&[31, 31, 31], 97)[0].len(), 97);
        assert_eq!(batches(&[98], 100), vec![0..1]);
        assert!(batches(&[], 100).is_empty());
    }

    #[test]
    fn events_are_the_row_plus_time_generated() {
        let fields = row(json!({
            "id": "t1",
            "recipientAddress": "a@contoso.com",
            "_time": 1_662_401_413.49,
            "site": "hq",
            "TimeGenerated": "theirs",
        }));
        let mut out = Vec::new();
        let found = encode_event(&fields, &mut out);
        assert!(found.has_time && found.large_fields.is_empty());
        let v: Row = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["TimeGenerated"], "2022-09-05T18:10:13.490000Z");
        let mut expected = fields.clone();
        expected.insert("TimeGenerated".into(), v["TimeGenerated"].clone());
        assert_eq!(v, expected);
        let mut out = Vec::new();
        assert!(!encode_event(&row(json!({"a": 1})), &mut out).has_time);
        let v: Row = serde_json::from_slice(&out).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(v["TimeGenerated"].as_str().unwrap()).is_ok());
        assert_eq!(
            time_generated(&row(json!({"_time": 0}))).as_deref(),
            Some("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(time_generated(&row(json!({"_time": "x"}))), None);
    }

    fn sink() -> AzureLogsSink {
        let config = AzureLogsConfig {
            endpoint: url::Url::parse("https://dce.example").unwrap(),
            dcr_id: "dcr-0123456789abcdef0123456789abcdef".into(),
            stream: "Custom-MessageTrace".into(),
            plan: crate::config::Plan::Enterprise,
            auth: crate::config::AuthConfig::Basic {
                username: "u".into(),
                password: Default::default(),
            },
            compression: Compression::None,
        };
        let auth = AuthSpec::Basic {
            username: "u".into(),
            password: Default::default(),
        };
        AzureLogsSink::new("sentinel", &config, auth)
    }

    fn event(v: Value) -> Event {
        Event::new(row(v), Arc::from("contoso"), Arc::from("https://x/y"))
    }

    /// Issue 19: an event larger than one call has its long strings cut to 64 KB and is sent;
    /// one that is still too large is dropped and counted; the others are kept, in order.
    #[test]
    fn an_event_too_large_for_a_call_is_shortened_or_else_dropped_and_counted() {
        let mut sink = sink();
        let huge = "x".repeat(MAX_CALL_BYTES);
        let many: Vec<Value> = (0..MAX_CALL_BYTES / 4).map(|i| i.into()).collect();
        let events = vec![
            event(json!({"id": "t0", "_time": 1.0})),
            event(json!({"id": "t1", "subject": huge, "_time": 1.0})),
            event(json!({"id": "t2", "recipients": many, "_time": 1.0})),
            event(json!({"id": "t3", "_time": 1.0})),
        ];
        let items = sink.encode_page(&events, 0);
        assert_eq!(items.iter().map(|i| i.0).collect::<Vec<_>>(), vec![0, 1, 3]);
        let shortened: Row = serde_json::from_slice(&items[1].1).unwrap();
        assert_eq!(
            shortened["subject"].as_str().unwrap().len(),
            MAX_FIELD_BYTES
        );
        assert_eq!(sink.dropped, 1);
        assert!(
            sink.warned_fields.contains("subject") && sink.warned_fields.contains("recipients")
        );
        // A page given again from its third event on.
        let items = sink.encode_page(&events, 3);
        assert_eq!(items.iter().map(|i| i.0).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn large_fields_are_found_and_shortened_at_a_character_boundary() {
        let big = "é".repeat(MAX_FIELD_BYTES); // 2 bytes each
        let fields = row(json!({"subject": big, "size": 1}));
        let found = encode_event(&fields, &mut Vec::new());
        assert_eq!(found.large_fields.len(), 1);
        assert_eq!(found.large_fields[0].0, "subject");
        let short = shorten_strings(&fields, MAX_FIELD_BYTES);
        let s = short["subject"].as_str().unwrap();
        assert_eq!(s.len(), MAX_FIELD_BYTES);
        assert_eq!(short["size"], 1);
        let mut out = Vec::new();
        assert!(encode_event(&short, &mut out).large_fields.len() <= 1);
        assert!(out.len() < 2 * MAX_FIELD_BYTES);
    }
}
