//! The two message trace API dialects: URLs, response pages, rows, timestamps and error bodies.
//!
//! Pure functions, no I/O. [`Api::Graph`] is Microsoft Graph
//! (`/admin/exchange/tracing/messageTraces`, camelCase rows, absolute `@odata.nextLink`);
//! [`Api::Reporting`] is the legacy Reporting Web Service (`reporting.svc/MessageTrace`, PascalCase
//! rows, relative `odata.nextLink`, optionally the OData "verbose" envelope `{"d":…}`).
//!
//! Parsing is lenient about envelopes (each dialect accepts the other's next-link spelling and
//! both JSON light and verbose) and strict about anything it cannot interpret: an unexpected
//! shape is a [`DialectError`] with a one-line message, never a panic and never a silently empty
//! page.
//!
//! # Examples
//!
//! ```
//! use msgtrace_actors::dialect::Api;
//! use url::Url;
//!
//! let request = Url::parse("https://reports.office365.com/ecp/reportingwebservice/reporting.svc/MessageTrace?$top=2").unwrap();
//! let body = br#"{"value":[{"MessageTraceId":"t1","RecipientAddress":"a@b.c","Received":"2022-09-05T18:10:13.4907658"}],
//!                 "odata.nextLink":"../../reportingwebservice/reporting.svc/MessageTrace?$top=2&$skiptoken=2"}"#;
//! let page = Api::Reporting.parse_page(body, &request).unwrap();
//! assert_eq!(page.rows.len(), 1);
//! assert_eq!(Api::Reporting.row_identity(&page.rows[0]), Some(("t1".into(), "a@b.c".into())));
//! assert_eq!(
//!     page.next_link.unwrap().as_str(),
//!     "https://reports.office365.com/ecp/reportingwebservice/reporting.svc/MessageTrace?$top=2&$skiptoken=2"
//! );
//! ```

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use url::Url;

pub mod details;
mod envelope;
pub mod raw;
mod scan;

/// How many characters of a response body (or of a value taken from it) an error message quotes.
const MAX_QUOTED_CHARS: usize = 200;

/// How many characters of a structured error message [`error_summary`] keeps.
const MAX_SUMMARY_CHARS: usize = 300;

/// Which message trace API a source talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Microsoft Graph `admin/exchange/tracing/messageTraces` (current).
    Graph,
    /// The legacy Office 365 Reporting Web Service `reporting.svc/MessageTrace` (retiring).
    Reporting,
}

/// One message trace row, as the API returned it (minus OData `__metadata`).
pub type Row = serde_json::Map<String, Value>;

/// How far from each end of a body [`Api::peek_next_link`] looks for the next link.
pub const PEEK_WINDOW: usize = 16 * 1024;

/// One parsed response page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The rows of this page, in the order the API returned them (newest first, per the docs).
    pub rows: Vec<Row>,
    /// The absolute URL of the next page, already resolved against the request URL; `None` on the
    /// last page. A page may be empty and still have a next link: follow it.
    pub next_link: Option<Url>,
    /// The body had bytes that are not UTF-8, read as U+FFFD: rows holding that character may
    /// have lost a byte, and are delivered flagged as broken.
    pub repaired: bool,
}

