//! Per-recipient message trace details (Graph `getDetailsByRecipient`): which summary rows have
//! them fetched ([`DetailsMode`]), the request URL ([`details_url`]), a detail page
//! ([`parse_details`]), and what a detail record becomes ([`detail_event`]) and is identified by
//! ([`DetailIdentity`]). Pure functions, no I/O.
//!
//! A detail record is one event of a message's route to one recipient (Receive, Submit, Deliver,
//! Fail, …). In Microsoft's sample every record carries the trace's own `id`, so `id` does not
//! identify a record: (`id`, recipient, `dateTime`, `event`) does.
//!
//! # Examples
//!
//! ```
//! use msgtrace_actors::dialect::details::{details_url, DetailsMode};
//! use url::Url;
//!
//! let api = Url::parse("https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces").unwrap();
//! let url = details_url(&api, "7e3b2b2e-1b5e-4b17-80cc-2af6c1d9a3b1", "o'neil@contoso.com").unwrap();
//! assert_eq!(
//!     url.as_str(),
//!     "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces/7e3b2b2e-1b5e-4b17-80cc-2af6c1d9a3b1/getDetailsByRecipient(recipientAddress='o''neil@contoso.com')"
//! );
//! assert!(DetailsMode::NotDelivered.wants("failed"));
//! assert!(!DetailsMode::NotDelivered.wants("Delivered"));
//! ```

use super::{epoch_seconds, parse_timestamp, Api, DialectError, Page, Row};
use chrono::{DateTime, Utc};
use serde_json::Value;
use url::Url;

/// Which summary rows have their details fetched (source key `details`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DetailsMode {
    /// None (the default).
    #[default]
    None,
    /// Rows whose status is anything but `delivered` or `expanded` (case-insensitive): the ones
    /// an analyst looks up by hand (failed, quarantined, filtered as spam, pending, …).
    NotDelivered,
    /// Every row.
    All,
}

impl DetailsMode {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DetailsMode::None => "none",
            DetailsMode::NotDelivered => "not_delivered",
            DetailsMode::All => "all",
        }
    }

    /// Whether a row of this status has its details fetched.
    pub fn wants(self, status: &str) -> bool {
        match self {
            DetailsMode::None => false,
            DetailsMode::All => true,
            DetailsMode::NotDelivered => {
                let s = status.trim();
                !s.eq_ignore_ascii_case("delivered") && !s.eq_ignore_ascii_case("expanded")
            }
        }
    }
}

/// The OData function of the detail request.
pub const FUNCTION: &str = "getDetailsByRecipient";

/// The fields of a detail record (besides `data`, `action` and `description`) that say a page is
/// one of details: a non-empty page none of whose records has any of them is not.
pub const RECORD_FIELDS: [&str; 3] = ["id", "dateTime", "event"];

/// Why a summary row's detail URL cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DetailUrlError {
    /// The row has no trace id or no recipient.
    #[error("a row without a trace id or a recipient address has no details to ask for")]
    MissingIdentity,
    /// The source's URL cannot take a path (`mailto:`-like URLs).
    #[error("the API URL {0} cannot take a path for the detail request; set url to the messageTraces endpoint")]
    NotABase(String),
}

/// The detail request of one summary row: `{messageTraces url}/{id}/getDetailsByRecipient(recipientAddress='{address}')`.
///
/// The trace id is one percent-encoded path segment; the address is an OData string literal
/// ([`odata_string`]: single quotes doubled, the rest percent-encoded). The query and fragment
/// of `messages_url` are dropped: the `$filter` of the summary query is not the function's.
pub fn details_url(
    messages_url: &Url,
    trace_id: &str,
    recipient: &str,
) -> Result<Url, DetailUrlError> {
    if trace_id.is_empty() || recipient.is_empty() {
        return Err(DetailUrlError::MissingIdentity);
    }
    if messages_url.cannot_be_a_base() {
        return Err(DetailUrlError::NotABase(messages_url.to_string()));
    }
    let mut url = messages_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let path = format!(
        "{}/{}/{FUNCTION}(recipientAddress={})",
        url.path().trim_end_matches('/'),
        percent_encode(trace_id, b""),
        odata_string(recipient)
    );
    url.set_path(&path);
    Ok(url)
}

