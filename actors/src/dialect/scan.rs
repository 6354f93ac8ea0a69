//! A validating scan of JSON text (issue 18 item 2): strings, numbers, literals, arrays and
//! objects checked as serde_json checks them, and found by their spans instead of being built.
//! The pass-through's one pass over a page ([`super::raw`]): before, serde_json validated every
//! row as a `RawValue` and a second scan found its members again in the text serde had just
//! read (about a sixth of the engine's CPU against nginx, session 12); this does both at once,
//! in 56 % of the instructions for a 5,000-row Graph page (callgrind, session 15).
//!
//! What it accepts is what serde_json accepts (the differential tests below hold it to that on
//! every fixture body and on mutated ones), with one exception on the safe side: values nested
//! deeper than [`MAX_DEPTH`] are refused here, and a page this refuses is read by the full
//! parser, so a refusal can cost speed, never a row. Like serde_json when it skips a value, it
//! does not check that a `\u` escape is a whole UTF-16 pair; [`text`] does, for the strings
//! that are read.

use std::borrow::Cow;

/// The deepest nesting of arrays and objects scanned; deeper text is refused.
pub const MAX_DEPTH: u32 = 64;

/// A position in JSON text. Every scanning method returns `None` at text that is not valid JSON
/// there (or nested deeper than [`MAX_DEPTH`]); the position is then unspecified.
pub struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    pub fn new(text: &'a str) -> Self {
        Scan { text, at: 0 }
    }

    /// The text from `from` to the position.
    pub fn since(&self, from: usize) -> &'a str {
        &self.text[from..self.at]
    }

    /// The position, after any whitespace.
    pub fn here(&mut self) -> usize {
        self.ws();
        self.at
    }

    /// Whether nothing but whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.here() == self.text.len()
    }

    /// After whitespace, the byte `c`, taken; `None` at anything else.
    pub fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// After whitespace, whether the next byte is `c`; taken when it is.
    pub fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let found = self.peek() == Some(c);
        self.at += usize::from(found);
        found
    }

    /// After a member or an element: `Some(true)` when the container closes with `close`
    /// (taken), `Some(false)` when a comma follows (taken: another one must come).
    pub fn then_close(&mut self, close: u8) -> Option<bool> {
        if self.eat(b',') {
            return Some(false);
        }
        self.expect(close).map(|()| true)
    }

    /// An object member's key and the colon after it, the key unescaped when it has escapes.
    pub fn key(&mut self) -> Option<Cow<'a, str>> {
        self.key_and_token().map(|(key, _)| key)
    }

    /// [`Scan::key`], and the key's token as the text has it (quotes included) when it has no
    /// escape: what [`Scan::same_key`] compares a later key with.
    pub fn key_and_token(&mut self) -> Option<(Cow<'a, str>, Option<&'a str>)> {
        self.ws();
        let start = self.at;
        let key = if self.string()? {
            (text(self.since(start))?, None)
        } else {
            let token = self.since(start);
            (Cow::Borrowed(&token[1..token.len() - 1]), Some(token))
        };
        self.expect(b':')?;
        Some(key)
    }

    /// Whether the next member's key is `token`, a key's token without escapes as
    /// [`Scan::key_and_token`] gave it: then the key and the colon after it are taken
    /// (`Some(true)`); `Some(false)` takes only whitespace. The same bytes are the same valid
    /// string (the closing quote included, so not a longer one), so they need no scan: a page's
    /// rows nearly always have the same keys in the same order.
    pub fn same_key(&mut self, token: &str) -> Option<bool> {
        self.ws();
        if !self.text.as_bytes()[self.at..].starts_with(token.as_bytes()) {
            return Some(false);
        }
        self.at += token.len();
        self.expect(b':')?;
        Some(true)
    }

    /// Any JSON value, after whitespace: its text.
    pub fn value(&mut self) -> Option<&'a str> {
        let start = self.here();
        self.skip_value()?;
        Some(self.since(start))
    }

    /// Any JSON value, after whitespace: a string's text unescaped (as [`text`] reads it), or
    /// `Some(None)` for any other value (or a string [`text`] does not read). The scan knows
    /// whether the string has an escape: one without is borrowed as it is, unsearched.
    pub fn string_value(&mut self) -> Option<Option<Cow<'a, str>>> {
        self.ws();
        if self.peek() != Some(b'"') {
            self.skip_value()?;
            return Some(None);
        }
        let start = self.at;
        let escaped = self.string()?;
        let token = self.since(start);
        Some(if escaped {
            text(token)
        } else {
            Some(Cow::Borrowed(&token[1..token.len() - 1]))
        })
    }

    /// Any JSON value, after whitespace, checked and passed.
    pub fn skip_value(&mut self) -> Option<()> {
        self.ws();
        // Most values of a row: a string.
        if self.peek() == Some(b'"') {
            return self.string().map(drop);
        }
        let mut stack = 0u64; // bit n: level n + 1 is an array
        let mut depth = 0u32;
        loop {
            // Expecting a value, at its first byte.
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    let array = open == b'[';
                    stack = (stack << 1) | u64::from(array);
                    if !self.eat(if array { b']' } else { b'}' }) {
                        self.element(array)?;
                        continue;
                    }
                    depth -= 1;
                    stack >>= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return None,
            }
            // A value ended: close every container that ends after it.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let array = stack & 1 == 1;
                if !self.then_close(if array { b']' } else { b'}' })? {
                    self.element(array)?;
                    break;
                }
                depth -= 1;
                stack >>= 1;
            }
        }
    }

    /// To the first byte of a container's next value: past its key in an object.
    fn element(&mut self, array: bool) -> Option<()> {
        if !array {
            self.key()?;
        }
        self.ws();
        Some(())
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        let b = self.text.as_bytes();
        while self.at < b.len() && matches!(b[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// The string that opens at the position; whether it has an escape.
    fn string(&mut self) -> Option<bool> {
        let b = self.text.as_bytes();
        if b.get(self.at) != Some(&b'"') {
            return None;
        }
        let (mut i, mut escaped) = (self.at + 1, false);
        loop {
            i = plain_end(b, i);
            match *b.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    i = escape_end(b, i + 1)?;
                }
                // A control character, which a string must escape.
                _ => return None,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let b = self.text.as_bytes();
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = self.at + usize::from(b.get(self.at) == Some(&b'-'));
        i = match *b.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i + 1),
            _ => return None,
        };
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
            let end = digits(i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.at = i;
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let found = self.text.as_bytes().get(self.at..self.at + word.len()) == Some(word);
        self.at += word.len();
        found.then_some(())
    }
}

/// A string value's text, unescaped; `None` when `value` is not a string (or an escape in it is
/// not a whole character: a lone UTF-16 surrogate).
pub fn text(value: &str) -> Option<Cow<'_, str>> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(value).ok().map(Cow::Owned)
}