/// A response body that is not a message trace page.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialectError {
    /// The body is empty (or only whitespace).
    #[error("response body is empty (expected a JSON object with a `value` array)")]
    EmptyBody,
    /// The body is not JSON; `start` is [`error_summary`] of the body.
    #[error("response is not JSON ({reason}); body starts: {start}")]
    NotJson {
        /// The JSON parser's complaint.
        reason: String,
        /// A one-line summary of the body (at most about 200 characters).
        start: String,
    },
    /// The body is JSON but not an object.
    #[error("response JSON is {found}, expected an object with a `value` array")]
    NotAnObject {
        /// What it is instead ("an array", "a string", …).
        found: &'static str,
    },
    /// The body is a Microsoft error document although the status said success.
    #[error("response is an error body, not a page: {summary}")]
    ErrorBody {
        /// [`error_summary`] of the body.
        summary: String,
    },
    /// The body is a JSON object without any known row array.
    #[error("response JSON has no `value` array (top-level keys: {keys})")]
    NoValueArray {
        /// The object's keys, comma-separated and shortened.
        keys: String,
    },
    /// The row container exists but is not an array.
    #[error("response field `{field}` is {found}, expected an array of rows")]
    RowsNotAnArray {
        /// Which field (`value`, `d`, `d.results`).
        field: &'static str,
        /// What it is instead.
        found: &'static str,
    },
    /// An element of the row array is not an object.
    #[error("row {index} of the response is {found}, expected a JSON object")]
    RowNotAnObject {
        /// Zero-based position in the row array.
        index: usize,
        /// What it is instead.
        found: &'static str,
    },
    /// The next link is present but not a string.
    #[error("response field `{field}` is {found}, expected a URL string")]
    NextLinkNotAString {
        /// Which field held it.
        field: &'static str,
        /// What it is instead.
        found: &'static str,
    },
    /// The next link cannot be resolved to a URL.
    #[error("nextLink `{link}` is not a valid URL: {reason}")]
    InvalidNextLink {
        /// The link as received (shortened).
        link: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The body holds more rows than were asked for (`$top`).
    #[error("the page holds more rows than the {max} asked for ($top): not a page")]
    TooManyRows {
        /// The rows asked for.
        max: usize,
    },
    /// No row of a non-empty page has any field of a message trace row (`{}`, `{"x":1}`): not a
    /// page. A row with some of them is a row, delivered flagged when it lacks its identity.
    #[error("none of the page's {rows} rows has any of the fields `{}`, `{}` or `{}`: not a message trace page", fields[0], fields[1], fields[2])]
    NoTraceRows {
        /// Rows in the page.
        rows: usize,
        /// The trace id, recipient and time fields.
        fields: [&'static str; 3],
    },
    /// The next link leads to another origin (scheme, host, port) than the page that named it:
    /// it is never followed, so that no credential is sent there.
    #[error("nextLink `{link}` leads away from {origin}: not followed, no credential is sent to another host")]
    ForeignNextLink {
        /// The link (shortened, without its query).
        link: String,
        /// The origin of the request that named it.
        origin: String,
    },
    /// The next link resolves to the URL that was just requested: following it would loop.
    #[error("nextLink `{link}` is the URL just requested; following it would loop forever")]
    NextLinkLoops {
        /// The resolved link (shortened).
        link: String,
    },
}

impl Api {
    /// The URL of the first page for the inclusive window [`start`, `end_inclusive`].
    ///
    /// * Graph: `$filter=receivedDateTime ge <start> and receivedDateTime le <end>`.
    /// * Reporting: `$filter=StartDate eq datetime'<start>' and EndDate eq datetime'<end>'`
    ///   (no `$format`: JSON light is the default and [`Api::parse_page`] also reads verbose).
    ///
    /// Times are [`format_timestamp`] (7 fractional digits, `Z`), and `$top=page_size`.
    /// Query parameters already in `base` are kept as they are, except `$filter`, `$top` and
    /// `$skiptoken`, which this function owns and replaces. Spaces are encoded `%20`, quotes
    /// `%27`; `$` and `:` stay literal. The fragment, if any, is dropped. The window is not
    /// validated here (see [`Api::max_window`]).
    pub fn first_page_url(
        self,
        base: &Url,
        start: DateTime<Utc>,
        end_inclusive: DateTime<Utc>,
        page_size: u32,
    ) -> Url {
        let (start, end) = (format_timestamp(start), format_timestamp(end_inclusive));
        let filter = match self {
            Api::Graph => {
                format!("receivedDateTime ge {start} and receivedDateTime le {end}")
            }
            Api::Reporting => {
                format!("StartDate eq datetime'{start}' and EndDate eq datetime'{end}'")
            }
        };
        let owned = ["$filter", "$top", "$skiptoken"];
        let mut parts: Vec<String> = base
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|part| !part.is_empty())
            .filter(|part| {
                let key = url::form_urlencoded::parse(part.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default();
                !owned.contains(&key.as_str())
            })
            .map(str::to_owned)
            .collect();
        parts.push(format!("$filter={}", encode_query_value(&filter)));
        parts.push(format!("$top={page_size}"));
        let mut url = base.clone();
        url.set_fragment(None);
        url.set_query(Some(&parts.join("&")));
        url
    }

    /// Parses a 200 response body into rows and the next page's URL.
    ///
    /// Accepted envelopes (on both dialects): `{"value":[…]}` with `@odata.nextLink` or
    /// `odata.nextLink` (absolute or relative), and OData verbose `{"d":{"results":[…],"__next":…}}`
    /// or `{"d":[…]}`. A relative next link is resolved against `request_url` (RFC 3986). Each
    /// row's `__metadata` object is dropped: it is OData envelope (entity URI and type), not trace
    /// data. An empty or null next link means "last page". An error document (`{"error":…}`,
    /// `{"odata.error":…}`, `{"ErrorCode":…}`) is reported as [`DialectError::ErrorBody`] even
    /// under status 200.
    ///
    /// A body with bytes that are not UTF-8 (one bad byte in a subject) is read with each bad
    /// sequence replaced by U+FFFD, and [`Page::repaired`] set: the rows around it are good, and
    /// the rows with a replaced character are delivered flagged as broken.
    pub fn parse_page(self, body: &[u8], request_url: &Url) -> Result<Page, DialectError> {
        self.read_page_repairing(body, request_url, usize::MAX)
    }

    /// [`Api::parse_page`] for a page asked for with `$top = max_rows`, as the fetcher reads
    /// pages: a body with more rows is not a page ([`DialectError::TooManyRows`]), found without
    /// building the extra rows, so that a page's memory is bounded by the rows asked for; nor is
    /// a non-empty page none of whose rows has any field of a message trace row
    /// ([`DialectError::NoTraceRows`]: `{"value":[{},{},…]}`).
    pub fn parse_page_of_at_most(
        self,
        body: &[u8],
        request_url: &Url,
        max_rows: usize,
    ) -> Result<Page, DialectError> {
        let page = self.read_page_repairing(body, request_url, max_rows)?;
        let rows = &page.rows;
        let (id, recipient) = self.identity_fields();
        let time = self.time_field();
        let traceless = |r: &Row| ![id, recipient, time].iter().any(|f| r.contains_key(*f));
        if !rows.is_empty() && rows.iter().all(traceless) {
            return Err(DialectError::NoTraceRows {
                rows: rows.len(),
                fields: [id, recipient, time],
            });
        }
        Ok(page)
    }

    fn read_page_repairing(
        self,
        body: &[u8],
        request_url: &Url,
        max_rows: usize,
    ) -> Result<Page, DialectError> {
        match self.read_page(body, request_url, max_rows) {
            Err(DialectError::NotJson { .. }) if std::str::from_utf8(body).is_err() => {
                let repaired = String::from_utf8_lossy(body);
                let mut page = self.read_page(repaired.as_bytes(), request_url, max_rows)?;
                page.repaired = true;
                Ok(page)
            }
            other => other,
        }
    }

    fn read_page(
        self,
        body: &[u8],
        request_url: &Url,
        max_rows: usize,
    ) -> Result<Page, DialectError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DialectError::EmptyBody);
        }
        // Only verbose rows carry `__metadata`: when the body never names it, no row is
        // searched for it. (A key spelt with escapes, `"\u005f_metadata"`, would then stay in
        // its row: an extra field, no loss.)
        let metadata = memchr::memmem::find(body, b"\"__metadata\"").is_some();
        let top = envelope::read(body, max_rows, metadata).map_err(|e| match e {
            envelope::Read::Dialect(e) => e,
            envelope::Read::Json(e) => DialectError::NotJson {
                reason: e.to_string(),
                start: error_summary(body),
            },
        })?;
        let rows = match (top.value, top.d) {
            (Some(rows), _) | (None, Some(rows)) => rows,
            (None, None) if top.d_keys.is_some() => {
                return Err(DialectError::NoValueArray {
                    keys: format!("d.{{{}}}", keys_of(top.d_keys.as_deref().unwrap_or(&[]))),
                })
            }
            (None, None) if top.error_key => {
                return Err(DialectError::ErrorBody {
                    summary: error_summary(body),
                })
            }
            (None, None) => {
                return Err(DialectError::NoValueArray {
                    keys: keys_of(&top.keys),
                })
            }
        };
        let [odata4, odata3, next] = top.links;
        let link = [
            ("@odata.nextLink", odata4),
            ("odata.nextLink", odata3),
            ("__next", next),
            ("d.__next", top.d_next),
        ]
        .into_iter()
        .find_map(|(field, value)| value.map(|v| (field, v)));
        let next_link = match link {
            None | Some((_, Value::Null)) => None,
            Some((_, Value::String(s))) if s.trim().is_empty() => None,
            Some((_, Value::String(s))) => Some(resolve_next_link(s.trim(), request_url)?),
            Some((field, other)) => {
                return Err(DialectError::NextLinkNotAString {
                    field,
                    found: describe(&other),
                })
            }
        };
        Ok(Page {
            rows,
            next_link,
            repaired: false,
        })
    }

    /// The next link of a page read off its body without parsing it, resolved as
    /// [`Api::parse_page`] resolves it. Services put the link after the rows (or, some, before
    /// them), so only the last [`PEEK_WINDOW`] bytes are searched, then the first (each window
    /// also takes a key that crosses its inner edge): a key the body lacks (Reporting has no
    /// `@odata.nextLink`) does not cost a search of the whole body. In each window the keys
    /// [`Api::parse_page`] tries are tried in its order, `"@odata.nextLink":`, then
    /// `"odata.nextLink":`, then `"__next":`, the last of each in the window. A guess, to start
    /// the next request while the page is still being parsed: the caller checks it against the
    /// parsed page's link (a row's field name could end in the key), and `None` only means no
    /// guess.
    pub fn peek_next_link(self, body: &[u8], request_url: &Url) -> Option<Url> {
        const KEYS: [&[u8]; 3] = [b"\"@odata.nextLink\"", b"\"odata.nextLink\"", b"\"__next\""];
        // A key that starts in a window and ends past its inner edge is still the window's.
        let reach = PEEK_WINDOW + KEYS[0].len() - 1;
        let tail = body.len().saturating_sub(reach);
        let head = if tail == 0 { 0 } else { reach.min(body.len()) };
        [(tail, body.len()), (0, head)]
            .into_iter()
            .find_map(|(from, to)| {
                KEYS.iter().find_map(|key| {
                    let at = from + memchr::memmem::rfind(&body[from..to], key)?;
                    // The string runs on past the window if it must: it is read off the body.
                    let rest = body[at + key.len()..]
                        .trim_ascii_start()
                        .strip_prefix(b":")?;
                    let mut de = serde_json::Deserializer::from_slice(rest);
                    let link = <String as serde::Deserialize>::deserialize(&mut de).ok()?;
                    let link = link.trim();
                    (!link.is_empty())
                        .then(|| resolve_next_link(link, request_url).ok())
                        .flatten()
                })
            })
    }

    /// Name of the row field holding the received time: Graph `receivedDateTime`, Reporting
    /// `Received`.
    pub fn time_field(self) -> &'static str {
        match self {
            Api::Graph => "receivedDateTime",
            Api::Reporting => "Received",
        }
    }

    /// Names of the row fields that identify a row: (trace id, recipient). Graph `id` +
    /// `recipientAddress`, Reporting `MessageTraceId` + `RecipientAddress`.
    pub fn identity_fields(self) -> (&'static str, &'static str) {
        match self {
            Api::Graph => ("id", "recipientAddress"),
            Api::Reporting => ("MessageTraceId", "RecipientAddress"),
        }
    }

    /// The row's received time, parsed with [`parse_timestamp`]; `None` if missing or unreadable.
    pub fn row_time(self, row: &Row) -> Option<DateTime<Utc>> {
        row.get(self.time_field())
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
    }

    /// The row's identity (trace id, recipient), verbatim; `None` unless both fields are
    /// non-empty strings. The same identity can come back later with a new status (an update).
    pub fn row_identity(self, row: &Row) -> Option<(String, String)> {
        self.row_identity_ref(row)
            .map(|(id, recipient)| (id.to_owned(), recipient.to_owned()))
    }

    /// [`Api::row_identity`], borrowed from the row.
    pub fn row_identity_ref(self, row: &Row) -> Option<(&str, &str)> {
        let (id_field, recipient_field) = self.identity_fields();
        let field = |name: &str| {
            row.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        Some((field(id_field)?, field(recipient_field)?))
    }

    /// The largest `$top` the API accepts: Graph 5000 (documented), Reporting 2000 (folklore).
    pub fn max_page_size(self) -> u32 {
        match self {
            Api::Graph => 5000,
            Api::Reporting => 2000,
        }
    }

    /// The longest window one query may cover: 10 days. Documented for Graph; for Reporting it is
    /// folklore (collectors report "≤ 10 days back", one documents ≤ 200 h per query).
    pub fn max_window(self) -> chrono::Duration {
        chrono::Duration::days(10)
    }

    /// Name of the delivery status field (Graph `status`, Reporting `Status`).
    pub fn status_field(self) -> &'static str {
        match self {
            Api::Graph => "status",
            Api::Reporting => "Status",
        }
    }

    /// How far back the API keeps data: Graph 90 days (documented), Reporting 10 days (folklore).
    pub fn retention(self) -> chrono::Duration {
        match self {
            Api::Graph => chrono::Duration::days(90),
            Api::Reporting => chrono::Duration::days(10),
        }
    }
}

