//! The top-level members of a JSON object whose text is already known to be valid JSON (the
//! pass-through's rows: serde_json checked each one as it took it as a `RawValue`), read by a
//! scan that skips values instead of parsing them. A second serde pass over every row cost a
//! tenth of the engine's CPU against nginx (perf, session 11); this finds the same keys and
//! values at a fraction of it, because it never checks again what the first pass checked.
//!
//! Only ever given valid JSON; on anything else it stops early (`None` or the end of the
//! members), which the raw reading takes as "not the common envelope": the full parser then
//! reads the page, so a mistake here can cost speed, never a row.

use std::borrow::Cow;

/// The members of `object` (a JSON object's text, `{` … `}`), in order: each key (unescaped)
/// and its value's text.
pub fn members(object: &str) -> Members<'_> {
    let b = object.as_bytes();
    let at = skip_ws(b, 0);
    let done = b.get(at) != Some(&b'{');
    Members {
        text: object,
        at: at + 1,
        done,
        closed: false,
    }
}

/// The iterator of [`members`].
pub struct Members<'a> {
    text: &'a str,
    /// Where the next member (or the closing brace) is looked for.
    at: usize,
    done: bool,
    closed: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = (Cow<'a, str>, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let member = self.member();
        if member.is_none() {
            self.done = true;
        }
        member
    }
}

impl<'a> Members<'a> {
    /// Whether the members ended at the object's closing brace (not at text the scan could not
    /// read): only then were they all found.
    pub fn closed(&self) -> bool {
        self.closed
    }

    fn member(&mut self) -> Option<(Cow<'a, str>, &'a str)> {
        let b = self.text.as_bytes();
        let mut i = skip_ws(b, self.at);
        if b.get(i) == Some(&b'}') {
            self.closed = skip_ws(b, i + 1) == b.len();
            return None;
        }
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        }
        if *b.get(i)? != b'"' {
            return None;
        }
        let (key_end, escaped) = string_end(b, i)?;
        let key = if escaped {
            text(&self.text[i..key_end])?
        } else {
            // Most keys: no escape, the text between the quotes (found without a second look).
            Cow::Borrowed(&self.text[i + 1..key_end - 1])
        };
        i = skip_ws(b, key_end);
        if *b.get(i)? != b':' {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        self.at = end;
        Some((key, &self.text[start..end]))
    }
}

/// A string value's text, unescaped; `None` when `value` is not a string.
pub fn text(value: &str) -> Option<Cow<'_, str>> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(value).ok().map(Cow::Owned)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Just past the string that opens at `i` (its closing quote), and whether it has an escape.
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    i += 1;
    let mut escaped = false;
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[j] == b'\\' {
            escaped = true;
            i = j + 2;
        } else {
            return Some((j + 1, escaped));
        }
    }
}

/// Just past the value that starts at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let (mut i, mut depth) = (i, 0usize);
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let rest = &b[i..];
            let n = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            (n > 0).then_some(i + n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(object: &str) -> Vec<(String, String)> {
        members(object)
            .map(|(k, v)| (k.into_owned(), v.to_owned()))
            .collect()
    }

    fn closed(object: &str) -> bool {
        let mut m = members(object);
        m.by_ref().for_each(drop);
        m.closed()
    }

    #[test]
    fn every_kind_of_value_is_found_whole_with_its_key() {
        let object = r#" { "a" : "x\"}" , "b\u0041":1.5e3,"c":[1,{"d":"]"}],"e":{"f":[]} ,"g":null,"h":true}"#;
        assert_eq!(
            all(object),
            [
                ("a", r#""x\"}""#),
                ("bA", "1.5e3"),
                ("c", r#"[1,{"d":"]"}]"#),
                ("e", r#"{"f":[]}"#),
                ("g", "null"),
                ("h", "true"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(all("{}").is_empty());
        assert!(all(" { } ").is_empty());
        assert!(closed(object) && closed("{}") && closed(" { } "));
    }

    #[test]
    fn a_string_value_is_read_unescaped_and_anything_else_is_no_text() {
        assert_eq!(text(r#""plain""#).as_deref(), Some("plain"));
        assert!(matches!(text(r#""plain""#), Some(Cow::Borrowed(_))));
        assert_eq!(text(r#""\u00e9\"\\""#).as_deref(), Some("é\"\\"));
        for not in ["1", "null", "[\"a\"]", "{}", "true"] {
            assert_eq!(text(not), None, "{not}");
        }
    }

    /// Not valid JSON is never given; when it is, the scan stops instead of going wrong.
    #[test]
    fn text_that_is_not_an_object_ends_the_members() {
        for bad in [
            "",
            "[1]",
            "\"a\"",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":\"x",
            "{a:1}",
        ] {
            assert!(all(bad).is_empty(), "{bad:?}");
            assert!(!closed(bad), "{bad:?}");
        }
        assert_eq!(all(r#"{"a":1,"b""#).len(), 1);
        assert!(!closed(r#"{"a":1,"b""#) && !closed(r#"{"a":1}x"#));
    }

    /// Every fixture's rows: the scan finds what serde_json finds.
    #[test]
    fn the_scan_agrees_with_serde_json_on_every_fixture_row() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/reference/fixtures"
        );
        let mut rows = 0;
        for entry in walk(std::path::Path::new(dir)) {
            let Ok(body) = std::fs::read_to_string(&entry) else {
                continue;
            };
            let Ok(serde_json::Value::Object(top)) = serde_json::from_str(&body) else {
                continue;
            };
            let Some(serde_json::Value::Array(value)) = top.get("value") else {
                continue;
            };
            for row in value.iter().filter(|r| r.is_object()) {
                let text = serde_json::to_string_pretty(row).unwrap();
                let scanned: serde_json::Map<String, serde_json::Value> = members(&text)
                    .map(|(k, v)| (k.into_owned(), serde_json::from_str(v).unwrap()))
                    .collect();
                assert_eq!(&serde_json::Value::Object(scanned), row, "{entry:?}");
                rows += 1;
            }
        }
        assert!(rows > 5, "fixture rows found: {rows}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
        out
    }
}
