//! etcd's JSON gateway (`/v3/...`, etcd 3.4 and later) over the engine's HTTP client: plain
//! async functions, one typed error.
//!
//! The gateway is gRPC's API as JSON over HTTP/1.1 `POST`: keys and values are base64, 64-bit
//! integers are decimal strings (both are accepted), fields at their zero value are left out
//! (`"succeeded"` is absent when a transaction failed, `"kvs"` when a range is empty). Every
//! answer of etcd carries a `header` with a `revision`; an answer without one is not etcd's
//! ([`EtcdError::Garbage`]), so that a proxy's `{}` or an HTML page is never read as "no keys".
//!
//! Endpoints are tried in turn, starting from the one that answered last: a connection that
//! fails, stalls past the timeout or ends before its body, an answer that is not etcd's JSON,
//! and etcd's own `UNAVAILABLE` (a member without quorum) move to the next; any other answer of
//! etcd is the answer. A request may so be applied twice (sent to a member that applied it and
//! timed out, then to the next): every request this crate sends is idempotent or guarded by a
//! compare that makes its second application fail (a claim, [`super::fence`]), and a lease
//! granted twice expires by itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::http::{self, HttpError};

/// The largest answer read: a range over every owner key of a thousand sources is some
/// hundred KiB; anything past this is not an answer of ours.
const MAX_BODY: usize = 16 << 20;

/// gRPC's `NOT_FOUND` (a lease that expired or was revoked).
const NOT_FOUND: i64 = 5;
/// gRPC's `UNAVAILABLE` (a member without a leader, or stopping): the next endpoint may answer.
const UNAVAILABLE: i64 = 14;

/// Why etcd gave no usable answer. Each message is one line that names the endpoint and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No connection, a reset, a stall past the timeout, or a body cut short.
    #[error("etcd at {endpoint} unreachable ({reason}); check that etcd runs there and that cluster.etcd lists its client URLs")]
    Unreachable {
        /// The endpoint tried last.
        endpoint: String,
        /// What the transport said.
        reason: String,
    },
    /// The answer is not etcd's JSON: another server on that port, a proxy's page, a cut or
    /// oversized body, or an etcd older than 3.4.
    #[error("etcd at {endpoint} answered {path} with {detail}, not etcd's JSON; check that cluster.etcd names an etcd (3.4 or later) client URL such as http://127.0.0.1:2379")]
    Garbage {
        /// The endpoint.
        endpoint: String,
        /// The gateway path asked.
        path: String,
        /// What was wrong with it (never the whole body).
        detail: String,
    },
    /// etcd refused the request: its gRPC code and message.
    #[error("etcd at {endpoint} refused {path}: {message} (gRPC code {code}); see etcd's log")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The gateway path asked.
        path: String,
        /// gRPC status code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The lease is gone: it expired (not kept alive in time) or was revoked.
    #[error("etcd lease {0:x} has expired or was revoked; this instance must register again")]
    LeaseExpired(i64),
}

impl EtcdError {
    /// The error with the id of the lease it concerns (an answer of etcd does not name it).
    fn for_lease(self, id: i64) -> EtcdError {
        match self {
            EtcdError::LeaseExpired(_) => EtcdError::LeaseExpired(id),
            other => other,
        }
    }
}

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// etcd's id for it (never 0).
    pub id: i64,
    /// Its time to live as granted (etcd may raise a short one to its minimum).
    pub ttl: Duration,
}

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Kv {
    /// The key.
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    /// The value (empty when etcd left it out).
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    /// The revision at which the key was created (since it last did not exist).
    #[serde(default, with = "int64")]
    pub create_revision: i64,
    /// The revision of its last change.
    #[serde(default, with = "int64")]
    pub mod_revision: i64,
    /// The lease it is bound to, 0 for none.
    #[serde(default, with = "int64")]
    pub lease: i64,
}

