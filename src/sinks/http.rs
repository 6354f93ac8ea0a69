//! The `http` sink: POSTs a page's events to an HTTP endpoint in one of four formats, in batches,
//! optionally gzip-compressed, with bounded retries.
//!
//! | format | body | `Content-Type` |
//! |---|---|---|
//! | `ndjson` | one event object per line | `application/x-ndjson` |
//! | `json` | one JSON array of events per batch | `application/json` |
//! | `splunk_hec` | `{"time":…,"event":{…},"source":"<input id>","sourcetype":"o365:messagetrace"}` per event, one per line | `application/json` |
//! | `elasticsearch_bulk` | `{"index":{"_id":"…"}}` action line + document line per event | `application/x-ndjson` |
//!
//! A page is cut into batches of at most `batch.max_rows` events and about `batch.max_bytes`
//! bytes (before compression; a single larger event goes alone). The batches are sent one after
//! the other and the page is acknowledged only when every one of them was accepted: a 2xx answer,
//! and for `elasticsearch_bulk` also `"errors": false` in the answer. Since the engine waits for
//! that acknowledgement before it fetches the next page, a batch never stays open across pages:
//! the last batch of a page is sent when the page ends, so `batch.timeout_secs` never delays a
//! page.
//!
//! Connection failures, timeouts, 408, 429 and 5xx answers (and bulk item rejections with 429 or
//! 5xx) are retried with exponential backoff ([`default_retry`], `Retry-After` up to 20 s is
//! honoured). When the retries are used up, or the receiver refuses a batch for good (4xx), the
//! delivery fails: the fetcher stops, the checkpoint stays where it was, and the next run sends
//! the page again. Batches of that page already accepted are then sent twice; the
//! `elasticsearch_bulk` `_id` ([`document_id`]) makes that an overwrite instead of a duplicate.

use crate::config::{BatchConfig, Compression, HttpFormat, HttpSinkConfig, Secret};
use futures_util::future::LocalBoxFuture;
use msgtrace_actors::dialect::Row;
use msgtrace_actors::event::{Batch, Event};
use msgtrace_actors::retry::{Failure, RetryKind, RetryPolicy};
use msgtrace_actors::sink::{Sink, SinkError, SinkInput};
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, warn};

/// `sourcetype` of Splunk HEC events.
pub const HEC_SOURCETYPE: &str = "o365:messagetrace";

/// Largest answer body read from a receiver (an Elasticsearch bulk answer lists every item).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The retry policy of `http` sinks: 1 s, doubling, 5 retries (about 31 s in all) on connection
/// failures, timeouts, 408, 429 and 5xx.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy {
        kind: RetryKind::Backoff,
        initial: Duration::from_secs(1),
        limit: 5,
        multiplier: 2.0,
        codes: vec![408, 429, 500, 502, 503, 504],
        honor_retry_after: true,
        retry_connect_timeout: true,
        retry_connect_reset: true,
    }
}

/// Events POSTed to an HTTP endpoint (`type = "http"`).
pub struct HttpSink {
    name: String,
    url: String,
    /// The URL without query or credentials, for messages.
    shown_url: String,
    format: HttpFormat,
    authorization: Option<Secret>,
    headers: Vec<(String, Secret)>,
    compression: Compression,
    batch: BatchConfig,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// The page that failed part way, and how many of its request bodies the receiver had
    /// accepted: when the same page is given again (a scheduled job holds a refused page), those
    /// are not sent twice. A `Weak` keeps the page's address from being reused by another page
    /// without keeping its events in memory.
    partly_sent: Option<(Weak<Vec<Event>>, usize)>,
}

