//! The page envelope, read in one streaming pass: the row array is deserialized element by
//! element, so that a body can never become more rows than were asked for (`$top`), and every
//! other top-level value that is not the next link is skipped without being built.
//!
//! Before, the whole body became one `serde_json::Value` first: a 63 MiB body of `{}` rows took
//! 16 GB of memory before anything looked at it. Now a page's memory is bounded by its rows
//! (at most `max_rows`), and each row's by its bytes.

use super::{describe, DialectError, Row};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::cell::RefCell;
use std::fmt;

/// What a body's top level holds, before the dialect decides what it means.
#[derive(Debug, Default)]
pub(super) struct Envelope {
    /// `value`'s rows, when the body has a `value` key.
    pub value: Option<Vec<Row>>,
    /// `d`'s rows (verbose OData: `d` itself or `d.results`), when the body has a `d` key.
    pub d: Option<Vec<Row>>,
    /// The keys of `d` when it is an object without `results` (for the error message).
    pub d_keys: Option<Vec<String>>,
    /// `d.__next`.
    pub d_next: Option<Value>,
    /// The top-level next link fields, as found: `@odata.nextLink`, `odata.nextLink`, `__next`.
    pub links: [Option<Value>; 3],
    /// The body names an error (`error`, `odata.error`, `ErrorCode`).
    pub error_key: bool,
    /// Every top-level key, in order (for the error message).
    pub keys: Vec<String>,
}

/// The top-level link fields, in the order [`super::Api::parse_page`] prefers them.
pub(super) const LINK_FIELDS: [&str; 3] = ["@odata.nextLink", "odata.nextLink", "__next"];

/// Reads `body`'s envelope. `max_rows` bounds each row array; `metadata` drops each row's
/// `__metadata` (verbose OData).
pub(super) fn read(body: &[u8], max_rows: usize, metadata: bool) -> Result<Envelope, Read> {
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Top {
        rows: RowsSpec {
            max_rows,
            metadata,
            failure: &failure,
        },
    };
    let parsed = top.deserialize(&mut de).and_then(|e| de.end().map(|()| e));
    match (parsed, failure.into_inner()) {
        (_, Some(e)) => Err(Read::Dialect(e)),
        (Ok(e), None) => Ok(e),
        (Err(e), None) => Err(Read::Json(e)),
    }
}

/// Why an envelope could not be read.
#[derive(Debug)]
pub(super) enum Read {
    /// The body is JSON of the wrong shape.
    Dialect(DialectError),
    /// The body is not JSON.
    Json(serde_json::Error),
}

/// How row arrays are read, and where a shape error is left for [`read`].
#[derive(Clone, Copy)]
struct RowsSpec<'a> {
    max_rows: usize,
    metadata: bool,
    failure: &'a RefCell<Option<DialectError>>,
}

impl RowsSpec<'_> {
    /// Leaves `e` for [`read`] and stops the parse.
    fn fail<E: serde::de::Error>(&self, e: DialectError) -> E {
        let message = e.to_string();
        self.failure.borrow_mut().get_or_insert(e);
        E::custom(message)
    }
}

struct Top<'a> {
    rows: RowsSpec<'a>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Envelope;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
        d.deserialize_any(self)
    }
}

/// Skips whatever a visitor was given that is not what it wanted, and names it.
macro_rules! not_wanted {
    ($found:ident) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.$found("a boolean")
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.$found("a number")
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.$found("a number")
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.$found("a number")
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.$found("a string")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            self.$found("null")
        }
    };
}

impl Top<'_> {
    fn found<E: serde::de::Error>(&self, found: &'static str) -> Result<Envelope, E> {
        Err(self.rows.fail(DialectError::NotAnObject { found }))
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a `value` array")
    }

    not_wanted!(found);

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.found("an array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut env = Envelope::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "value" => env.value = Some(map.next_value_seed(Rows::new(self.rows, "value"))?),
                "d" => match map.next_value_seed(Verbose { rows: self.rows })? {
                    VerboseD::Rows(rows) => env.d = Some(rows),
                    VerboseD::Results { rows, next } => {
                        env.d = Some(rows);
                        env.d_next = next;
                    }
                    VerboseD::NoResults(keys) => env.d_keys = Some(keys),
                },
                k if LINK_FIELDS.contains(&k) => {
                    let at = LINK_FIELDS.iter().position(|f| *f == k).unwrap_or(0);
                    env.links[at] = Some(map.next_value::<Value>()?);
                }
                "error" | "odata.error" | "ErrorCode" => {
                    env.error_key = true;
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            env.keys.push(key);
        }
        Ok(env)
    }
}