/// A condition of a transaction, on one key (a key that does not exist has a create revision
/// and a lease of 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    /// The key is bound to this lease (0: to none, or the key does not exist).
    Lease(Vec<u8>, i64),
    /// The key's last change was at this revision (0: the key does not exist): nobody has
    /// written it since it was read.
    ModRevision(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes `value` at `key`, bound to `lease` (0: to none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease, 0 for none.
        lease: i64,
    },
    /// Removes `key`.
    Delete(Vec<u8>),
    /// Reads `key` (its answer is in [`TxnOutcome::ranges`]).
    Get(Vec<u8>),
}

/// A transaction: when every compare holds, `success` runs, otherwise `failure`; atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Run when they hold.
    pub success: Vec<Op>,
    /// Run when one does not.
    pub failure: Vec<Op>,
}

/// What a transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The keys each [`Op::Get`] of the branch that ran found, in order.
    pub ranges: Vec<Vec<Kv>>,
}

/// A client of one etcd cluster: its endpoints and a timeout per request. Cheap to clone; the
/// clones share which endpoint answered last.
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Arc<[Url]>,
    preferred: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Etcd {
    /// A client of the etcd whose client URLs are `endpoints` (scheme, host and port; at least
    /// one), each request bounded by `timeout` (connect, send and the whole answer).
    pub fn new(endpoints: Vec<Url>, timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            timeout,
        }
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub async fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        #[derive(Deserialize)]
        struct Granted {
            #[serde(rename = "ID", default, with = "int64")]
            id: i64,
            #[serde(rename = "TTL", default, with = "int64")]
            ttl: i64,
            #[serde(default)]
            error: String,
        }
        let secs = ttl.as_secs().max(1);
        let path = "/v3/lease/grant";
        let (endpoint, g): (String, Granted) =
            self.call(path, json!({ "TTL": secs.to_string() })).await?;
        if g.id == 0 || g.ttl <= 0 || !g.error.is_empty() {
            return Err(EtcdError::Refused {
                endpoint,
                path: path.to_owned(),
                code: 0,
                message: format!("no lease granted ({})", g.error),
            });
        }
        Ok(Lease {
            id: g.id,
            ttl: Duration::from_secs(g.ttl.unsigned_abs()),
        })
    }

    /// Renews lease `id` once; its time to live from now. A lease that expired is
    /// [`EtcdError::LeaseExpired`] (the gateway answers it with a TTL of 0).
    pub async fn keep_alive(&self, id: i64) -> Result<Duration, EtcdError> {
        // The gateway's keepalive is a stream: one request in the body, one `{"result": ...}`
        // (or `{"error": ...}`) out, then the end of the body.
        #[derive(Deserialize)]
        struct Envelope {
            result: Option<WithHeader<Renewed>>,
            error: Option<StreamError>,
        }
        #[derive(Deserialize)]
        struct Renewed {
            #[serde(rename = "TTL", default, with = "int64")]
            ttl: i64,
        }
        #[derive(Deserialize)]
        struct StreamError {
            #[serde(default, with = "int64")]
            grpc_code: i64,
            #[serde(default)]
            message: String,
        }
        let path = "/v3/lease/keepalive";
        let answer = self.call_raw(path, json!({ "ID": id.to_string() })).await;
        let (endpoint, e): (String, Envelope) = answer.map_err(|e| e.for_lease(id))?;
        match (e.result, e.error) {
            (Some(r), _) if r.rest.ttl > 0 => Ok(Duration::from_secs(r.rest.ttl.unsigned_abs())),
            (Some(_), _) => Err(EtcdError::LeaseExpired(id)),
            (None, Some(e)) if e.grpc_code == NOT_FOUND => Err(EtcdError::LeaseExpired(id)),
            (None, Some(e)) => Err(EtcdError::Refused {
                endpoint,
                path: path.to_owned(),
                code: e.grpc_code,
                message: one_line(&e.message),
            }),
            (None, None) => Err(EtcdError::Garbage {
                endpoint,
                path: path.to_owned(),
                detail: "an answer without `result`".to_owned(),
            }),
        }
    }

    /// Revokes lease `id`: the keys bound to it go at once. A lease already gone is no error.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self
            .call::<Nothing>("/v3/lease/revoke", json!({ "ID": id.to_string() }))
            .await
        {
            Ok(_) | Err(EtcdError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The key `key`, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let (_, r): (String, Range) = self
            .call("/v3/kv/range", json!({ "key": b64::encode(key) }))
            .await?;
        Ok(r.kvs.into_iter().find(|kv| kv.key == key))
    }

    /// Every key that starts with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<Kv>, EtcdError> {
        let body =
            json!({ "key": b64::encode(prefix), "range_end": b64::encode(&prefix_end(prefix)) });
        let (_, r): (String, Range) = self.call("/v3/kv/range", body).await?;
        Ok(r.kvs)
    }

    /// Writes `value` at `key`, bound to `lease` (0: to none). A lease that is gone is
    /// [`EtcdError::LeaseExpired`].
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call::<Nothing>("/v3/kv/put", put_json(key, value, lease))
            .await
            .map(|_| ())
            .map_err(|e| e.for_lease(lease))
    }

    /// Runs `txn` atomically.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnOutcome, EtcdError> {
        let (_, t): (String, TxnAnswer) = self.call("/v3/kv/txn", txn_json(txn)).await?;
        let ranges = t
            .responses
            .into_iter()
            .filter_map(|r| r.response_range.map(|r| r.kvs))
            .collect();
        Ok(TxnOutcome {
            succeeded: t.succeeded,
            ranges,
        })
    }

    /// Posts `body` to `path` and decodes an answer that carries etcd's `header`; returns which
    /// endpoint answered, with it.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Value,
    ) -> Result<(String, T), EtcdError> {
        let (endpoint, answer): (String, WithHeader<T>) = self.call_raw(path, body).await?;
        Ok((endpoint, answer.rest))
    }

    /// Posts `body` to `path` at each endpoint in turn until one gives an answer of etcd
    /// ([module documentation](self)), decoded as `T`.
    async fn call_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Value,
    ) -> Result<(String, T), EtcdError> {
        let body = body.to_string().into_bytes();
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..count {
            let at = (first + i) % count;
            let endpoint = self.endpoints[at].as_str().trim_end_matches('/');
            let url = format!("{endpoint}{path}");
            let answer = http::post_json(&url, body.clone(), self.timeout, MAX_BODY).await;
            match decode(endpoint, path, answer) {
                Ok(v) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok((endpoint.to_owned(), v));
                }
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Next(e)) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Unreachable {
            endpoint: "(none)".to_owned(),
            reason: "no endpoint configured".to_owned(),
        }))
    }
}