/// The first index from `i` of a quote, a backslash or a control character (or the end).
fn plain_end(b: &[u8], i: usize) -> usize {
    // SAFETY: SSE2 is part of x86-64: every processor this runs on has it.
    #[cfg(target_arch = "x86_64")]
    return unsafe { plain_end_sse2(b, i) };
    #[cfg(not(target_arch = "x86_64"))]
    plain_end_swar(b, i)
}

/// [`plain_end`] sixteen bytes at a time (SSE2, which every x86-64 processor has), up to the
/// last fifteen: the string scan was a third of a page's parse eight bytes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn plain_end_sse2(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let quote = _mm_set1_epi8(b'"' as i8);
    let backslash = _mm_set1_epi8(b'\\' as i8);
    let below = _mm_set1_epi8(0x1f);
    while let Some(chunk) = b.get(i..i + 16) {
        // SAFETY: `chunk` is sixteen readable bytes; the load has no alignment requirement.
        let x = unsafe { _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>()) };
        // A byte is at most 0x1f where the unsigned maximum with 0x1f is 0x1f.
        let control = _mm_cmpeq_epi8(_mm_max_epu8(x, below), below);
        let stop = _mm_or_si128(
            control,
            _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
        );
        let found = _mm_movemask_epi8(stop);
        if found != 0 {
            return i + found.trailing_zeros() as usize;
        }
        i += 16;
    }
    plain_end_bytes(b, i)
}

/// [`plain_end`] eight bytes at a time, as serde_json finds it (Mycroft's test for a byte below
/// a bound: the lowest byte flagged is always a true one), then a byte at a time.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn plain_end_swar(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let has = |x: u64, c: u8| {
        let y = x ^ (ONES * u64::from(c));
        y.wrapping_sub(ONES) & !y
    };
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let found = (control | has(x, b'"') | has(x, b'\\')) & HIGH;
        if found != 0 {
            return i + found.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    plain_end_bytes(b, i)
}