/// One row array, at most `max_rows` long, each element an object.
struct Rows<'a> {
    spec: RowsSpec<'a>,
    field: &'static str,
}

impl<'a> Rows<'a> {
    fn new(spec: RowsSpec<'a>, field: &'static str) -> Rows<'a> {
        Rows { spec, field }
    }

    fn found<E: serde::de::Error>(&self, found: &'static str) -> Result<Vec<Row>, E> {
        Err(self.spec.fail(DialectError::RowsNotAnArray {
            field: self.field,
            found,
        }))
    }
}

impl<'de> DeserializeSeed<'de> for Rows<'_> {
    type Value = Vec<Row>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Row>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = Vec<Row>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    not_wanted!(found);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Row>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.found("an object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Row>, A::Error> {
        let max = self.spec.max_rows;
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
        loop {
            if rows.len() == max {
                // One more element, of any kind, is one too many: it is skipped, not built.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(self.spec.fail(DialectError::TooManyRows { max }));
                }
                return Ok(rows);
            }
            match seq.next_element::<Value>()? {
                None => return Ok(rows),
                Some(Value::Object(mut row)) => {
                    if self.spec.metadata {
                        row.remove("__metadata");
                    }
                    rows.push(row);
                }
                Some(other) => {
                    return Err(self.spec.fail(DialectError::RowNotAnObject {
                        index: rows.len(),
                        found: describe(&other),
                    }))
                }
            }
        }
    }
}

/// Verbose OData's `d`: the rows themselves, or an object with `results` (and `__next`).
struct Verbose<'a> {
    rows: RowsSpec<'a>,
}

enum VerboseD {
    Rows(Vec<Row>),
    Results { rows: Vec<Row>, next: Option<Value> },
    NoResults(Vec<String>),
}

impl Verbose<'_> {
    fn found<E: serde::de::Error>(&self, found: &'static str) -> Result<VerboseD, E> {
        Err(self
            .rows
            .fail(DialectError::RowsNotAnArray { field: "d", found }))
    }
}

impl<'de> DeserializeSeed<'de> for Verbose<'_> {
    type Value = VerboseD;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<VerboseD, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Verbose<'_> {
    type Value = VerboseD;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows or an object with `results`")
    }

    not_wanted!(found);

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<VerboseD, A::Error> {
        Rows::new(self.rows, "d").visit_seq(seq).map(VerboseD::Rows)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VerboseD, A::Error> {
        let (mut rows, mut next, mut keys) = (None, None, Vec::new());
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "results" => rows = Some(map.next_value_seed(Rows::new(self.rows, "d.results"))?),
                "__next" => next = Some(map.next_value::<Value>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            keys.push(key);
        }
        Ok(match rows {
            Some(rows) => VerboseD::Results { rows, next },
            None => VerboseD::NoResults(keys),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(body: &str, max: usize) -> Result<usize, String> {
        match read(body.as_bytes(), max, false) {
            Ok(e) => Ok(e.value.or(e.d).map_or(0, |r| r.len())),
            Err(Read::Dialect(e)) => Err(e.to_string()),
            Err(Read::Json(e)) => Err(format!("json: {e}")),
        }
    }

    #[test]
    fn a_row_array_longer_than_asked_for_is_refused_without_building_it() {
        assert_eq!(rows(r#"{"value":[{},{}]}"#, 2), Ok(2));
        let refused =
            Err("the page holds more rows than the 2 asked for ($top): not a page".into());
        assert_eq!(rows(r#"{"value":[{},{},{}]}"#, 2), refused);
        // Whatever the third element is, it is one too many; and the rest is never read.
        assert_eq!(rows(r#"{"value":[{},{},0,"#, 2), refused);
        assert_eq!(rows(r#"{"d":{"results":[{},{},{}]}}"#, 2), refused);
        assert_eq!(rows(r#"{"d":[{},{},[]]}"#, 2), refused);
    }

    #[test]
    fn what_is_not_a_link_or_rows_is_skipped_and_its_key_kept() {
        let e = read(
            br#"{"@odata.context":"c","x":[1,{"y":2}],"value":[],"odata.nextLink":"n"}"#,
            10,
            false,
        )
        .unwrap();
        assert_eq!(e.keys, ["@odata.context", "x", "value", "odata.nextLink"]);
        assert_eq!(e.links[1], Some(Value::from("n")));
        assert!(!e.error_key);
    }

    #[test]
    fn trailing_bytes_after_the_object_are_not_json() {
        assert!(matches!(
            read(br#"{"value":[]} {"value":[]}"#, 10, false),
            Err(Read::Json(_))
        ));
    }
}