/// What one endpoint's attempt came to, when not an answer.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// etcd's answer: the next endpoint would say the same.
    Final(EtcdError),
    /// This endpoint could not answer: try the next.
    Next(EtcdError),
}

/// An answer of etcd: its `header` (required: see the module documentation) and the rest.
#[derive(Deserialize)]
struct WithHeader<T> {
    #[allow(dead_code)]
    header: Header,
    #[serde(flatten)]
    rest: T,
}

#[derive(Deserialize)]
struct Header {
    #[allow(dead_code)]
    #[serde(with = "int64")]
    revision: i64,
}

/// An answer whose fields (beside its header) are not read.
#[derive(Deserialize)]
struct Nothing {}

/// etcd's error answer (any status but 200).
#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(with = "int64")]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct TxnAnswer {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

#[derive(Deserialize)]
struct ResponseOp {
    response_range: Option<Range>,
}

/// Sorts one exchange's outcome into an answer or an [`Attempt`].
fn decode<T: DeserializeOwned>(
    endpoint: &str,
    path: &str,
    answer: Result<http::HttpResponse, HttpError>,
) -> Result<T, Attempt> {
    let garbage = |detail: String| EtcdError::Garbage {
        endpoint: endpoint.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let response = match answer {
        Ok(r) => r,
        Err(HttpError::TooLarge(n)) => {
            return Err(Attempt::Next(garbage(format!(
                "a body larger than {n} bytes"
            ))))
        }
        Err(e) => {
            return Err(Attempt::Next(EtcdError::Unreachable {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            }))
        }
    };
    if response.status == 200 {
        return serde_json::from_slice(&response.body)
            .map_err(|e| Attempt::Next(garbage(format!("a body that does not decode ({e})"))));
    }
    match serde_json::from_slice::<ErrorAnswer>(&response.body) {
        Ok(e) if e.code == NOT_FOUND && e.message.contains("lease not found") => {
            Err(Attempt::Final(EtcdError::LeaseExpired(0)))
        }
        Ok(e) => {
            let refused = EtcdError::Refused {
                endpoint: endpoint.to_owned(),
                path: path.to_owned(),
                code: e.code,
                message: one_line(&e.message),
            };
            Err(if e.code == UNAVAILABLE {
                Attempt::Next(refused)
            } else {
                Attempt::Final(refused)
            })
        }
        Err(_) => Err(Attempt::Next(garbage(format!(
            "HTTP {} and a body that is not etcd's error ({})",
            response.status,
            one_line(&String::from_utf8_lossy(
                &response.body[..response.body.len().min(60)]
            ))
        )))),
    }
}

/// `text` on one line, at most 200 characters: what a server says never breaks a log line.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.trim().to_owned()
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte that
/// is not 0xff incremented, and what follows dropped; `[0]` (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The gateway's JSON of a transaction.
fn txn_json(txn: &Txn) -> Value {
    let compare: Vec<Value> = txn
        .compare
        .iter()
        .map(|c| match c {
            Compare::CreateRevision(key, rev) => json!({
                "target": "CREATE", "result": "EQUAL", "key": b64::encode(key),
                "create_revision": rev.to_string(),
            }),
            Compare::Lease(key, lease) => json!({
                "target": "LEASE", "result": "EQUAL", "key": b64::encode(key),
                "lease": lease.to_string(),
            }),
            Compare::ModRevision(key, rev) => json!({
                "target": "MOD", "result": "EQUAL", "key": b64::encode(key),
                "mod_revision": rev.to_string(),
            }),
        })
        .collect();
    let ops = |ops: &[Op]| ops.iter().map(op_json).collect::<Vec<_>>();
    json!({ "compare": compare, "success": ops(&txn.success), "failure": ops(&txn.failure) })
}

/// The gateway's JSON of one operation (a `RequestOp`).
fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => json!({ "request_put": put_json(key, value, *lease) }),
        Op::Delete(key) => json!({ "request_delete_range": { "key": b64::encode(key) } }),
        Op::Get(key) => json!({ "request_range": { "key": b64::encode(key) } }),
    }
}

