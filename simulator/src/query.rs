//! Query-string pieces of the two APIs: `$filter` grammars, the Graph `$skiptoken`, URL encoding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::model::{splitmix64, ticks_ceil, ticks_floor, Position};

/// The query parameters of a request, decoded (`+` and `%XX`), in order.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes a raw query string.
    pub(crate) fn parse(query: &str) -> Params {
        Params(
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `name` (OData option names compare case-insensitively).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-encodes a query parameter value; keeps the characters Microsoft leaves readable
/// (`'`, `:`, `(`, `)`, `,`) and encodes space as `%20`.
pub(crate) fn encode_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for b in v.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'\''
            | b':'
            | b'('
            | b')'
            | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The trace id and the recipient of a detail request's path after `…/messageTraces/` (raw,
/// percent-encoded): `{id}/getDetailsByRecipient(recipientAddress='{address}')`, the function's
/// name compared case-insensitively, the address an OData string literal (single quotes
/// doubled) percent-decoded. `None` when the path is not a detail request; `Some(Err)` (the
/// 400 message) when its literal is malformed.
pub(crate) fn parse_details_path(rest: &str) -> Option<Result<(String, String), String>> {
    const FUNCTION: &str = "getdetailsbyrecipient(";
    let (id, call) = rest.split_once('/')?;
    if !call.to_ascii_lowercase().starts_with(FUNCTION) {
        return None;
    }
    let args = &call[FUNCTION.len()..];
    let Some(args) = args.strip_suffix(')') else {
        return Some(Err(
            "The function call is not closed: expected `)`.".to_string()
        ));
    };
    let literal = match args.split_once('=') {
        Some((name, literal)) if name.eq_ignore_ascii_case("recipientAddress") => literal,
        _ => {
            return Some(Err(
                "getDetailsByRecipient takes one parameter, recipientAddress.".to_string(),
            ))
        }
    };
    let (Some(id), Some(literal)) = (percent_decode(id), percent_decode(literal)) else {
        return Some(Err(
            "The path is not valid percent-encoded UTF-8.".to_string()
        ));
    };
    Some(
        odata_string(&literal)
            .map(|address| (id, address))
            .ok_or_else(|| {
                format!("Invalid recipientAddress {literal}: expected a string in single quotes, each quote in it doubled.")
            }),
    )
}

/// The value of an OData string literal `'…'` (doubled quotes undoubled); `None` when it is not
/// one (no quotes around it, a quote in it alone, nothing in it).
fn odata_string(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// Decodes `%XX` escapes (a `+` stays a `+`: this is a path); `None` for a bad escape or bytes
/// that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses an RFC 3339 instant (any number of fractional digits); without a zone it is UTC.
pub(crate) fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// A time window from a `$filter`: inclusive bounds in 100 ns ticks plus the instants given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// The instant of the lower bound as written.
    pub start: DateTime<Utc>,
    /// The instant of the upper bound as written.
    pub end: DateTime<Utc>,
    /// Oldest tick included.
    pub lo: i64,
    /// Newest tick included.
    pub hi: i64,
}

/// Graph: `receivedDateTime ge X and receivedDateTime le Y` (either order, any spacing; `gt`/`lt`
/// are exclusive). Both bounds are required.
pub(crate) fn parse_graph_filter(filter: &str) -> Result<Window, String> {
    let tokens: Vec<&str> = filter.split_whitespace().collect();
    let mut lower: Option<(DateTime<Utc>, i64)> = None;
    let mut upper: Option<(DateTime<Utc>, i64)> = None;
    let mut i = 0;
    while i < tokens.len() {
        if i > 0 {
            if !tokens[i].eq_ignore_ascii_case("and") {
                return Err(format!("unexpected '{}' in $filter", tokens[i]));
            }
            i += 1;
        }
        let Some([field, op, value]) = tokens
            .get(i..i + 3)
            .and_then(|t| <[&str; 3]>::try_from(t).ok())
        else {
            return Err("incomplete $filter clause".to_string());
        };
        i += 3;
        if !field.eq_ignore_ascii_case("receivedDateTime") {
            return Err(format!("unsupported $filter property '{field}'"));
        }
        let raw = value.trim_matches('\'');
        let t = parse_instant(raw).ok_or_else(|| format!("invalid date time '{value}'"))?;
        let slot = match op.to_ascii_lowercase().as_str() {
            "ge" => (&mut lower, ticks_ceil(t)),
            "gt" => (&mut lower, ticks_floor(t).saturating_add(1)),
            "le" => (&mut upper, ticks_floor(t)),
            "lt" => (&mut upper, ticks_ceil(t).saturating_sub(1)),
            _ => return Err(format!("unsupported $filter operator '{op}'")),
        };
        if slot.0.replace((t, slot.1)).is_some() {
            return Err("receivedDateTime bound given twice".to_string());
        }
    }
    match (lower, upper) {
        (Some((start, lo)), Some((end, hi))) => Ok(Window { start, end, lo, hi }),
        _ => Err("both a start (ge) and an end (le) receivedDateTime are required".to_string()),
    }
}

/// RWS: `StartDate eq datetime'X' and EndDate eq datetime'Y'` (either order, any spacing, both
/// inclusive). Both are required.
pub(crate) fn parse_rws_filter(filter: &str) -> Result<Window, String> {
    let tokens: Vec<&str> = filter.split_whitespace().collect();
    let mut start: Option<DateTime<Utc>> = None;
    let mut end: Option<DateTime<Utc>> = None;
    let mut i = 0;
    while i < tokens.len() {
        if i > 0 {
            if !tokens[i].eq_ignore_ascii_case("and") {
                return Err(format!("Syntax error at '{}'", tokens[i]));
            }
            i += 1;
        }
        let Some([field, op, value]) = tokens
            .get(i..i + 3)
            .and_then(|t| <[&str; 3]>::try_from(t).ok())
        else {
            return Err("Syntax error: incomplete expression".to_string());
        };
        i += 3;
        if !op.eq_ignore_ascii_case("eq") {
            return Err(format!("Unsupported operator '{op}'"));
        }
        let literal = value
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case("datetime'"))
            .and_then(|_| value[9..].strip_suffix('\''))
            .ok_or_else(|| format!("Invalid datetime literal {value}"))?;
        let t =
            parse_instant(literal).ok_or_else(|| format!("Invalid datetime literal {value}"))?;
        let slot = if field.eq_ignore_ascii_case("StartDate") {
            &mut start
        } else if field.eq_ignore_ascii_case("EndDate") {
            &mut end
        } else {
            return Err(format!("Unsupported property '{field}'"));
        };
        if slot.replace(t).is_some() {
            return Err(format!("{field} given twice"));
        }
    }
    match (start, end) {
        (Some(start), Some(end)) => Ok(Window {
            start,
            end,
            lo: ticks_ceil(start),
            hi: ticks_floor(end),
        }),
        _ => Err("Both StartDate and EndDate must be specified".to_string()),
    }
}

/// What a Graph `$skiptoken` carries: the window (ticks) and the next row's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SkipToken {
    /// Oldest tick of the query window.
    pub lo: i64,
    /// Newest tick of the query window (as asked, before capping at now).
    pub hi: i64,
    /// Next row to serve.
    pub pos: Position,
}