/// An OData string literal for a URL path: `'…'` with every single quote doubled (`o'neil` →
/// `'o''neil'`), and every byte but the unreserved characters, `@` and the quotes
/// percent-encoded (`+` → `%2B`, `#` → `%23`, `%` → `%25`, `é` → `%C3%A9`, a space → `%20`).
pub fn odata_string(s: &str) -> String {
    format!("'{}'", percent_encode(&s.replace('\'', "''"), b"@'"))
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - . _ ~` and those in `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a detail page `{"value":[{"id","messageId","dateTime","event","action","description",
/// "data"},…]}` (with `@odata.nextLink` when the service pages it), the envelope read as
/// [`Api::parse_page`] reads Graph's (error bodies, next links resolved and kept on the
/// request's origin, bytes that are not UTF-8 repaired). A non-empty page none of whose records
/// has `id`, `dateTime` or `event` is not a detail page.
pub fn parse_details(body: &[u8], request_url: &Url) -> Result<Page, DialectError> {
    let page = Api::Graph.parse_page(body, request_url)?;
    let recordless = |r: &Row| !RECORD_FIELDS.iter().any(|f| r.contains_key(*f));
    if !page.rows.is_empty() && page.rows.iter().all(recordless) {
        return Err(DialectError::NoTraceRows {
            rows: page.rows.len(),
            fields: RECORD_FIELDS,
        });
    }
    Ok(page)
}

/// What identifies a detail record: the trace id, the recipient (from the summary row), when
/// and what happened. `id` alone does not: every record of a trace carries the trace's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DetailIdentity {
    /// The trace id (`id`).
    pub id: String,
    /// The recipient of the summary row the details were asked for.
    pub recipient: String,
    /// `dateTime`, parsed.
    pub date_time: DateTime<Utc>,
    /// `event` (`Receive`, `Deliver`, …), verbatim.
    pub event: String,
}

/// A detail record's identity; `None` unless `id` and `event` are non-empty strings and
/// `dateTime` is a time [`parse_timestamp`] reads.
pub fn detail_identity(record: &Row, recipient: &str) -> Option<DetailIdentity> {
    let text = |k: &str| {
        record
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    Some(DetailIdentity {
        id: text("id")?.to_owned(),
        recipient: recipient.to_owned(),
        date_time: parse_timestamp(text("dateTime")?)?,
        event: text("event")?.to_owned(),
    })
}

/// A detail record made an event's fields, with what the caller needs besides.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailEvent {
    /// The record's own fields, plus `recipientAddress` (the summary row's), `_time` (epoch
    /// seconds of `dateTime`, or of `now` when it cannot be read) and `_detail: true`.
    pub fields: Row,
    /// The record's identity; `None` for a record that cannot be identified (delivered flagged
    /// as broken, as rows are).
    pub identity: Option<DetailIdentity>,
}