impl HttpSink {
    /// An `http` sink with this id and configuration, retrying per [`default_retry`].
    pub fn new(name: &str, config: &HttpSinkConfig) -> HttpSink {
        let authorization = config.token.as_ref().map(|t| {
            Secret::new(match config.format {
                HttpFormat::SplunkHec => format!("Splunk {}", t.expose()),
                _ => format!("Bearer {}", t.expose()),
            })
        });
        let mut shown = config.url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        HttpSink {
            name: name.to_owned(),
            url: config.url.to_string(),
            shown_url: shown.to_string(),
            format: config.format,
            authorization,
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            compression: config.compression,
            batch: config.batch,
            retry: default_retry(),
            request_timeout: Duration::from_secs(30),
            partly_sent: None,
        }
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> HttpSink {
        self.retry = retry;
        self
    }

    /// Limit for one request, answer included (default 30 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> HttpSink {
        self.request_timeout = timeout;
        self
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
        }
    }

    /// Sends one batch body, retrying per the policy.
    async fn send(&self, body: Vec<u8>, rows: usize) -> Result<(), SinkError> {
        let body = match self.compression {
            Compression::None => body,
            Compression::Gzip => {
                gzip(&body).map_err(|e| self.error(format!("gzip compression failed: {e}")))?
            }
        };
        let body = actix_web::web::Bytes::from(body);
        let mut retries = 0u32;
        loop {
            let (failure, message) = match self.post(body.clone()).await {
                Ok((status, _, answer)) if (200..300).contains(&status) => {
                    match self.check_answer(&answer) {
                        Answer::Accepted => {
                            debug!(sink = %self.name, rows, bytes = body.len(), "batch accepted");
                            return Ok(());
                        }
                        Answer::Retryable(m) => (
                            Failure::Status {
                                code: 429,
                                retry_after: None,
                            },
                            m,
                        ),
                        Answer::Refused(m) => return Err(self.error(m)),
                    }
                }
                other => failed_try(&self.shown_url, self.request_timeout, other, status_hint)
                    .map_err(|e| self.error(e.to_string()))?,
            };
            let max_retry_after = msgtrace_actors::retry::MAX_RETRY_AFTER;
            let (policy, name) = (&self.retry, &self.name);
            retry_wait(
                name,
                policy,
                max_retry_after,
                &failure,
                message,
                &mut retries,
            )
            .await
            .map_err(|e| self.error(e.to_string()))?;
        }
    }

    async fn post(
        &self,
        body: actix_web::web::Bytes,
    ) -> Result<(u16, Option<Duration>, actix_web::web::Bytes), SendFailure> {
        let mut headers = vec![("Content-Type", content_type(self.format))];
        if self.compression == Compression::Gzip {
            headers.push(("Content-Encoding", "gzip"));
        }
        if let Some(a) = &self.authorization {
            headers.push(("Authorization", a.expose()));
        }
        for (k, v) in &self.headers {
            headers.push((k.as_str(), v.expose()));
        }
        post(&self.url, &headers, body, self.request_timeout).await
    }
}

/// POSTs `body` to `url` with `headers` (and `Accept: application/json`) and reads the answer
/// (at most [`MAX_RESPONSE_BYTES`]), all within `timeout`: the status, a `Retry-After` delay,
/// the answer body.
pub(crate) async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: actix_web::web::Bytes,
    timeout: Duration,
) -> Result<(u16, Option<Duration>, actix_web::web::Bytes), SendFailure> {
    let mut req = client()
        .post(url)
        .insert_header(("Accept", "application/json"));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let exchange = async move {
        let mut resp = req.send_body(body).await.map_err(|e| {
            use awc::error::SendRequestError as E;
            match e {
                E::Url(u) => SendFailure::Request(format!("invalid URL: {u}")),
                E::Timeout => SendFailure::Timeout,
                other => SendFailure::Connection(other.to_string()),
            }
        })?;
        let status = resp.status().as_u16();
        let retry_after = msgtrace_actors::http::retry_after(resp.headers());
        let answer = resp
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| SendFailure::Connection(format!("reading the answer failed: {e}")))?;
        Ok((status, retry_after, answer))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(SendFailure::Timeout),
    }
}

impl HttpSink {
    /// Looks into a 2xx answer: only Elasticsearch reports failures inside one.
    fn check_answer(&self, answer: &[u8]) -> Answer {
        if self.format != HttpFormat::ElasticsearchBulk {
            return Answer::Accepted;
        }
        check_bulk_answer(answer, &self.shown_url)
    }
}

/// Why a batch is not delivered (the sink's error says it in one line).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Undelivered {
    /// The request cannot be made at all (a bad URL).
    #[error("{0}")]
    Unsendable(String),
    /// The retry policy gave up after the last try's failure (`last`).
    #[error("{last}{after}; the page is not acknowledged and is delivered again on the next run")]
    GaveUp {
        /// What the last try met.
        last: String,
        /// ` (after N retries)`, or nothing.
        after: String,
    },
}

