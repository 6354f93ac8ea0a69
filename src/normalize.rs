//! `normalize = "ecs"`: rows of either API mapped to Elastic Common Schema names, the way
//! Elastic's own message trace integration shapes them.
//!
//! | ECS field | Reporting row | Graph row |
//! |---|---|---|
//! | `@timestamp`, `email.delivery_timestamp` | `Received` | `receivedDateTime` |
//! | `email.from.address` (array), `source.user.email`, `source.domain` | `SenderAddress` | `senderAddress` |
//! | `email.to.address` (array), `destination.user.email`, `destination.domain` | `RecipientAddress` | `recipientAddress` |
//! | `email.subject` | `Subject` | `subject` |
//! | `email.message_id` | `MessageId` | `messageId` |
//! | `email.local_id` | `MessageTraceId` | `id` |
//! | `source.ip` | `FromIP` | `fromIP` |
//! | `destination.ip` | `ToIP` | `toIP` |
//! | `event.outcome` | `Status`: `Delivered`, `Expanded`, `Resolved` → `success`; `Failed` → `failure`; others → `unknown` | `status` (same) |
//! | `email.direction` | from the sender's and recipient's domains and `local_domains`: `internal`, `outbound`, `inbound`, `external` (not set when `local_domains` is empty) | same |
//!
//! Also `ecs.version`, `event.kind = "event"`, `event.category = ["email"]`, `event.type =
//! ["info"]`. The row itself is kept, unchanged, under `microsoft.online_message_trace`; `_time`,
//! `_update` and the source's static `fields` stay at the top level. Empty and null values are
//! left out. A domain matches a local domain when it is equal to it or a subdomain of it.
//!
//! # Examples
//!
//! ```
//! use msgtrace::actors::dialect::Api;
//! use msgtrace::normalize::{to_ecs, EcsOptions};
//!
//! let row = serde_json::json!({
//!     "MessageTraceId": "a5e6dc0f-23df-4b20-d240-08dab38944a1",
//!     "SenderAddress": "noreply@azure.microsoft.com",
//!     "RecipientAddress": "linus@contoso.com",
//!     "Status": "Delivered",
//!     "Received": "2022-10-21T17:25:36.969376Z",
//! });
//! let opts = EcsOptions { api: Api::Reporting, local_domains: vec!["contoso.com".into()], keep: vec![] };
//! let ecs = to_ecs(row.as_object().unwrap(), &opts);
//! assert_eq!(ecs["email"]["direction"], "inbound");
//! assert_eq!(ecs["event"]["outcome"], "success");
//! assert_eq!(ecs["email"]["to"]["address"][0], "linus@contoso.com");
//! ```

use msgtrace_actors::dialect::{parse_timestamp, Api, Row};
use msgtrace_actors::hook::Hook;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The ECS version the mapping follows.
pub const ECS_VERSION: &str = "8.11.0";

/// Where the original row is kept in a normalized event.
pub const ORIGINAL_FIELD: &str = "microsoft";

/// How one source's rows are normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsOptions {
    /// The source's API (which field names its rows have).
    pub api: Api,
    /// The organisation's domains, lower-cased, for `email.direction`.
    pub local_domains: Vec<String>,
    /// Fields kept at the top level as they are (the source's static `fields`).
    pub keep: Vec<String>,
}

/// The names of one dialect's fields.
struct Names {
    trace_id: &'static str,
    message_id: &'static str,
    received: &'static str,
    sender: &'static str,
    recipient: &'static str,
    subject: &'static str,
    status: &'static str,
    from_ip: &'static str,
    to_ip: &'static str,
}

fn names(api: Api) -> Names {
    match api {
        Api::Reporting => Names {
            trace_id: "MessageTraceId",
            message_id: "MessageId",
            received: "Received",
            sender: "SenderAddress",
            recipient: "RecipientAddress",
            subject: "Subject",
            status: "Status",
            from_ip: "FromIP",
            to_ip: "ToIP",
        },
        Api::Graph => Names {
            trace_id: "id",
            message_id: "messageId",
            received: "receivedDateTime",
            sender: "senderAddress",
            recipient: "recipientAddress",
            subject: "subject",
            status: "status",
            from_ip: "fromIP",
            to_ip: "toIP",
        },
    }
}