/// Makes a detail record (asked for `recipient`) an event's fields ([`DetailEvent`]).
pub fn detail_event(mut record: Row, recipient: &str, now: DateTime<Utc>) -> DetailEvent {
    let identity = detail_identity(&record, recipient);
    let time = identity.as_ref().map_or(now, |i| i.date_time);
    record.insert("recipientAddress".into(), recipient.into());
    record.insert("_time".into(), epoch_seconds(time).into());
    record.insert("_detail".into(), true.into());
    DetailEvent {
        fields: record,
        identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRAPH: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";
    const ID: &str = "7e3b2b2e-1b5e-4b17-80cc-2af6c1d9a3b1";

    fn url(recipient: &str) -> String {
        details_url(&Url::parse(GRAPH).unwrap(), ID, recipient)
            .unwrap()
            .to_string()
    }

    fn function(recipient: &str) -> String {
        url(recipient)
            .strip_prefix(&format!("{GRAPH}/{ID}/"))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_address_is_an_odata_literal_quotes_doubled_the_rest_percent_encoded() {
        assert_eq!(
            function("robert@contoso.com"),
            "getDetailsByRecipient(recipientAddress='robert@contoso.com')"
        );
        assert_eq!(
            function("o'neil@contoso.com"),
            "getDetailsByRecipient(recipientAddress='o''neil@contoso.com')"
        );
        assert_eq!(
            function("a''b'@x"),
            "getDetailsByRecipient(recipientAddress='a''''b''@x')"
        );
        assert_eq!(
            function("first+tag@x.com"),
            "getDetailsByRecipient(recipientAddress='first%2Btag@x.com')"
        );
        assert_eq!(
            function("a#b%c d/e?f&g=h@x"),
            "getDetailsByRecipient(recipientAddress='a%23b%25c%20d%2Fe%3Ff%26g%3Dh@x')"
        );
        assert_eq!(
            function("josé@exämple.com"),
            "getDetailsByRecipient(recipientAddress='jos%C3%A9@ex%C3%A4mple.com')"
        );
    }

    #[test]
    fn the_url_keeps_the_endpoint_drops_its_query_and_encodes_the_id() {
        let base = Url::parse(&format!("{GRAPH}/?$top=5&$filter=x#frag")).unwrap();
        let u = details_url(&base, "a/b c", "r@x").unwrap();
        assert_eq!(
            u.as_str(),
            format!("{GRAPH}/a%2Fb%20c/getDetailsByRecipient(recipientAddress='r@x')")
        );
        assert_eq!(
            details_url(&base, "", "r@x"),
            Err(DetailUrlError::MissingIdentity)
        );
        assert_eq!(
            details_url(&base, "id", ""),
            Err(DetailUrlError::MissingIdentity)
        );
        let odd = Url::parse("mailto:x@y").unwrap();
        assert!(matches!(
            details_url(&odd, "id", "r"),
            Err(DetailUrlError::NotABase(_))
        ));
    }

    #[test]
    fn which_rows_have_details() {
        for s in [
            "delivered",
            "Delivered",
            " DELIVERED ",
            "expanded",
            "Expanded",
        ] {
            assert!(!DetailsMode::NotDelivered.wants(s), "{s}");
            assert!(DetailsMode::All.wants(s), "{s}");
        }
        for s in [
            "failed",
            "Quarantined",
            "filteredAsSpam",
            "pending",
            "GettingStatus",
            "",
        ] {
            assert!(DetailsMode::NotDelivered.wants(s), "{s}");
        }
        assert!(!DetailsMode::None.wants("failed"));
        assert_eq!(DetailsMode::default(), DetailsMode::None);
        for m in [
            DetailsMode::None,
            DetailsMode::NotDelivered,
            DetailsMode::All,
        ] {
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json, m.as_str());
        }
    }

    #[test]
    fn a_detail_event_is_the_record_plus_recipient_time_and_flag() {
        let record: Row = serde_json::from_str(
            r#"{"id":"t","messageId":"<m@x>","dateTime":"2025-06-13T10:30:05Z","event":"Receive","action":"","description":"d","data":"<root/>"}"#,
        )
        .unwrap();
        let now = DateTime::from_timestamp(0, 0).unwrap();
        let e = detail_event(record.clone(), "Robert@contoso.com", now);
        assert_eq!(e.fields["recipientAddress"], "Robert@contoso.com");
        assert_eq!(e.fields["_detail"], true);
        assert_eq!(e.fields["_time"], 1_749_810_605.0);
        for (k, v) in &record {
            assert_eq!(&e.fields[k], v, "{k} kept");
        }
        let id = e.identity.unwrap();
        assert_eq!(
            (id.id.as_str(), id.recipient.as_str(), id.event.as_str()),
            ("t", "Robert@contoso.com", "Receive")
        );
        assert_eq!(id.date_time.timestamp(), 1_749_810_605);
    }

    #[test]
    fn a_record_without_its_identity_has_none_and_takes_the_time_of_now() {
        let now = DateTime::from_timestamp(1000, 0).unwrap();
        for body in [
            r#"{"id":"t","dateTime":"soon","event":"Receive"}"#,
            r#"{"id":"","dateTime":"2025-06-13T10:30:05Z","event":"Receive"}"#,
            r#"{"id":"t","dateTime":"2025-06-13T10:30:05Z"}"#,
            r#"{"id":"t","dateTime":7,"event":"Receive"}"#,
        ] {
            let record: Row = serde_json::from_str(body).unwrap();
            let e = detail_event(record, "r@x", now);
            assert_eq!(e.identity, None, "{body}");
            assert_eq!(e.fields["_time"], 1000.0, "{body}");
        }
    }

    #[test]
    fn same_id_other_time_or_event_is_another_record() {
        let rec = |t: &str, ev: &str| -> Row {
            serde_json::from_value(serde_json::json!({"id": "t", "dateTime": t, "event": ev}))
                .unwrap()
        };
        let a = detail_identity(&rec("2025-06-13T10:30:05Z", "Receive"), "r").unwrap();
        let b = detail_identity(&rec("2025-06-13T10:30:10Z", "Receive"), "r").unwrap();
        let c = detail_identity(&rec("2025-06-13T10:30:05Z", "Deliver"), "r").unwrap();
        let d = detail_identity(&rec("2025-06-13T10:30:05.0000000Z", "Receive"), "r").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a, d,
            "the same instant written otherwise is the same record"
        );
        let other_recipient = detail_identity(&rec("2025-06-13T10:30:05Z", "Receive"), "s");
        assert_ne!(Some(a), other_recipient);
    }

    #[test]
    fn detail_pages_read_like_graph_pages_and_refuse_what_is_not_one() {
        let request = Url::parse(&url("r@x")).unwrap();
        let page = parse_details(
            br#"{"value":[{"id":"t","dateTime":"2025-06-13T10:30:05Z","event":"Receive"}],"@odata.nextLink":"?$skiptoken=2"}"#,
            &request,
        )
        .unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(
            page.next_link.unwrap().as_str(),
            format!("{}?$skiptoken=2", request.as_str())
        );
        assert_eq!(
            parse_details(br#"{"value":[]}"#, &request)
                .unwrap()
                .rows
                .len(),
            0
        );
        let err = |b: &str| parse_details(b.as_bytes(), &request).unwrap_err();
        assert!(matches!(
            err(r#"{"value":[{"x":1}]}"#),
            DialectError::NoTraceRows { .. }
        ));
        assert!(matches!(
            err(r#"{"error":{"code":"NotFound","message":"no such trace"}}"#),
            DialectError::ErrorBody { .. }
        ));
        assert!(matches!(
            err(r#"{"value":[{"id":"t","#),
            DialectError::NotJson { .. }
        ));
        assert!(matches!(
            err(r#"{"value":[],"@odata.nextLink":"https://elsewhere.example/x"}"#),
            DialectError::ForeignNextLink { .. }
        ));
    }

    proptest! {
        #[test]
        fn any_address_round_trips_through_the_literal(address in "\\PC{1,40}") {
            let lit = odata_string(&address);
            prop_assert!(lit.starts_with('\'') && lit.ends_with('\''));
            let inner = &lit[1..lit.len() - 1];
            prop_assert!(inner.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~@'%".contains(&b)));
            // Decoding the percent escapes and undoubling the quotes gives the address back.
            let mut bytes = Vec::new();
            let raw = inner.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'%' {
                    let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap();
                    bytes.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    bytes.push(raw[i]);
                    i += 1;
                }
            }
            let decoded = String::from_utf8(bytes).unwrap();
            prop_assert!(!decoded.replace("''", "").contains('\''), "quotes come in pairs");
            prop_assert_eq!(decoded.replace("''", "'"), address.as_str());
            // And the URL keeps the literal as it is.
            let u = details_url(&Url::parse(GRAPH).unwrap(), ID, &address).unwrap();
            prop_assert!(u.path().ends_with(&format!("(recipientAddress={lit})")), "{}", u);
        }
    }
}