/// A try that got no 2xx: what [`RetryPolicy`] decides on, and the line that says what happened
/// (`hint` adds the fix for a status); `Err` for a request that cannot be made at all.
pub(crate) fn failed_try(
    shown_url: &str,
    timeout: Duration,
    outcome: Result<(u16, Option<Duration>, actix_web::web::Bytes), SendFailure>,
    hint: fn(u16) -> &'static str,
) -> Result<(Failure, String), Undelivered> {
    Ok(match outcome {
        Ok((status, retry_after, answer)) => (
            Failure::Status {
                code: status,
                retry_after,
            },
            format!(
                "HTTP {status} from {shown_url}: {}{}",
                msgtrace_actors::dialect::error_summary(&answer),
                hint(status)
            ),
        ),
        Err(SendFailure::Timeout) => (
            Failure::Timeout,
            format!("{shown_url}: no answer within {timeout:?}"),
        ),
        Err(SendFailure::Connection(e)) => (Failure::Connection, format!("{shown_url}: {e}")),
        Err(SendFailure::Request(e)) => return Err(Undelivered::Unsendable(e)),
    })
}

/// After the `retries`-th failed try of a batch: waits as the policy (with the longest
/// `Retry-After` it honours) says and counts the retry, or gives the line that ends the delivery.
pub(crate) async fn retry_wait(
    sink: &str,
    policy: &RetryPolicy,
    max_retry_after: Duration,
    failure: &Failure,
    message: String,
    retries: &mut u32,
) -> Result<(), Undelivered> {
    match policy.decide_honoring(failure, *retries, max_retry_after) {
        Some(d) => {
            *retries += 1;
            warn!(sink = %sink, attempt = *retries, delay_ms = d.delay.as_millis() as u64, error = %message, "retrying batch");
            tokio::time::sleep(d.delay).await;
            Ok(())
        }
        None => {
            let after = if *retries > 0 {
                format!(" (after {retries} retries)")
            } else {
                String::new()
            };
            Err(Undelivered::GaveUp {
                last: message,
                after,
            })
        }
    }
}

/// Why no answer came.
pub(crate) enum SendFailure {
    /// No answer within the request timeout.
    Timeout,
    /// The connection failed or broke.
    Connection(String),
    /// The request could not be made (a bad URL).
    Request(String),
}

/// What a 2xx answer says about the batch.
#[derive(Debug, PartialEq)]
enum Answer {
    Accepted,
    /// Some items were rejected for a passing reason (429, 5xx): send the batch again.
    Retryable(String),
    /// Some items were rejected for good (mapping error, bad document).
    Refused(String),
}

/// Reads an Elasticsearch `_bulk` answer: `{"errors": false, "items": [...]}`.
fn check_bulk_answer(answer: &[u8], url: &str) -> Answer {
    let v: Value = match serde_json::from_slice(answer) {
        Ok(v) => v,
        Err(e) => {
            return Answer::Refused(format!(
                "{url}: the answer is not an Elasticsearch bulk response ({e}); check that the URL ends in /_bulk"
            ))
        }
    };
    match v.get("errors") {
        Some(Value::Bool(false)) => return Answer::Accepted,
        Some(Value::Bool(true)) => {}
        _ => {
            return Answer::Refused(format!(
                "{url}: the answer has no `errors` field: not an Elasticsearch bulk response; check that the URL ends in /_bulk"
            ))
        }
    }
    let mut failed = 0usize;
    let mut passing = true;
    let mut first = None;
    for item in v
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(op) = item.as_object().and_then(|o| o.values().next()) else {
            continue;
        };
        let status = op.get("status").and_then(Value::as_u64).unwrap_or(0);
        if (200..300).contains(&status) {
            continue;
        }
        failed += 1;
        if !(status == 429 || status >= 500) {
            passing = false;
        }
        if first.is_none() {
            let text = |k: &str, e: &Value| e.get(k).and_then(Value::as_str).map(str::to_owned);
            first = Some(match op.get("error") {
                Some(e) => match (text("type", e), text("reason", e)) {
                    (Some(t), Some(r)) => format!("{status} {t}: {r}"),
                    (None, Some(r)) => format!("{status} {r}"),
                    _ => format!("{status} {e}"),
                },
                None => status.to_string(),
            });
        }
    }
    let message = format!(
        "{url}: Elasticsearch rejected {failed} documents of the batch (first: {})",
        first.unwrap_or_else(|| "no item details".into())
    );
    if passing && failed > 0 {
        Answer::Retryable(message)
    } else {
        Answer::Refused(message)
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (check the sink's token or headers)",
        404 => " (check the sink's url)",
        413 => " (the receiver finds the batch too large: lower batch.max_bytes or batch.max_rows)",
        _ => "",
    }
}