fn checksum(seed: u64, fields: &[i64]) -> u64 {
    fields
        .iter()
        .fold(splitmix64(seed ^ 0x5349_4d54_4f4b), |acc, f| {
            splitmix64(acc ^ *f as u64)
        })
}

impl SkipToken {
    /// Opaque base64url text, with a checksum keyed by the tenant seed.
    pub(crate) fn encode(&self, seed: u64) -> String {
        let fields = [
            self.lo,
            self.hi,
            self.pos.hour,
            i64::from(self.pos.message),
            i64::from(self.pos.recipient),
        ];
        let text = format!(
            "v1.{}.{}.{}.{}.{}.{:016x}",
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            fields[4],
            checksum(seed, &fields)
        );
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Decodes and verifies a token made by [`SkipToken::encode`].
    pub(crate) fn decode(token: &str, seed: u64) -> Option<SkipToken> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim().trim_end_matches('='))
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = text.split('.').collect();
        let [v, lo, hi, h, k, r, sum] = parts.as_slice() else {
            return None;
        };
        if *v != "v1" {
            return None;
        }
        let fields = [
            lo.parse().ok()?,
            hi.parse().ok()?,
            h.parse().ok()?,
            k.parse::<u32>().ok().map(i64::from)?,
            r.parse::<u32>().ok().map(i64::from)?,
        ];
        if u64::from_str_radix(sum, 16).ok()? != checksum(seed, &fields) {
            return None;
        }
        Some(SkipToken {
            lo: fields[0],
            hi: fields[1],
            pos: Position {
                hour: fields[2],
                message: fields[3] as u32,
                recipient: fields[4] as u32,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_filter_accepts_swapped_order_spaces_and_7_digits() {
        let w = parse_graph_filter(
            "  receivedDateTime le 2026-01-21T00:00:00.1234567Z   and receivedDateTime ge 2026-01-20T00:00:00Z",
        )
        .expect("valid filter");
        assert_eq!(
            w.lo,
            ticks_floor(parse_instant("2026-01-20T00:00:00Z").expect("t"))
        );
        assert_eq!(w.hi - w.lo, 24 * 3600 * 10_000_000 + 1_234_567);
        assert!(parse_graph_filter("receivedDateTime ge 2026-01-20T00:00:00Z").is_err());
        assert!(parse_graph_filter("receivedDateTime ge nope and receivedDateTime le x").is_err());
        assert!(parse_graph_filter("subject eq 'x'").is_err());
    }

    #[test]
    fn rws_filter_parses_datetime_literals() {
        let w = parse_rws_filter(
            "EndDate eq datetime'2024-07-09T14:00:00Z' and StartDate eq datetime'2024-07-09T13:00:00.5'",
        )
        .expect("valid filter");
        assert_eq!(w.hi - w.lo, 3600 * 10_000_000 - 5_000_000);
        assert!(parse_rws_filter("StartDate eq '2024-07-09T13:00:00Z'").is_err());
        assert!(parse_rws_filter("StartDate eq datetime'2024-07-09T13:00:00Z'").is_err());
    }

    #[test]
    fn skiptoken_round_trips_and_rejects_tampering() {
        let t = SkipToken {
            lo: 1,
            hi: 99,
            pos: Position {
                hour: 5,
                message: 7,
                recipient: 2,
            },
        };
        let s = t.encode(42);
        assert_eq!(SkipToken::decode(&s, 42), Some(t));
        assert_eq!(SkipToken::decode(&s, 43), None);
        assert_eq!(SkipToken::decode("not-a-token", 42), None);
        assert_eq!(SkipToken::decode(&format!("{s}x"), 42), None);
    }

    #[test]
    fn detail_paths_give_their_trace_and_address_decoded() {
        let ok = |rest: &str| parse_details_path(rest).unwrap().unwrap();
        assert_eq!(
            ok("t-1/getDetailsByRecipient(recipientAddress='robert@contoso.com')"),
            ("t-1".to_string(), "robert@contoso.com".to_string())
        );
        assert_eq!(
            ok("t/getdetailsbyrecipient(RECIPIENTADDRESS='o''neil%2Btag%23x%25y@ex%C3%A4mple.com')").1,
            "o'neil+tag#x%y@exämple.com"
        );
        assert_eq!(
            ok("t/getDetailsByRecipient(recipientAddress=%27a%27%27b%27)").1,
            "a'b"
        );
        assert_eq!(parse_details_path("t"), None);
        assert_eq!(parse_details_path("t/other()"), None);
        for bad in [
            "t/getDetailsByRecipient(recipientAddress='a'b')",
            "t/getDetailsByRecipient(recipientAddress=a@b)",
            "t/getDetailsByRecipient(recipientAddress='')",
            "t/getDetailsByRecipient(recipientAddress='a@b'",
            "t/getDetailsByRecipient(address='a@b')",
            "t/getDetailsByRecipient(recipientAddress='%ZZ')",
        ] {
            assert!(parse_details_path(bad).unwrap().is_err(), "{bad}");
        }
    }

    #[test]
    fn encode_value_keeps_odata_literals_readable() {
        assert_eq!(
            encode_value("StartDate eq datetime'2024-07-09T13:00:00+01:00'"),
            "StartDate%20eq%20datetime'2024-07-09T13:00:00%2B01:00'"
        );
    }
}