/// Parses a timestamp in any shape seen in real responses, as UTC:
///
/// * `2022-09-05T18:10:13.4907658` (no zone: UTC; up to 9 fractional digits; `T` or space),
/// * `2024-07-09T13:10:13.4907658Z`, `2026-01-21T14:12:34Z`, `…+02:00` (converted to UTC),
/// * `/Date(1659020996164)/` (milliseconds since the epoch), also with literal backslashes
///   `\/Date(…)\/` and with a zone suffix `/Date(1659020996164+0000)/` (the milliseconds are
///   UTC already; the suffix is informational and ignored).
///
/// Returns `None` for anything else.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = parse_plain_timestamp(s.as_bytes()) {
        return Some(t);
    }
    parse_timestamp_slowly(s)
}

/// The shapes nearly every row has, read by hand (a third of the cost of the general path, which
/// every Reporting row went through): `YYYY-MM-DDTHH:MM:SS`, then 1 to 9 fraction digits after a
/// dot, then `Z` or nothing; or the same with a space for the `T` and no `Z`. `None` for anything
/// else, which the general path then reads; where both read a string, they agree (tested).
fn parse_plain_timestamp(s: &[u8]) -> Option<DateTime<Utc>> {
    fn number(digits: &[u8]) -> Option<u32> {
        digits.iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    }
    if s.len() < 19 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let (rest, zulu) = match s.split_last() {
        Some((b'Z', rest)) => (rest, true),
        _ => (s, false),
    };
    // Nineteen bytes ending in `Z` (a seconds digit missing) are too short once it is cut off.
    if rest.len() < 19 {
        return None;
    }
    match (s[10], zulu) {
        (b'T', _) | (b' ', false) => {}
        _ => return None,
    }
    let nanos = match &rest[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            number(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        number(&s[0..4])? as i32,
        number(&s[5..7])?,
        number(&s[8..10])?,
    )?;
    let time = chrono::NaiveTime::from_hms_nano_opt(
        number(&s[11..13])?,
        number(&s[14..16])?,
        number(&s[17..19])?,
        nanos,
    )?;
    Some(date.and_time(time).and_utc())
}

/// [`parse_timestamp`] for every shape it accepts.
fn parse_timestamp_slowly(s: &str) -> Option<DateTime<Utc>> {
    if s.contains("Date(") {
        return parse_ms_date(s);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // What `NaiveDateTime::parse_from_str` does, without re-reading the format string for every
    // row (Reporting rows have no zone, so every one of them comes here).
    NAIVE_FORMATS
        .iter()
        .find_map(|items| {
            let mut parsed = chrono::format::Parsed::new();
            chrono::format::parse(&mut parsed, s, items.iter()).ok()?;
            parsed.to_naive_datetime_with_offset(0).ok()
        })
        .map(|t: NaiveDateTime| t.and_utc())
}

/// The zone-less timestamp shapes (taken as UTC), in the order they are tried, as parsed format
/// items.
static NAIVE_FORMATS: std::sync::LazyLock<[Vec<chrono::format::Item<'static>>; 3]> =
    std::sync::LazyLock::new(|| {
        [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ]
        .map(|fmt| chrono::format::StrftimeItems::new(fmt).collect())
    });

/// Parses the Microsoft JSON date `/Date(ms[+hhmm])/`, tolerating escaped slashes.
fn parse_ms_date(s: &str) -> Option<DateTime<Utc>> {
    let inner = s
        .trim_matches(|c| c == '/' || c == '\\')
        .strip_prefix("Date(")?
        .strip_suffix(')')?;
    // The sign of the number may be `-`; a zone suffix starts at a later `+` or `-`.
    let zone_at = inner
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i);
    let (millis, zone) = match zone_at {
        Some(i) => inner.split_at(i),
        None => (inner, ""),
    };
    let zone_ok =
        zone.is_empty() || (zone.len() == 5 && zone[1..].bytes().all(|b| b.is_ascii_digit()));
    let digits = millis.strip_prefix('-').unwrap_or(millis);
    if !zone_ok || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    DateTime::from_timestamp_millis(millis.parse().ok()?)
}

/// Epoch seconds with microsecond fractions: an event's `_time`.
pub fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_micros()) / 1e6
}