fn plain_end_bytes(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// Just past the escape whose letter is at `i` (after its backslash).
fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 1),
        b'u' => b
            .get(i + 1..i + 5)?
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then_some(i + 5),
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    /// The whole of `text` one value, as the scan reads it.
    fn scans(text: &str) -> Option<&str> {
        let mut s = Scan::new(text);
        let v = s.value()?;
        s.at_end().then_some(v)
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    fn depth(text: &str) -> usize {
        // Brackets inside strings count too: an upper bound, enough to leave deep text out.
        let (mut d, mut most) = (0usize, 0usize);
        for c in text.bytes() {
            match c {
                b'{' | b'[' => {
                    d += 1;
                    most = most.max(d);
                }
                b'}' | b']' => d = d.saturating_sub(1),
                _ => {}
            }
        }
        most
    }

    /// The differential check: the scan accepts exactly what serde_json accepts (within
    /// [`MAX_DEPTH`]), and what it accepts is the whole text.
    fn agrees(text: &str) {
        let ours = scans(text);
        if let Some(v) = ours {
            assert!(
                serde_accepts(text),
                "accepted what serde_json refuses: {text:?}"
            );
            assert_eq!(v, text.trim_matches([' ', '\t', '\n', '\r']), "{text:?}");
        } else if depth(text) <= MAX_DEPTH as usize {
            assert!(
                !serde_accepts(text),
                "refused what serde_json accepts: {text:?}"
            );
        }
    }

    #[test]
    fn every_kind_of_json_is_accepted_whole() {
        for good in [
            "0",
            "-0",
            "-12.5e+3",
            "1E9",
            "0.5",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"b\\c\/\b\f\n\r\t\u00e9\uD800""#,
            "\"é 😀\"",
            "[]",
            "{}",
            " [ 1 , [ ] , { } , \"x\" ] ",
            r#"{"a":{"b":[{"c":null}]},"d":"}"}"#,
        ] {
            assert!(scans(good).is_some(), "{good:?}");
            agrees(good);
        }
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        for bad in [
            "",
            " ",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "True",
            "\"a",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "\"tab\there\"",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\" 1}",
            "[1}",
            "{\"a\":1]",
            "[[]",
            "1 2",
            "[1]]",
        ] {
            assert!(scans(bad).is_none(), "{bad:?}");
            agrees(bad);
        }
    }

    #[test]
    fn text_nested_deeper_than_the_bound_is_refused_where_serde_json_reads_it() {
        let at = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(scans(&at(MAX_DEPTH as usize)).is_some());
        assert!(scans(&at(MAX_DEPTH as usize + 1)).is_none());
        assert!(serde_accepts(&at(MAX_DEPTH as usize + 1)));
    }

    #[test]
    fn a_string_value_is_read_unescaped_and_anything_else_is_no_text() {
        assert_eq!(text(r#""plain""#).as_deref(), Some("plain"));
        assert!(matches!(text(r#""plain""#), Some(Cow::Borrowed(_))));
        assert_eq!(text(r#""\u00e9\"\\""#).as_deref(), Some("é\"\\"));
        for not in ["1", "null", "[\"a\"]", "{}", "true", r#""\uD800""#] {
            assert_eq!(text(not), None, "{not}");
        }
    }

    /// `string_value` reads what `text` of `value` reads, and takes the same text.
    #[test]
    fn a_string_value_read_in_the_scan_is_the_text_of_the_value() {
        let values = [
            r#""plain""#,
            r#""\u00e9\"\\""#,
            r#""\uD800""#,
            r#""a\nb""#,
            r#""""#,
            "1",
            "null",
            "[\"a\"]",
            "{\"k\":\"v\"}",
            "true",
            r#""cut"#,
            "\"ctl\u{1}\"",
            "-",
        ];
        for v in values {
            let text_of_value = {
                let mut s = Scan::new(v);
                s.value().map(|t| (text(t), s.here()))
            };
            let mut s = Scan::new(v);
            let read = s.string_value().map(|t| (t, s.here()));
            assert_eq!(read, text_of_value, "{v}");
        }
        let mut s = Scan::new(r#" "plain" "#);
        assert!(matches!(
            s.string_value(),
            Some(Some(Cow::Borrowed("plain")))
        ));
    }

    #[test]
    fn a_key_is_unescaped_and_its_colon_taken() {
        let mut s = Scan::new(r#" "a\u0062" : 1"#);
        assert_eq!(s.key().as_deref(), Some("ab"));
        assert_eq!(s.value(), Some("1"));
        assert!(Scan::new(r#""a" 1"#).key().is_none());
    }

    type End = fn(&[u8], usize) -> usize;

    /// Every way of finding a string's end this build has: the one it uses and the portable one.
    fn ways() -> Vec<(&'static str, End)> {
        vec![
            ("plain_end", plain_end),
            ("plain_end_swar", plain_end_swar),
            ("plain_end_bytes", plain_end_bytes),
        ]
    }

    /// The string scan's steps (sixteen or eight bytes) find the first stop byte wherever it falls, among
    /// multi-byte characters too.
    #[test]
    fn a_stop_byte_is_found_at_every_offset() {
        for len in 0..40 {
            for stop in ["\"", "\\", "\u{1}", "\u{1f}"] {
                let body = "é".repeat(len / 2) + &"x".repeat(len % 2);
                let text = format!("{body}{stop}tail");
                for (way, end) in ways() {
                    assert_eq!(end(text.as_bytes(), 0), body.len(), "{way}: {len} {stop:?}");
                }
            }
            for (way, end) in ways() {
                assert_eq!(end("y".repeat(len).as_bytes(), 0), len, "{way}");
                assert_eq!(
                    end(format!("x{}\"", "y".repeat(len)).as_bytes(), 1),
                    len + 1
                );
            }
        }
    }

    /// Every fixture body, and every body with one byte deleted, doubled or replaced at a
    /// spread of places: the scan and serde_json agree.
    #[test]
    fn the_scan_agrees_with_serde_json_on_every_fixture_and_its_mutations() {
        let bodies = fixture_bodies();
        assert!(bodies.len() > 5, "fixture bodies found: {}", bodies.len());
        let mut checked = 0;
        for body in &bodies {
            agrees(body);
            let b = body.as_bytes();
            let step = (b.len() / 97).max(1);
            for at in (0..b.len()).step_by(step) {
                for mutated in mutations(b, at) {
                    if let Ok(text) = std::str::from_utf8(&mutated) {
                        agrees(text);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000, "mutations checked: {checked}");
    }

    pub(crate) fn mutations(b: &[u8], at: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut deleted = b.to_vec();
        deleted.remove(at);
        out.push(deleted);
        let mut doubled = b.to_vec();
        doubled.insert(at, b[at]);
        out.push(doubled);
        for c in [
            b'"', b'\\', b',', b'}', b']', b'0', b'e', b'-', b'.', 0x01, b' ',
        ] {
            let mut replaced = b.to_vec();
            replaced[at] = c;
            out.push(replaced);
        }
        out
    }

    pub(crate) fn fixture_bodies() -> Vec<String> {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "json") {
                    if let Ok(body) = std::fs::read_to_string(&p) {
                        out.push(body);
                    }
                }
            }
        }
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/reference/fixtures"
        );
        let mut out = Vec::new();
        walk(std::path::Path::new(dir), &mut out);
        out
    }

    /// JSON values of every kind, nested.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Serialized values (compact or pretty), and the same with one byte deleted, doubled
        /// or replaced: the scan and serde_json agree.
        #[test]
        fn the_scan_agrees_with_serde_json_on_values_and_their_mutations(
            v in json(),
            pretty in any::<bool>(),
            at in any::<prop::sample::Index>(),
            how in 0usize..13,
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            agrees(&text);
            let b = text.as_bytes();
            let mutated = &mutations(b, at.index(b.len()))[how];
            if let Ok(t) = std::str::from_utf8(mutated) {
                agrees(t);
            }
        }

        /// Text of JSON's own bytes in any order.
        #[test]
        fn the_scan_agrees_with_serde_json_on_json_like_noise(
            text in "[\\[\\]{}\",:0-9eE.+\\- truefalsn\\\\u\t\n\u{1}é]{0,24}",
        ) {
            agrees(&text);
        }
    }
}