/// The gateway's JSON of a `PutRequest`.
fn put_json(key: &[u8], value: &[u8], lease: i64) -> Value {
    json!({ "key": b64::encode(key), "value": b64::encode(value), "lease": lease.to_string() })
}

/// Bytes as the gateway's base64 strings.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{de, Deserialize, Deserializer};

    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(de::Error::custom)
    }
}

/// 64-bit integers as the gateway writes them: decimal strings (numbers are taken too).
mod int64 {
    use serde::{de, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Int::deserialize(d)? {
            Int::Number(n) => Ok(n),
            Int::Text(t) => t.parse().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ok(status: u16, body: &str) -> Result<http::HttpResponse, HttpError> {
        Ok(http::HttpResponse {
            status,
            retry_after: None,
            body: Bytes::from(body.to_owned()),
        })
    }

    fn range(answer: Result<http::HttpResponse, HttpError>) -> Result<Vec<Kv>, Attempt> {
        decode::<WithHeader<Range>>("http://e", "/v3/kv/range", answer).map(|r| r.rest.kvs)
    }

    #[test]
    fn a_range_answer_decodes_base64_and_string_integers() {
        let kvs = range(ok(
            200,
            r#"{"header":{"revision":"3"},"kvs":[{"key":"L3AvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"aGk=","lease":"77"}],"count":"1"}"#,
        ))
        .unwrap();
        assert_eq!(kvs[0].key, b"/p/a");
        assert_eq!(kvs[0].value, b"hi");
        assert_eq!((kvs[0].create_revision, kvs[0].lease), (2, 77));
        // An empty range leaves `kvs` out; numbers are taken as numbers too.
        assert!(range(ok(200, r#"{"header":{"revision":1}}"#))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_answer_without_etcds_header_is_garbage_not_an_empty_range() {
        for body in [
            "{}",
            "<html>proxy</html>",
            r#"{"header":{}}"#,
            r#"{"header":{"revision":"1"},"kvs":[{"key":"@@"}]}"#,
            "",
        ] {
            match range(ok(200, body)) {
                Err(Attempt::Next(EtcdError::Garbage { detail, .. })) => {
                    assert!(
                        detail.starts_with("a body that does not decode"),
                        "{detail}"
                    )
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn transport_failures_move_to_the_next_endpoint() {
        let cut = Err(HttpError::Connection(
            "the body ended after 3 of the 90 bytes".into(),
        ));
        assert!(matches!(
            range(cut),
            Err(Attempt::Next(EtcdError::Unreachable { .. }))
        ));
        let stalled = Err(HttpError::Timeout(Duration::from_secs(5)));
        assert!(matches!(
            range(stalled),
            Err(Attempt::Next(EtcdError::Unreachable { .. }))
        ));
        let huge = Err(HttpError::TooLarge(MAX_BODY));
        assert!(matches!(
            range(huge),
            Err(Attempt::Next(EtcdError::Garbage { .. }))
        ));
    }

    #[test]
    fn etcds_errors_are_typed_and_one_line() {
        let lease = ok(
            404,
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#,
        );
        assert_eq!(
            range(lease),
            Err(Attempt::Final(EtcdError::LeaseExpired(0)))
        );
        let bad = ok(
            400,
            r#"{"error":"x","message":"illegal base64\ndata","code":3}"#,
        );
        let Err(Attempt::Final(e)) = range(bad) else {
            panic!("a refusal is etcd's answer")
        };
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        assert!(
            e.to_string().contains("illegal base64 data (gRPC code 3)"),
            "{e}"
        );
        let unavailable = ok(503, r#"{"message":"etcdserver: no leader","code":14}"#);
        assert!(matches!(
            range(unavailable),
            Err(Attempt::Next(EtcdError::Refused { code: 14, .. }))
        ));
        let not_etcd = ok(404, "Not Found\n");
        let Err(Attempt::Next(e)) = range(not_etcd) else {
            panic!("not etcd's error")
        };
        assert!(
            e.to_string()
                .contains("HTTP 404 and a body that is not etcd's error (Not Found)"),
            "{e}"
        );
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn a_transaction_is_the_gateways_json() {
        let txn = Txn {
            compare: vec![
                Compare::Lease(b"k".to_vec(), 7),
                Compare::CreateRevision(b"k".to_vec(), 0),
                Compare::ModRevision(b"k".to_vec(), 12),
            ],
            success: vec![Op::Put {
                key: b"c".to_vec(),
                value: b"v".to_vec(),
                lease: 0,
            }],
            failure: vec![Op::Get(b"k".to_vec()), Op::Delete(b"d".to_vec())],
        };
        assert_eq!(
            txn_json(&txn),
            json!({
                "compare": [
                    {"target": "LEASE", "result": "EQUAL", "key": "aw==", "lease": "7"},
                    {"target": "CREATE", "result": "EQUAL", "key": "aw==", "create_revision": "0"},
                    {"target": "MOD", "result": "EQUAL", "key": "aw==", "mod_revision": "12"},
                ],
                "success": [{"request_put": {"key": "Yw==", "value": "dg==", "lease": "0"}}],
                "failure": [{"request_range": {"key": "aw=="}}, {"request_delete_range": {"key": "ZA=="}}],
            })
        );
    }

    #[test]
    fn a_failed_transaction_reads_its_ranges() {
        let body = r#"{"header":{"revision":"7"},"responses":[{"response_range":{"header":{"revision":"7"},"kvs":[{"key":"aw==","create_revision":"6","lease":"9","value":"bWU="}],"count":"1"}}]}"#;
        let t = decode::<WithHeader<TxnAnswer>>("http://e", "/v3/kv/txn", ok(200, body))
            .unwrap()
            .rest;
        assert!(!t.succeeded, "absent means false");
        assert_eq!(t.responses.len(), 1);
    }
}