/// Maps one event's fields (a row plus `_time` and static fields) to ECS names.
pub fn to_ecs(fields: &Row, opts: &EcsOptions) -> Row {
    let n = names(opts.api);
    let text = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut out = Row::new();
    let mut original = Row::new();
    for (k, v) in fields {
        if k.starts_with('_') || opts.keep.contains(k) {
            out.insert(k.clone(), v.clone());
        } else {
            original.insert(k.clone(), v.clone());
        }
    }
    let time = text(n.received).and_then(parse_timestamp).or_else(|| {
        fields
            .get("_time")
            .and_then(Value::as_f64)
            .and_then(|t| chrono::DateTime::from_timestamp_micros((t * 1e6).round() as i64))
    });
    if let Some(t) = time {
        let s = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        set(&mut out, "@timestamp", s.clone().into());
        set(&mut out, "email.delivery_timestamp", s.into());
    }
    set(&mut out, "ecs.version", ECS_VERSION.into());
    set(&mut out, "event.kind", "event".into());
    set(&mut out, "event.category", json!(["email"]));
    set(&mut out, "event.type", json!(["info"]));
    if let Some(status) = text(n.status) {
        set(&mut out, "event.outcome", outcome(status).into());
    }
    let sender = text(n.sender);
    let recipient = text(n.recipient);
    address(&mut out, sender, "email.from.address", "source");
    address(&mut out, recipient, "email.to.address", "destination");
    for (from, to) in [
        (n.subject, "email.subject"),
        (n.message_id, "email.message_id"),
        (n.trace_id, "email.local_id"),
        (n.from_ip, "source.ip"),
        (n.to_ip, "destination.ip"),
    ] {
        if let Some(v) = text(from) {
            set(&mut out, to, v.into());
        }
    }
    if let Some(direction) = direction(&opts.local_domains, sender, recipient) {
        set(&mut out, "email.direction", direction.into());
    }
    set(
        &mut out,
        "microsoft.online_message_trace",
        Value::Object(original),
    );
    out
}

/// One side of the message: `email.{from,to}.address`, `{source,destination}.user.email` and
/// its domain.
fn address(out: &mut Row, address: Option<&str>, email_key: &str, side: &str) {
    let Some(a) = address else { return };
    set(out, email_key, json!([a]));
    set(out, &format!("{side}.user.email"), a.into());
    if let Some(d) = domain(a) {
        set(out, &format!("{side}.domain"), d.into());
    }
}

/// `email.direction` from which side's domain is one of `local_domains` (or a subdomain of
/// one); `None` when no local domains are configured.
fn direction(
    local_domains: &[String],
    sender: Option<&str>,
    recipient: Option<&str>,
) -> Option<&'static str> {
    if local_domains.is_empty() {
        return None;
    }
    let local = |a: Option<&str>| {
        a.and_then(domain).map(|d| {
            let d = d.to_ascii_lowercase();
            local_domains
                .iter()
                .any(|l| d == *l || d.strip_suffix(l.as_str()).is_some_and(|p| p.ends_with('.')))
        })
    };
    Some(match (local(sender), local(recipient)) {
        (Some(true), Some(true)) => "internal",
        (Some(true), Some(false)) => "outbound",
        (Some(false), Some(true)) => "inbound",
        (Some(false), Some(false)) => "external",
        _ => "unknown",
    })
}

/// ECS `event.outcome` of a delivery status.
fn outcome(status: &str) -> &'static str {
    match status.to_ascii_lowercase().as_str() {
        "delivered" | "expanded" | "resolved" => "success",
        "failed" => "failure",
        _ => "unknown",
    }
}

fn domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// Sets a dotted path, creating the objects on the way (a non-object in the way is replaced).
fn set(row: &mut Row, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = row;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_owned(), value);
            return;
        }
        let slot = cur
            .entry(p.to_owned())
            .or_insert_with(|| Value::Object(Row::new()));
        if !slot.is_object() {
            *slot = Value::Object(Row::new());
        }
        cur = slot.as_object_mut().expect("an object");
    }
}