fn content_type(format: HttpFormat) -> &'static str {
    match format {
        HttpFormat::Ndjson | HttpFormat::ElasticsearchBulk => "application/x-ndjson",
        HttpFormat::Json | HttpFormat::SplunkHec => "application/json",
    }
}

/// `body` gzip-compressed (fast level).
pub(crate) fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

thread_local! {
    static CLIENT: RefCell<Option<awc::Client>> = const { RefCell::new(None) };
}

/// One awc client per thread (awc's client is `!Send`; each sink runs on its own thread).
fn client() -> awc::Client {
    CLIENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| {
                msgtrace_actors::http::install_crypto();
                awc::Client::builder()
                    // `HttpSink::post` applies its own timeout to the whole exchange.
                    .disable_timeout()
                    // Events go to the configured URL only: a 3xx is the answer.
                    .disable_redirects()
                    .connector(awc::Connector::new().timeout(Duration::from_secs(10)))
                    .finish()
            })
            .clone()
    })
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn input(&self) -> SinkInput {
        match self.format {
            HttpFormat::Ndjson => SinkInput::Ndjson,
            _ => SinkInput::Events,
        }
    }

    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let bodies = match (&batch.encoded, self.format) {
                (Some(lines), HttpFormat::Ndjson) => cut_ndjson(lines, &self.batch),
                _ => encode(self.format, &batch.events, &self.batch),
            };
            let n = bodies.len();
            // The same page again after a failure part way: its accepted bodies are skipped
            // (encoding is deterministic, so they are the same bodies).
            let done = match self.partly_sent.take() {
                Some((page, done)) if std::ptr::eq(page.as_ptr(), Arc::as_ptr(&batch.events)) => {
                    done
                }
                _ => 0,
            };
            for (i, (body, rows)) in bodies.into_iter().enumerate().skip(done) {
                if let Err(mut e) = self.send(body, rows).await {
                    self.partly_sent = Some((Arc::downgrade(&batch.events), i));
                    if n > 1 {
                        e.message = format!("batch {} of {n} of the page: {}", i + 1, e.message);
                    }
                    return Err(e);
                }
            }
            Ok(())
        })
    }
}

/// Cuts events into request bodies per `format` and `limits`: (body, events in it).
pub fn encode(format: HttpFormat, events: &[Event], limits: &BatchConfig) -> Vec<(Vec<u8>, usize)> {
    let mut bodies = Bodies::new(format, limits);
    let mut item = Vec::new();
    for event in events {
        item.clear();
        encode_event(format, event, &mut item);
        bodies.push(&item);
    }
    bodies.finish()
}

/// Cuts a page's NDJSON, encoded where the page was parsed, into request bodies: the bodies
/// [`encode`] makes of the events it encodes (a JSON line holds no raw newline).
pub fn cut_ndjson(ndjson: &[u8], limits: &BatchConfig) -> Vec<(Vec<u8>, usize)> {
    let mut bodies = Bodies::new(HttpFormat::Ndjson, limits);
    for line in ndjson.split_inclusive(|b| *b == b'\n') {
        bodies.push(line);
    }
    bodies.finish()
}

/// Request bodies being cut from encoded events, each closed at `max_rows` events or before
/// `max_bytes` (an event larger than that goes alone).
struct Bodies<'a> {
    format: HttpFormat,
    limits: &'a BatchConfig,
    out: Vec<(Vec<u8>, usize)>,
    body: Vec<u8>,
    rows: usize,
}