/// Formats a time as the APIs expect: RFC 3339 with 7 fractional digits and `Z`
/// (`2026-01-20T23:59:59.9999999Z`). Sub-100 ns precision is truncated.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    // A leap second is represented with nanoseconds ≥ 1e9; keep it within 7 digits.
    let ticks = t.timestamp_subsec_nanos().min(999_999_999) / 100;
    format!("{}.{ticks:07}Z", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// One line for a non-200 answer of the API: what happened, where (the URL without its
/// query), and what to do.
pub fn explain_status(api: Api, status: u16, body: &[u8], url: &str) -> String {
    let summary = error_summary(body);
    let hint = if status == 401 && summary.contains("Service principal-less Authentication failed")
    {
        " (the tenant has no service principal for Microsoft's message trace app 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373: create it, e.g. `New-MgServicePrincipal -AppId 8bd644d1-64a1-4d4b-ae52-2e0cbf64e373`, and allow a few hours for provisioning)"
    } else if status == 401 && api == Api::Reporting {
        " (the app needs the Office 365 Exchange Online application permission ReportingWebService.Read.All with admin consent, and its service principal an Entra role such as Global Reader or Exchange Administrator)"
    } else if status == 401 {
        " (the app needs the Graph application permission ExchangeMessageTrace.Read.All with admin consent)"
    } else if status == 403 {
        " (the app is authenticated but not allowed to read message trace: check the API permission, admin consent and role)"
    } else if status == 429 {
        " (throttled: Graph allows 100 requests per 5 minutes per tenant)"
    } else {
        ""
    };
    format!(
        "HTTP {status} from {}: {summary}{hint}",
        url.split('?').next().unwrap_or(url)
    )
}

/// Summarises a Microsoft error body in one line, for logs and error messages.
///
/// * Graph `{"error":{"code":"BadRequest","message":"…"}}` → `BadRequest: …`
/// * Entra ID `{"error":"invalid_client","error_description":"AADSTS…"}` → `invalid_client: AADSTS…`
/// * Reporting `{"ErrorCode":"","Message":"…"}` → `…` (`code: …` when the code is not empty)
/// * OData v3 `{"odata.error":{"code":…,"message":{"value":"…"}}}` → `code: …`
/// * HTML → the text of its `<title>`
/// * anything else → its first 200 characters; an empty body → `(empty body)`.
///
/// Whitespace runs (including newlines) become single spaces; structured messages are cut at
/// 300 characters.
pub fn error_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return "(empty body)".to_owned();
    }
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&text) {
        if let Some(summary) = json_error_summary(&obj) {
            return shorten(&one_line(&summary), MAX_SUMMARY_CHARS);
        }
    }
    if let Some(title) = html_title(&text) {
        return shorten(&title, MAX_SUMMARY_CHARS);
    }
    shorten(&one_line(&text), MAX_QUOTED_CHARS)
}

/// `code: message`, or just the message when the code is missing or empty.
fn code_and_message(code: Option<&Value>, message: Option<&Value>) -> Option<String> {
    let message = message.and_then(Value::as_str).map(str::trim)?;
    match code.and_then(Value::as_str).map(str::trim) {
        Some(code) if !code.is_empty() => Some(format!("{code}: {message}")),
        _ => Some(message.to_owned()),
    }
}

/// The summary of the known JSON error shapes, if `obj` is one.
fn json_error_summary(obj: &serde_json::Map<String, Value>) -> Option<String> {
    match obj.get("error") {
        // Graph / OData v4.
        Some(Value::Object(err)) => {
            return code_and_message(err.get("code"), err.get("message"))
                .or_else(|| err.get("code").and_then(Value::as_str).map(str::to_owned));
        }
        // Entra ID token endpoint.
        Some(Value::String(err)) => {
            return Some(
                code_and_message(obj.get("error"), obj.get("error_description"))
                    .unwrap_or_else(|| err.clone()),
            );
        }
        _ => {}
    }
    // OData v3 (Reporting Web Service in JSON light).
    if let Some(Value::Object(err)) = obj.get("odata.error") {
        let message = match err.get("message") {
            Some(Value::Object(m)) => m.get("value"),
            other => other,
        };
        return code_and_message(err.get("code"), message);
    }
    // Reporting Web Service plain error.
    code_and_message(obj.get("ErrorCode"), obj.get("Message"))
}

/// The text of an HTML document's `<title>`, with the common entities decoded.
fn html_title(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets identical to `text`.
    let lower = text.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let content_start = open + lower[open..].find('>')? + 1;
    let content_end = content_start + lower[content_start..].find("</title")?;
    let title = one_line(&text[content_start..content_end])
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    (!title.is_empty()).then_some(title)
}

/// Collapses every whitespace run (newlines included) into one space and trims.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `s` to `max` characters, marking the cut with `…`.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// "an array", "a string", … for error messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keys, comma-separated, shortened for an error message.
fn keys_of(keys: &[String]) -> String {
    if keys.is_empty() {
        return "none".to_owned();
    }
    shorten(&keys.join(", "), MAX_QUOTED_CHARS)
}