/// A hook that normalizes the events of the given sources (by input id) and leaves others alone.
pub fn ecs_hook(sources: HashMap<String, EcsOptions>) -> Hook {
    Arc::new(move |events| {
        for e in events.iter_mut() {
            if let Some(opts) = sources.get(&*e.meta.input_id) {
                e.fields = to_ecs(&e.fields, opts);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(api: Api) -> EcsOptions {
        EcsOptions {
            api,
            local_domains: vec!["contoso.com".into()],
            keep: vec!["env".into()],
        }
    }

    /// The Reporting row of Elastic's sample event maps to the values of that sample.
    #[test]
    fn matches_elastics_sample_event() {
        let sample: Value = serde_json::from_str(include_str!(
            "../../shared/reference/fixtures/elastic/sample_event.json"
        ))
        .unwrap();
        let original: Value =
            serde_json::from_str(sample["event"]["original"].as_str().unwrap()).unwrap();
        let mut row = original.as_object().unwrap().clone();
        row.insert("_time".into(), 1_666_373_136.969_376.into());
        row.insert("env".into(), "prod".into());
        let ecs = Value::Object(to_ecs(&row, &opts(Api::Reporting)));
        for path in [
            "/email/from/address",
            "/email/to/address",
            "/email/subject",
            "/email/message_id",
            "/email/local_id",
            "/source/ip",
            "/event/outcome",
            "/source/user/email",
            "/destination/user/email",
            "/source/domain",
            "/destination/domain",
        ] {
            assert_eq!(ecs.pointer(path), sample.pointer(path), "{path}");
        }
        assert_eq!(ecs["@timestamp"], "2022-10-21T17:25:36.969376Z");
        assert_eq!(ecs["email"]["direction"], "inbound");
        // ToIP is null in the row: no destination.ip.
        assert!(ecs.pointer("/destination/ip").is_none());
        assert_eq!(ecs["env"], "prod");
        assert!(ecs["_time"].is_number());
        assert_eq!(
            ecs["microsoft"]["online_message_trace"]["MessageTraceId"],
            sample["microsoft"]["online_message_trace"]["MessageTraceId"]
        );
        assert!(ecs.get("MessageTraceId").is_none() && ecs.get("env").is_some());
    }

    #[test]
    fn graph_rows_and_directions() {
        let row = |from: &str, to: &str, status: &str| {
            json!({
                "id": "t1", "messageId": "<m@x>", "receivedDateTime": "2024-05-01T10:00:00.1234567Z",
                "senderAddress": from, "recipientAddress": to, "subject": "hi",
                "status": status, "fromIP": "203.0.113.5", "toIP": "198.51.100.7", "size": 10
            })
            .as_object()
            .unwrap()
            .clone()
        };
        let o = opts(Api::Graph);
        let e = Value::Object(to_ecs(
            &row("a@contoso.com", "b@mail.contoso.com", "Delivered"),
            &o,
        ));
        assert_eq!(e["email"]["direction"], "internal");
        assert_eq!(e["email"]["local_id"], "t1");
        assert_eq!(e["destination"]["ip"], "198.51.100.7");
        assert_eq!(e["source"]["ip"], "203.0.113.5");
        assert_eq!(e["@timestamp"], "2024-05-01T10:00:00.123456Z");
        assert_eq!(e["event"]["outcome"], "success");
        let e = Value::Object(to_ecs(
            &row("a@CONTOSO.com", "b@fabrikam.com", "Failed"),
            &o,
        ));
        assert_eq!(e["email"]["direction"], "outbound");
        assert_eq!(e["event"]["outcome"], "failure");
        let e = Value::Object(to_ecs(
            &row("a@notcontoso.com", "b@fabrikam.com", "Quarantined"),
            &o,
        ));
        assert_eq!(e["email"]["direction"], "external");
        assert_eq!(e["event"]["outcome"], "unknown");
        let e = Value::Object(to_ecs(&row("a@fabrikam.com", "", "Pending"), &o));
        assert_eq!(e["email"]["direction"], "unknown");
        let none = EcsOptions {
            local_domains: vec![],
            ..o
        };
        let e = Value::Object(to_ecs(
            &row("a@fabrikam.com", "b@contoso.com", "Delivered"),
            &none,
        ));
        assert!(e["email"].get("direction").is_none());
    }
}