impl<'a> Bodies<'a> {
    fn new(format: HttpFormat, limits: &'a BatchConfig) -> Bodies<'a> {
        Bodies {
            format,
            limits,
            out: Vec::new(),
            body: Vec::new(),
            rows: 0,
        }
    }

    /// Adds one encoded event.
    fn push(&mut self, item: &[u8]) {
        let limits = self.limits;
        if self.rows > 0
            && (self.rows >= limits.max_rows.max(1)
                || self.body.len() + item.len() + 1 > limits.max_bytes)
        {
            self.close();
        }
        if self.format == HttpFormat::Json {
            self.body.push(if self.rows == 0 { b'[' } else { b',' });
        }
        self.body.extend_from_slice(item);
        self.rows += 1;
    }

    fn close(&mut self) {
        if self.rows > 0 {
            if self.format == HttpFormat::Json {
                self.body.push(b']');
            }
            self.out.push((std::mem::take(&mut self.body), self.rows));
            self.rows = 0;
        }
    }

    fn finish(mut self) -> Vec<(Vec<u8>, usize)> {
        self.close();
        self.out
    }
}

/// Appends one event in `format` (with its trailing newline for the line formats).
fn encode_event(format: HttpFormat, event: &Event, out: &mut Vec<u8>) {
    // Maps of JSON values always serialize.
    match format {
        HttpFormat::Ndjson => event.write_ndjson(out),
        HttpFormat::Json => serde_json::to_writer(&mut *out, &event.fields).expect("serializes"),
        HttpFormat::SplunkHec => {
            let mut ser = serde_json::Serializer::new(&mut *out);
            let mut m = ser.serialize_map(None).expect("serializes");
            if let Some(t) = event.fields.get("_time") {
                m.serialize_entry("time", t).expect("serializes");
            }
            // `time` carries the row's time; Splunk reserves names starting with `_`.
            m.serialize_entry("event", &Without(&event.fields, "_time"))
                .expect("serializes");
            m.serialize_entry("source", &*event.meta.input_id)
                .expect("serializes");
            m.serialize_entry("sourcetype", HEC_SOURCETYPE)
                .expect("serializes");
            m.end().expect("serializes");
            out.push(b'\n');
        }
        HttpFormat::ElasticsearchBulk => {
            match document_id(&event.fields) {
                Some(id) => {
                    serde_json::to_writer(
                        &mut *out,
                        &serde_json::json!({ "index": { "_id": id } }),
                    )
                    .expect("serializes");
                }
                None => out.extend_from_slice(br#"{"index":{}}"#),
            }
            out.push(b'\n');
            event.write_ndjson(out);
        }
    }
}

/// A map serialized without one key.
struct Without<'a>(&'a Row, &'a str);

impl serde::Serialize for Without<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().filter(|(k, _)| k.as_str() != self.1))
    }
}

/// The row identity (trace id, recipient) of an event, whatever its shape: Reporting
/// (`MessageTraceId`, `RecipientAddress`), Graph (`id`, `recipientAddress`) or ECS-normalized
/// (`email.local_id`, first `email.to.address`, nested or dotted).
pub fn event_identity(fields: &Row) -> Option<(String, String)> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let first = |v: Option<&Value>| match v {
        Some(Value::Array(a)) => text(a.first()),
        other => text(other),
    };
    for (id, recipient) in [
        ("MessageTraceId", "RecipientAddress"),
        ("id", "recipientAddress"),
    ] {
        if let (Some(i), Some(r)) = (text(fields.get(id)), text(fields.get(recipient))) {
            return Some((i, r));
        }
    }
    let email = fields.get("email");
    let id = text(email.and_then(|e| e.get("local_id")))
        .or_else(|| text(fields.get("email.local_id")))?;
    let to = first(
        email
            .and_then(|e| e.get("to"))
            .and_then(|t| t.get("address")),
    )
    .or_else(|| first(fields.get("email.to.address")))?;
    Some((id, to))
}