/// Resolves a next link against the request URL and checks that it can be followed.
fn resolve_next_link(link: &str, request_url: &Url) -> Result<Url, DialectError> {
    let invalid = |reason: String| DialectError::InvalidNextLink {
        link: shorten(link, MAX_QUOTED_CHARS),
        reason,
    };
    let url = request_url.join(link).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}` is not http or https",
            shorten(url.scheme(), 20)
        )));
    }
    if url.origin() != request_url.origin() {
        let mut shown = url.clone();
        shown.set_query(None);
        return Err(DialectError::ForeignNextLink {
            link: shorten(shown.as_str(), MAX_QUOTED_CHARS),
            origin: request_url.origin().ascii_serialization(),
        });
    }
    if url == *request_url {
        return Err(DialectError::NextLinkLoops {
            link: shorten(url.as_str(), MAX_QUOTED_CHARS),
        });
    }
    Ok(url)
}

/// Percent-encodes a query value: unreserved characters and `$ : , / @` stay literal, a space is
/// `%20`, everything else (including `'`, `+`, `&`, `=`, `#`) is `%XX`.
fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~$:,/@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Timelike};
    use proptest::prelude::*;

    const RWS: &str =
        "https://reports.office365.com/ecp/reportingwebservice/reporting.svc/MessageTrace";
    const GRAPH: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn day() -> (DateTime<Utc>, DateTime<Utc>) {
        let start = Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 20, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        (start, end)
    }

    #[test]
    fn the_next_link_read_off_the_end_is_the_parsed_one_or_none() {
        let peek = |api: Api, body: &str| {
            api.peek_next_link(body.as_bytes(), &url(GRAPH))
                .map(|u| u.to_string())
        };
        let parsed = |api: Api, body: &str| {
            api.parse_page(body.as_bytes(), &url(GRAPH))
                .unwrap()
                .next_link
                .map(|u| u.to_string())
        };
        // Escapes decoded, spaces around the colon, a relative link resolved: as the parse does.
        for (api, body) in [
            (
                Api::Graph,
                r#"{"value":[{"id":"a"}],"@odata.nextLink" : "https:\/\/graph.microsoft.com\/v1.0\/x?$skiptoken=a\u0026b=1"}"#,
            ),
            (
                Api::Graph,
                r#"{"@odata.nextLink":"?$skiptoken=2","value":[]}"#,
            ),
            (
                Api::Reporting,
                r#"{"d":{"results":[],"__next":"https://graph.microsoft.com/r/x?$skiptoken=2"}}"#,
            ),
            (
                Api::Reporting,
                r#"{"value":[],"odata.nextLink":"MessageTrace?$skiptoken=4"}"#,
            ),
        ] {
            assert!(peek(api, body).is_some(), "{body}");
            assert_eq!(peek(api, body), parsed(api, body), "{body}");
        }
        // No link, a null or empty one, one that is not a string: no guess.
        for body in [
            r#"{"value":[]}"#,
            r#"{"value":[],"@odata.nextLink":null}"#,
            r#"{"value":[],"@odata.nextLink":"  "}"#,
            r#"{"value":[],"@odata.nextLink":42}"#,
            r#"{"value":[],"@odata.nextLink":"unterminated"#,
        ] {
            assert_eq!(peek(Api::Graph, body), None, "{body}");
        }
        // A row's text cannot hold the key (its quotes are escaped)...
        let body = r#"{"@odata.nextLink":"https://graph.microsoft.com/g/right","value":[{"subject":"\"@odata.nextLink\":\"https://graph.microsoft.com/g/wrong\""}]}"#;
        assert_eq!(
            peek(Api::Graph, body).as_deref(),
            Some("https://graph.microsoft.com/g/right")
        );
        // ...but a field name ending in it can: a wrong guess, which is why the fetcher checks.
        let body = r#"{"@odata.nextLink":"https://graph.microsoft.com/g/right","value":[{"x\"@odata.nextLink":"https://graph.microsoft.com/g/wrong"}]}"#;
        assert_eq!(
            parsed(Api::Graph, body).as_deref(),
            Some("https://graph.microsoft.com/g/right")
        );
        assert_ne!(peek(Api::Graph, body), parsed(Api::Graph, body));

        // A page of a megabyte: the link is found after the rows and before them, whichever key
        // it has; amid the rows (no service puts it there) it is not looked for.
        let rows = format!("[{}]", vec![r#"{"Subject":"x"}"#; 70_000].join(","));
        assert!(rows.len() > 16 * PEEK_WINDOW);
        for (body, want) in [
            (
                format!(r#"{{"value":{rows},"odata.nextLink":"MessageTrace?$skiptoken=9"}}"#),
                Some("https://graph.microsoft.com/v1.0/admin/exchange/tracing/MessageTrace?$skiptoken=9"),
            ),
            (
                format!(r#"{{"@odata.nextLink":"https://graph.microsoft.com/g/first","value":{rows}}}"#),
                Some("https://graph.microsoft.com/g/first"),
            ),
            (format!(r#"{{"d":{{"results":{rows},"__next":"https://graph.microsoft.com/r/n"}}}}"#), Some("https://graph.microsoft.com/r/n")),
            (
                format!(r#"{{"value":{rows},"x":{rows},"@odata.nextLink":"https://graph.microsoft.com/g/end"}}"#),
                Some("https://graph.microsoft.com/g/end"),
            ),
            (format!(r#"{{"a":{rows},"@odata.nextLink":"https://graph.microsoft.com/g/mid","b":{rows}}}"#), None),
            (format!(r#"{{"value":{rows}}}"#), None),
        ] {
            assert_eq!(peek(Api::Reporting, &body).as_deref(), want);
            if want.is_some() {
                assert_eq!(peek(Api::Reporting, &body), parsed(Api::Reporting, &body));
            }
        }

        // The windows' inner edges. A window takes a key that starts inside it, even if the key
        // runs past its edge; a key that starts one byte further in is not looked for.
        let key = r#""@odata.nextLink""#;
        let reach = PEEK_WINDOW + key.len() - 1;
        for (from_end, want) in [
            (reach, Some("https://graph.microsoft.com/g/tail")),
            (reach + 1, None),
        ] {
            let end = r#":"https://graph.microsoft.com/g/tail"}"#;
            let spaces = " ".repeat(from_end - key.len() - end.len());
            let body = format!(r#"{{"value":{rows},"x":1,{key}{spaces}{end}"#);
            assert_eq!(body.len() - body.rfind(key).unwrap(), from_end);
            assert_eq!(peek(Api::Graph, &body).as_deref(), want, "{from_end}");
        }
        for (at, want) in [
            (PEEK_WINDOW - 1, Some("https://graph.microsoft.com/g/head")),
            (PEEK_WINDOW, None),
        ] {
            let start = r#"{"x":""#;
            let filler = "y".repeat(at - start.len() - 2);
            let body = format!(
                r#"{start}{filler}",{key}:"https://graph.microsoft.com/g/head","value":{rows}}}"#
            );
            assert_eq!(body.find(key), Some(at));
            assert_eq!(peek(Api::Graph, &body).as_deref(), want, "{at}");
        }
    }

    #[test]
    fn graph_first_page_url() {
        let (start, end) = day();
        let u = Api::Graph.first_page_url(&url(GRAPH), start, end, 5000);
        assert_eq!(
            u.as_str(),
            format!(
                "{GRAPH}?$filter=receivedDateTime%20ge%202026-01-20T00:00:00.0000000Z%20and%20\
                 receivedDateTime%20le%202026-01-20T23:59:59.9999999Z&$top=5000"
            )
        );
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "$filter".into(),
                    "receivedDateTime ge 2026-01-20T00:00:00.0000000Z and receivedDateTime le \
                     2026-01-20T23:59:59.9999999Z"
                        .into()
                ),
                ("$top".into(), "5000".into()),
            ]
        );
    }

    #[test]
    fn reporting_first_page_url_keeps_other_params() {
        let (start, end) = day();
        let base = url(&format!("{RWS}?tenant=a%20b&$top=9&$filter=old&x=1#frag"));
        let u = Api::Reporting.first_page_url(&base, start, end, 2000);
        assert_eq!(
            u.as_str(),
            format!(
                "{RWS}?tenant=a%20b&x=1&$filter=StartDate%20eq%20datetime%272026-01-20T00:00:00.0000000Z%27\
                 %20and%20EndDate%20eq%20datetime%272026-01-20T23:59:59.9999999Z%27&$top=2000"
            )
        );
        let filter = u
            .query_pairs()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        assert_eq!(
            filter,
            "StartDate eq datetime'2026-01-20T00:00:00.0000000Z' and EndDate eq \
             datetime'2026-01-20T23:59:59.9999999Z'"
        );
    }

    #[test]
    fn timestamps_round_trip_format() {
        let t = Utc.with_ymd_and_hms(2024, 7, 9, 13, 10, 13).unwrap()
            + chrono::Duration::nanoseconds(490_765_899);
        assert_eq!(format_timestamp(t), "2024-07-09T13:10:13.4907658Z");
        assert_eq!(
            parse_timestamp("2024-07-09T13:10:13.4907658Z")
                .unwrap()
                .nanosecond(),
            490_765_800
        );
        let whole = Utc.with_ymd_and_hms(2026, 1, 21, 14, 12, 34).unwrap();
        assert_eq!(format_timestamp(whole), "2026-01-21T14:12:34.0000000Z");
    }

    #[test]
    fn timestamp_shapes() {
        let t = |y, mo, d, h, mi, s, ns| {
            Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + chrono::Duration::nanoseconds(ns)
        };
        let p = |s: &str| parse_timestamp(s);
        assert_eq!(
            p("2022-09-05T18:10:13.4907658"),
            Some(t(2022, 9, 5, 18, 10, 13, 490_765_800))
        );
        assert_eq!(p("2022-09-05T18:10:13"), Some(t(2022, 9, 5, 18, 10, 13, 0)));
        assert_eq!(
            p("2022-09-05 18:10:13.5"),
            Some(t(2022, 9, 5, 18, 10, 13, 500_000_000))
        );
        assert_eq!(
            p("2026-01-21T14:12:34Z"),
            Some(t(2026, 1, 21, 14, 12, 34, 0))
        );
        assert_eq!(
            p("2026-01-21T16:12:34+02:00"),
            Some(t(2026, 1, 21, 14, 12, 34, 0))
        );
        assert_eq!(
            p("2026-01-21T14:12:34+00:00"),
            Some(t(2026, 1, 21, 14, 12, 34, 0))
        );
        let ms = Some(t(2022, 7, 28, 15, 9, 56, 164_000_000));
        assert_eq!(p("/Date(1659020996164)/"), ms);
        assert_eq!(p(r"\/Date(1659020996164)\/"), ms);
        assert_eq!(p("/Date(1659020996164+0000)/"), ms);
        assert_eq!(p("/Date(1659020996164-0500)/"), ms);
        assert_eq!(p(" /Date(0)/ "), Some(t(1970, 1, 1, 0, 0, 0, 0)));
        assert_eq!(p("/Date(-1000)/"), Some(t(1969, 12, 31, 23, 59, 59, 0)));
        for bad in [
            "",
            "x",
            "/Date()/",
            "/Date(abc)/",
            "/Date(1+00)/",
            "/Date(99999999999999999999)/",
            "2022-13-01T00:00:00",
            "2022-09-05",
            "Date(",
            "/Date(1",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn graph_page_with_absolute_next_link() {
        let body = br#"{"@odata.context":"x","value":[{"id":"a","recipientAddress":"r@x","receivedDateTime":"2026-01-21T14:12:34Z"}],
                        "@odata.nextLink":"https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces?$skiptoken=abc"}"#;
        let page = Api::Graph.parse_page(body, &url(GRAPH)).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(
            Api::Graph.row_identity(&page.rows[0]),
            Some(("a".into(), "r@x".into()))
        );
        assert_eq!(
            Api::Graph.row_time(&page.rows[0]),
            Some(Utc.with_ymd_and_hms(2026, 1, 21, 14, 12, 34).unwrap())
        );
        assert_eq!(
            page.next_link.unwrap().as_str(),
            format!("{GRAPH}?$skiptoken=abc")
        );
    }

    #[test]
    fn reporting_relative_next_link() {
        let request = url(&format!("{RWS}?$filter=x&$top=1000"));
        let body = br#"{"odata.metadata":"m","value":[],"odata.nextLink":"../../reportingwebservice/reporting.svc/MessageTrace?$top=1000&$skiptoken=1000"}"#;
        let page = Api::Reporting.parse_page(body, &request).unwrap();
        assert!(page.rows.is_empty());
        assert_eq!(
            page.next_link.unwrap().as_str(),
            format!("{RWS}?$top=1000&$skiptoken=1000")
        );
        // Either spelling, on either dialect.
        let body = br#"{"value":[],"@odata.nextLink":"?$skiptoken=5"}"#;
        let page = Api::Reporting.parse_page(body, &request).unwrap();
        assert_eq!(
            page.next_link.unwrap().as_str(),
            format!("{RWS}?$skiptoken=5")
        );
    }

    #[test]
    fn verbose_envelopes() {
        let body = br#"{"d":{"results":[{"__metadata":{"uri":"u"},"MessageTraceId":"t","RecipientAddress":"r","Received":"\/Date(1659020996164)\/"}],"__next":"https://reports.office365.com/next?$skiptoken=1"}}"#;
        let page = Api::Reporting.parse_page(body, &url(RWS)).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert!(!page.rows[0].contains_key("__metadata"));
        assert_eq!(
            page.next_link.unwrap().as_str(),
            "https://reports.office365.com/next?$skiptoken=1"
        );
        assert_eq!(
            Api::Reporting.row_time(&page.rows[0]),
            DateTime::from_timestamp_millis(1659020996164)
        );
        let page = Api::Reporting
            .parse_page(
                br#"{"d":[{"__metadata":{},"MessageTraceId":"t"}]}"#,
                &url(RWS),
            )
            .unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.rows[0].len(), 1);
        assert_eq!(page.next_link, None);
    }

    #[test]
    fn last_page_variants() {
        for body in [
            r#"{"value":[]}"#,
            r#"{"value":[],"@odata.nextLink":null}"#,
            r#"{"value":[],"odata.nextLink":""}"#,
        ] {
            let page = Api::Graph.parse_page(body.as_bytes(), &url(GRAPH)).unwrap();
            assert_eq!(page, Page::default(), "{body}");
        }
    }

    #[test]
    fn unexpected_shapes_have_clear_errors() {
        let err = |body: &str| {
            Api::Graph
                .parse_page(body.as_bytes(), &url(GRAPH))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(""),
            "response body is empty (expected a JSON object with a `value` array)"
        );
        assert_eq!(
            err("<title>401 - Unauthorized</title>"),
            "response is not JSON (expected value at line 1 column 1); body starts: 401 - Unauthorized"
        );
        assert_eq!(
            err("[1]"),
            "response JSON is an array, expected an object with a `value` array"
        );
        assert_eq!(
            err(r#"{"odata.metadata":"m","values":[]}"#),
            "response JSON has no `value` array (top-level keys: odata.metadata, values)"
        );
        assert_eq!(
            err("{}"),
            "response JSON has no `value` array (top-level keys: none)"
        );
        assert_eq!(
            err(r#"{"d":{"x":1}}"#),
            "response JSON has no `value` array (top-level keys: d.{x})"
        );
        assert_eq!(
            err(r#"{"value":{}}"#),
            "response field `value` is an object, expected an array of rows"
        );
        assert_eq!(
            err(r#"{"d":"x"}"#),
            "response field `d` is a string, expected an array of rows"
        );
        assert_eq!(
            err(r#"{"value":[{},3]}"#),
            "row 1 of the response is a number, expected a JSON object"
        );
        assert_eq!(
            err(r#"{"value":[],"@odata.nextLink":7}"#),
            "response field `@odata.nextLink` is a number, expected a URL string"
        );
        assert_eq!(
            err(r#"{"value":[],"@odata.nextLink":"http://[::1"}"#),
            "nextLink `http://[::1` is not a valid URL: invalid IPv6 address"
        );
        assert_eq!(
            err(r#"{"value":[],"@odata.nextLink":"javascript:alert(1)"}"#),
            "nextLink `javascript:alert(1)` is not a valid URL: scheme `javascript` is not http or https"
        );
        assert_eq!(
            err(&format!(r#"{{"value":[],"@odata.nextLink":"{GRAPH}"}}"#)),
            format!(
                "nextLink `{GRAPH}` is the URL just requested; following it would loop forever"
            )
        );
        assert_eq!(
            err(r#"{"error":{"code":"Forbidden","message":"Missing role"}}"#),
            "response is an error body, not a page: Forbidden: Missing role"
        );
        let long = format!(
            r#"{{"value":[],"@odata.nextLink":"http://[{}"}}"#,
            "a".repeat(5000)
        );
        assert!(err(&long).len() < 400);
        let long = format!(
            r#"{{{}}}"#,
            (0..500)
                .map(|i| format!(r#""k{i}":1"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(err(&long).len() < 400);
    }

    #[test]
    fn a_next_link_to_another_origin_is_refused() {
        let err = |link: &str| {
            let body = serde_json::json!({"value": [], "@odata.nextLink": link}).to_string();
            Api::Graph
                .parse_page(body.as_bytes(), &url(GRAPH))
                .map(|p| p.next_link)
        };
        for foreign in [
            "http://graph.microsoft.com/v1.0/x?$skiptoken=1",
            "https://graph.microsoft.com:8443/v1.0/x?$skiptoken=1",
            "https://graph.microsoft.com.evil.example/v1.0/x?$skiptoken=1",
            "//127.0.0.2:9/v1.0/x?$skiptoken=secret",
        ] {
            let e = err(foreign).unwrap_err();
            assert!(
                matches!(&e, DialectError::ForeignNextLink { origin, .. } if origin == "https://graph.microsoft.com"),
                "{foreign}: {e:?}"
            );
            assert!(
                !e.to_string().contains("secret"),
                "the query is not shown: {e}"
            );
        }
        for same in [
            "https://graph.microsoft.com/v1.0/x?$skiptoken=1",
            "https://GRAPH.microsoft.com:443/beta/x?$skiptoken=1",
            "?$skiptoken=2",
        ] {
            assert!(err(same).unwrap().is_some(), "{same}");
        }
        // The guess read off the end of a body is refused the same way.
        let body = r#"{"value":[],"@odata.nextLink":"http://127.0.0.2:9/x"}"#;
        assert_eq!(
            Api::Graph.peek_next_link(body.as_bytes(), &url(GRAPH)),
            None
        );
    }

    #[test]
    fn a_page_of_more_rows_than_asked_for_or_of_no_trace_rows_is_not_a_page() {
        let read = |body: &str, max| {
            Api::Graph
                .parse_page_of_at_most(body.as_bytes(), &url(GRAPH), max)
                .map(|p| p.rows.len())
                .map_err(|e| e.to_string())
        };
        let row = r#"{"id":"a","recipientAddress":"r@x"}"#;
        assert_eq!(read(&format!(r#"{{"value":[{row},{row}]}}"#), 2), Ok(2));
        assert_eq!(
            read(&format!(r#"{{"value":[{row},{row},{row}]}}"#), 2),
            Err("the page holds more rows than the 2 asked for ($top): not a page".into())
        );
        // A broken row among good ones is a row (delivered flagged), and so is one with only
        // some of a row's fields; only rows with none of them are not a page.
        assert_eq!(read(&format!(r#"{{"value":[{{}},{row}]}}"#), 2), Ok(2));
        assert_eq!(read(r#"{"value":[{},{"id":"a"}]}"#, 2), Ok(2));
        assert_eq!(
            read(r#"{"value":[{},{"x":1}]}"#, 2),
            Err("none of the page's 2 rows has any of the fields `id`, `recipientAddress` or `receivedDateTime`: not a message trace page".into())
        );
        assert_eq!(read(r#"{"value":[]}"#, 2), Ok(0));
    }

    #[test]
    fn a_byte_that_is_not_utf8_costs_its_character_not_the_page() {
        let mut body = br#"{"value":[{"id":"a","recipientAddress":"r@x","subject":"caf"#.to_vec();
        body.push(0xE9);
        body.extend_from_slice(br#""},{"id":"b","recipientAddress":"r@x","subject":"ok"}]}"#);
        let page = Api::Graph.parse_page(&body, &url(GRAPH)).unwrap();
        assert!(page.repaired);
        assert_eq!(page.rows.len(), 2);
        assert_eq!(page.rows[0]["subject"], "caf\u{FFFD}");
        assert_eq!(page.rows[1]["subject"], "ok");
        let good = Api::Graph
            .parse_page(br#"{"value":[{"id":"a"}]}"#, &url(GRAPH))
            .unwrap();
        assert!(!good.repaired);
    }

    #[test]
    fn rows_without_identity_or_time() {
        let row: Row =
            serde_json::from_str(r#"{"id":"a","recipientAddress":"","receivedDateTime":"soon"}"#)
                .unwrap();
        assert_eq!(Api::Graph.row_identity(&row), None);
        assert_eq!(Api::Graph.row_time(&row), None);
        assert_eq!(Api::Reporting.row_identity(&row), None);
    }

    #[test]
    fn explains_service_principal_401() {
        let body = br#"{"error":{"code":"InvalidAuthenticationToken","message":"Service principal-less Authentication failed: blah"}}"#;
        let s = explain_status(
            Api::Graph,
            401,
            body,
            "https://graph.microsoft.com/v1.0/x?$top=1",
        );
        assert!(s.contains("8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"), "{s}");
        assert!(!s.contains("$top"));
        let s = explain_status(
            Api::Reporting,
            401,
            b"<title>401 - Unauthorized</title>",
            "https://r/x",
        );
        assert!(s.contains("ReportingWebService.Read.All"), "{s}");
    }

    #[test]
    fn error_summaries() {
        let s = |b: &str| error_summary(b.as_bytes());
        assert_eq!(
            s(
                r#"{"error":{"code":"Unauthorized","message":"Service principal-less Authentication failed"}}"#
            ),
            "Unauthorized: Service principal-less Authentication failed"
        );
        assert_eq!(
            s(
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1"}"#
            ),
            "invalid_client: AADSTS7000215: Invalid client secret provided. Trace ID: 1"
        );
        assert_eq!(s(r#"{"error":"invalid_client"}"#), "invalid_client");
        assert_eq!(
            s(r#"{"ErrorCode":"","Message":"No permission."}"#),
            "No permission."
        );
        assert_eq!(
            s(r#"{"ErrorCode":"E1","Message":"No permission."}"#),
            "E1: No permission."
        );
        assert_eq!(
            s(r#"{"odata.error":{"code":"","message":{"lang":"en-US","value":"Bad filter"}}}"#),
            "Bad filter"
        );
        assert_eq!(
            s(r#"{"odata.error":{"code":"C","message":"Bad filter"}}"#),
            "C: Bad filter"
        );
        assert_eq!(
            s("<html><head><TITLE>\n  Bad &amp; worse\n</TITLE></head></html>"),
            "Bad & worse"
        );
        assert_eq!(s(" \n "), "(empty body)");
        assert_eq!(s("plain\ntext"), "plain text");
        assert_eq!(s(r#"{"other":1}"#), r#"{"other":1}"#);
        let long = "é".repeat(1000);
        assert_eq!(s(&long), format!("{}…", "é".repeat(200)));
        let long = format!(
            r#"{{"error":{{"code":"c","message":"{}"}}}}"#,
            "m".repeat(1000)
        );
        assert_eq!(s(&long).chars().count(), 301);
    }

    #[test]
    fn api_constants_and_serde() {
        assert_eq!(Api::Graph.max_page_size(), 5000);
        assert_eq!(Api::Reporting.max_page_size(), 2000);
        assert_eq!(Api::Graph.max_window(), chrono::Duration::days(10));
        assert_eq!(Api::Reporting.max_window(), chrono::Duration::days(10));
        assert_eq!(
            serde_json::to_string(&Api::Reporting).unwrap(),
            "\"reporting\""
        );
        assert_eq!(
            serde_json::from_str::<Api>("\"graph\"").unwrap(),
            Api::Graph
        );
    }

    proptest! {
        #[test]
        fn parse_page_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Api::Graph.parse_page(&body, &url(GRAPH));
            let _ = Api::Reporting.parse_page(&body, &url(RWS));
            let _ = error_summary(&body);
        }

        #[test]
        fn parse_page_never_panics_on_json_like(body in r#"[\[\]{}":,a-z0-9 .@/\\?$=&_-]{0,120}"#) {
            let _ = Api::Reporting.parse_page(body.as_bytes(), &url(RWS));
            let _ = error_summary(body.as_bytes());
        }

        #[test]
        fn next_links_never_panic(link in "\\PC{0,60}") {
            let body = serde_json::json!({"value": [], "odata.nextLink": link}).to_string();
            let _ = Api::Reporting.parse_page(body.as_bytes(), &url(RWS));
        }

        #[test]
        fn parse_timestamp_never_panics(s in "\\PC{0,40}") {
            let _ = parse_timestamp(&s);
        }

        #[test]
        fn the_plain_shapes_read_by_hand_as_the_general_path_reads_them(
            s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?Z?",
            t in "[0-9Tt :.Z+-]{15,32}",
        ) {
            for s in [s, t] {
                if let Some(fast) = parse_plain_timestamp(s.as_bytes()) {
                    prop_assert_eq!(Some(fast), parse_timestamp_slowly(&s), "{}", s);
                }
            }
        }

        #[test]
        fn valid_plain_timestamps_take_the_fast_path(secs in 0i64..7_258_118_400, nanos in 0u32..1_000_000_000, digits in 1usize..=9) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
                let frac = &format!("{:09}", nanos)[..digits];
                let s = format!("{}.{frac}", t.format(fmt));
                let fast = parse_plain_timestamp(s.as_bytes());
                prop_assert!(fast.is_some(), "{}", s);
                prop_assert_eq!(fast, parse_timestamp_slowly(&s), "{}", s);
                if fmt.contains('T') {
                    let z = format!("{s}Z");
                    prop_assert_eq!(parse_plain_timestamp(z.as_bytes()), parse_timestamp_slowly(&z), "{}", z);
                }
            }
        }

        /// A valid timestamp with one byte cut out or doubled (a digit short, a `Z` early): never
        /// a panic, and the fast path reads it as the general one does. A 19-byte string
        /// ending in `Z` panicked the parse thread before (a slice past its end).
        #[test]
        fn a_timestamp_a_byte_off_never_panics_and_reads_as_the_general_path(secs in 0i64..7_258_118_400, at in 0usize..30, double in any::<bool>(), zulu in any::<bool>()) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string().into_bytes();
            if zulu {
                s.push(b'Z');
            }
            let at = at % s.len();
            if double { s.insert(at, s[at]) } else { s.remove(at); }
            let s = String::from_utf8(s).unwrap();
            let fast = parse_plain_timestamp(s.as_bytes());
            if fast.is_some() {
                prop_assert_eq!(fast, parse_timestamp_slowly(&s), "{}", s);
            }
            prop_assert_eq!(parse_timestamp(&s), fast.or_else(|| parse_timestamp_slowly(&s)), "{}", s);
        }

        #[test]
        fn format_then_parse_is_exact_to_100ns(secs in 0i64..7_258_118_400, ticks in 0u32..10_000_000) {
            let t = DateTime::from_timestamp(secs, ticks * 100).unwrap();
            prop_assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
    }
}