/// The Elasticsearch `_id` of an event: lowercase hex of SHA-256(trace id, `\0`, lower-cased
/// recipient), so that a row delivered twice (a repeated page, a re-read) overwrites its
/// document. `None` when the event has no row identity (Elasticsearch then picks an id).
pub fn document_id(fields: &Row) -> Option<String> {
    let (id, recipient) = event_identity(fields)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(id.as_bytes());
    ctx.update(b"\0");
    ctx.update(recipient.to_lowercase().as_bytes());
    Some(
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn event(v: Value) -> Event {
        Event::new(
            v.as_object().unwrap().clone(),
            Arc::from("contoso"),
            Arc::from("https://x/y"),
        )
    }

    fn rws(i: u32) -> Event {
        event(json!({
            "MessageTraceId": format!("t{i}"),
            "RecipientAddress": format!("User{i}@Contoso.com"),
            "Subject": "hello",
            "_time": 1_662_401_413.49,
        }))
    }

    fn limits(max_rows: usize, max_bytes: usize) -> BatchConfig {
        BatchConfig {
            max_rows,
            max_bytes,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn batches_close_on_rows_and_bytes() {
        let events: Vec<Event> = (0..10).map(rws).collect();
        let b = encode(HttpFormat::Ndjson, &events, &limits(4, 1 << 20));
        assert_eq!(b.iter().map(|x| x.1).collect::<Vec<_>>(), vec![4, 4, 2]);
        let one = b[0].0.len() / 4;
        let b = encode(HttpFormat::Ndjson, &events, &limits(100, one * 3 + 1));
        assert!(
            b.iter().all(|x| x.1 <= 3),
            "{:?}",
            b.iter().map(|x| x.1).collect::<Vec<_>>()
        );
        assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), 10);
        // An event larger than max_bytes goes alone.
        let b = encode(HttpFormat::Ndjson, &events, &limits(100, 1));
        assert_eq!(b.len(), 10);
        assert!(encode(HttpFormat::Json, &[], &limits(1, 1)).is_empty());
    }

    #[test]
    fn ndjson_encoded_where_parsed_is_cut_into_the_same_bodies() {
        let events: Vec<Event> = (0..10).map(rws).collect();
        let lines = msgtrace_actors::event::Ndjson::encode(&events);
        let one = lines.len() / 10;
        for (rows, bytes) in [
            (4, 1 << 20),
            (100, one * 3 + 1),
            (100, 1),
            (1, 1 << 20),
            (10, 1),
        ] {
            let cut = cut_ndjson(&lines, &limits(rows, bytes));
            assert_eq!(
                cut,
                encode(HttpFormat::Ndjson, &events, &limits(rows, bytes))
            );
            assert_eq!(cut.iter().map(|x| x.1).sum::<usize>(), 10);
        }
        assert!(cut_ndjson(b"", &limits(1, 1)).is_empty());
    }

    #[test]
    fn json_batches_are_arrays() {
        let events: Vec<Event> = (0..5).map(rws).collect();
        for (body, rows) in encode(HttpFormat::Json, &events, &limits(2, 1 << 20)) {
            let v: Vec<Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(v.len(), rows);
        }
    }

    #[test]
    fn hec_envelopes() {
        let b = encode(HttpFormat::SplunkHec, &[rws(1)], &limits(10, 1 << 20));
        let v: Value = serde_json::from_slice(&b[0].0).unwrap();
        assert_eq!(v["time"], json!(1_662_401_413.49));
        assert_eq!(v["source"], "contoso");
        assert_eq!(v["sourcetype"], HEC_SOURCETYPE);
        assert_eq!(v["event"]["MessageTraceId"], "t1");
        assert!(v["event"].get("_time").is_none());
    }

    #[test]
    fn bulk_pairs_with_stable_ids() {
        let b = encode(
            HttpFormat::ElasticsearchBulk,
            &[rws(1), rws(2)],
            &limits(10, 1 << 20),
        );
        let lines: Vec<Value> = std::str::from_utf8(&b[0].0)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        let id = lines[0]["index"]["_id"].as_str().unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(lines[1]["MessageTraceId"], "t1");
        assert_ne!(lines[2]["index"]["_id"], lines[0]["index"]["_id"]);
        // Case of the recipient does not matter; the same identity in Graph or ECS shape gives
        // the same id.
        let graph = json!({"id": "t1", "recipientAddress": "user1@contoso.com"});
        let ecs = json!({"email": {"local_id": "t1", "to": {"address": ["user1@contoso.com"]}}});
        for other in [graph, ecs] {
            assert_eq!(document_id(other.as_object().unwrap()).as_deref(), Some(id));
        }
        assert_eq!(document_id(json!({"x": 1}).as_object().unwrap()), None);
    }

    #[test]
    fn bulk_answers() {
        let ok = br#"{"took":3,"errors":false,"items":[{"index":{"status":201}}]}"#;
        assert_eq!(check_bulk_answer(ok, "u"), Answer::Accepted);
        let busy = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}}]}"#;
        assert!(
            matches!(check_bulk_answer(busy, "u"), Answer::Retryable(m) if m.contains("queue full"))
        );
        let bad = br#"{"errors":true,"items":[{"index":{"status":400,"error":{"reason":"mapper_parsing_exception"}}}]}"#;
        assert!(matches!(check_bulk_answer(bad, "u"), Answer::Refused(_)));
        assert!(matches!(check_bulk_answer(b"ok", "u"), Answer::Refused(_)));
    }

    #[test]
    fn gzip_round_trips() {
        let z = gzip(b"hello hello hello").unwrap();
        let mut d = flate2::read::GzDecoder::new(&z[..]);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut d, &mut s).unwrap();
        assert_eq!(s, "hello hello hello");
    }
}
