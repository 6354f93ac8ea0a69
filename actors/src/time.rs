//! Relative time expressions, in the syntax shared by Cribl Stream and Splunk.
//!
//! A [`TimeExpr`] is what a user writes for "date range start/end": `now`, an absolute time in
//! epoch seconds (`1720536960`), or a chain of offsets and snaps evaluated left to right from
//! "now" (`-3h@h`, `@d-2h`, `-mon@mon+7d`). All arithmetic is in UTC.
//!
//! # Grammar
//!
//! ```text
//! expr   := "now" | epoch | item+            (surrounding whitespace is ignored)
//! epoch  := digit+                           (unsigned: absolute epoch seconds)
//! item   := offset | snap
//! offset := ("+" | "-") digit* unit?         (no digits = 1, no unit = seconds; not both omitted)
//! snap   := "@" unit weekday?                (weekday 0..7 only after a week unit)
//! unit   := s | m | h | d | w | mon | q | y  (and long forms, see below; case-insensitive)
//! ```
//!
//! Long unit forms: `sec secs second seconds`, `min mins minute minutes`, `hr hrs hour hours`,
//! `day days`, `week weeks`, `month months`, `qtr qtrs quarter quarters`, `yr yrs year years`.
//!
//! * **Epoch versus seconds offset.** A bare number is ambiguous in the Splunk documentation
//!   ("a number without a unit is seconds"). Following Cribl, an *unsigned* integer is an absolute
//!   time in epoch seconds (`1720536960` = 2024-07-09T14:56:00Z) and a *signed* one is an offset
//!   in seconds (`-30` = thirty seconds ago). An unsigned number followed by a unit (`3h`) is
//!   rejected: write `-3h` or `+3h`.
//! * **Offsets.** `s m h d w` are fixed lengths. `mon q y` are calendar arithmetic on the date
//!   (1, 3 and 12 months) keeping the time of day; a day that does not exist in the target month
//!   is clamped to its last day (2024-03-31 `-1mon` is 2024-02-29).
//! * **Snaps.** `@unit` always rounds *down* to the start of the unit, even after a `+` offset.
//!   `@w`, `@w0` and `@w7` snap to the previous (or current) Sunday 00:00, `@w1`..`@w6` to
//!   Monday..Saturday; `@mon` to the 1st of the month, `@q` to the first day of the quarter
//!   (January, April, July, October), `@y` to 1 January.
//!
//! # Examples
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use msgtrace_actors::time::TimeExpr;
//!
//! let now = Utc.with_ymd_and_hms(2022, 2, 9, 13, 37, 5).unwrap();
//! let start: TimeExpr = "-1d@d".parse().unwrap();
//! assert_eq!(start.resolve(now), Utc.with_ymd_and_hms(2022, 2, 8, 0, 0, 0).unwrap());
//! assert_eq!(start.to_string(), "-1d@d");
//! assert!(TimeExpr::parse("-3x").is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, Months, NaiveTime, TimeDelta, Timelike, Utc};

/// The forms a time expression may take, quoted in every parse error.
const ACCEPTED: &str =
    "accepted forms: `now`, epoch seconds (`1720536960`), or offsets and snaps such as \
     `-15m`, `-30`, `-1h@h`, `@d-2h`, `-mon@mon+7d`, `@w1` \
     (units s, m, h, d, w, mon, q, y)";

/// An offset larger than this many years can never give a representable time (chrono covers about
/// ±262,000 years), so parsing rejects it instead of silently saturating.
const MAX_OFFSET_YEARS: u64 = 600_000;

/// How much of the user's input an error message quotes.
const MAX_QUOTED_CHARS: usize = 64;

/// A time expression that failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The expression was empty or only whitespace.
    #[error("empty time expression; {}", ACCEPTED)]
    Empty,
    /// A part of the expression is not valid; `part` is the text from the bad item onwards.
    #[error(
        "invalid time expression `{expr}`: {problem} at `{part}`; {}",
        ACCEPTED
    )]
    Invalid {
        /// The whole (trimmed, possibly shortened) expression.
        expr: String,
        /// The text from the offending item onwards.
        part: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An unsigned integer (epoch seconds) outside the representable range of dates.
    #[error("epoch seconds `{expr}` are out of range (expected e.g. `1720536960` for 2024-07-09T14:56:00Z)")]
    EpochOutOfRange {
        /// The expression as given.
        expr: String,
    },
}

/// A unit of time usable in offsets and snaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Unit {
    /// Looks a unit name up, case-insensitively.
    fn from_name(name: &str) -> Option<Unit> {
        let unit = match name.to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => Unit::Second,
            "m" | "min" | "mins" | "minute" | "minutes" => Unit::Minute,
            "h" | "hr" | "hrs" | "hour" | "hours" => Unit::Hour,
            "d" | "day" | "days" => Unit::Day,
            "w" | "week" | "weeks" => Unit::Week,
            "mon" | "month" | "months" => Unit::Month,
            "q" | "qtr" | "qtrs" | "quarter" | "quarters" => Unit::Quarter,
            "y" | "yr" | "yrs" | "year" | "years" => Unit::Year,
            _ => return None,
        };
        Some(unit)
    }

    /// Length in seconds of a fixed-length unit, or `None` for calendar units.
    fn fixed_seconds(self) -> Option<u64> {
        match self {
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3_600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(7 * 86_400),
            Unit::Month | Unit::Quarter | Unit::Year => None,
        }
    }

    /// Length in months of a calendar unit (0 for fixed-length units).
    fn months(self) -> u64 {
        match self {
            Unit::Month => 1,
            Unit::Quarter => 3,
            Unit::Year => 12,
            _ => 0,
        }
    }

    /// The largest offset amount accepted for this unit.
    fn max_amount(self) -> u64 {
        match self.fixed_seconds() {
            Some(secs) => MAX_OFFSET_YEARS * 366 * 86_400 / secs,
            None => MAX_OFFSET_YEARS * 12 / self.months(),
        }
    }
}

/// One step of a relative chain.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Move by `amount` units (negative = into the past).
    Offset { amount: i64, unit: Unit },
    /// Round down to the start of `unit`; for weeks, `weekday` is days from Sunday (0..=6).
    Snap { unit: Unit, weekday: u32 },
}

/// What an expression means, once parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Now,
    Epoch(DateTime<Utc>),
    Chain(Vec<Step>),
}

/// A parsed date-range expression: `now`, epoch seconds (`1720536960`), or a chain of offsets
/// and snaps (`-3h@h`, `@d-2h`, `-mon@mon+7d`, `-h@h`, `-7d@m`, `@w1`, `+1d@d`, `-15m`, `-30`).
///
/// See the [module documentation](self) for the grammar. It serializes as the original
/// (trimmed) string and deserializes through [`TimeExpr::parse`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeExpr {
    /// The expression as written (whitespace trimmed): what `Display` and serde give back.
    source: String,
    /// Its meaning.
    kind: Kind,
}

impl TimeExpr {
    /// An absolute time (whole seconds), as if written as epoch seconds.
    pub fn epoch(t: DateTime<Utc>) -> TimeExpr {
        let secs = t.timestamp();
        TimeExpr {
            source: secs.to_string(),
            kind: Kind::Epoch(DateTime::from_timestamp(secs, 0).unwrap_or(t)),
        }
    }

    /// Parses an expression; surrounding whitespace is ignored.
    ///
    /// Errors name the bad part and list the accepted forms. Offsets beyond 600,000 years in a
    /// single item are rejected (they could never be represented).
    pub fn parse(s: &str) -> Result<TimeExpr, TimeError> {
        let source = s.trim();
        if source.is_empty() {
            return Err(TimeError::Empty);
        }
        let kind = if source.eq_ignore_ascii_case("now") {
            Kind::Now
        } else if source.bytes().all(|b| b.is_ascii_digit()) {
            let epoch = source
                .parse::<i64>()
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
                .ok_or_else(|| TimeError::EpochOutOfRange {
                    expr: shorten(source),
                })?;
            Kind::Epoch(epoch)
        } else {
            Kind::Chain(parse_chain(source)?)
        };
        Ok(TimeExpr {
            source: source.to_owned(),
            kind,
        })
    }

    /// The absolute UTC time this expression stands for, relative to `now` (epoch seconds ignore
    /// `now`).
    ///
    /// Never panics: a step that would leave chrono's range (about ±262,000 years) saturates at
    /// [`DateTime::<Utc>::MIN_UTC`] or [`DateTime::<Utc>::MAX_UTC`]; only absurd chains such as
    /// `-500000y-500000y` can get there, so callers that care may compare against those bounds.
    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match &self.kind {
            Kind::Now => now,
            Kind::Epoch(t) => *t,
            Kind::Chain(steps) => steps.iter().fold(now, |t, step| match *step {
                Step::Offset { amount, unit } => apply_offset(t, amount, unit),
                Step::Snap { unit, weekday } => snap(t, unit, weekday),
            }),
        }
    }

    /// The expression as written (surrounding whitespace trimmed).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True for an absolute time (epoch seconds), whose value does not depend on "now".
    pub fn is_absolute(&self) -> bool {
        matches!(self.kind, Kind::Epoch(_))
    }
}

impl FromStr for TimeExpr {
    type Err = TimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeExpr::parse(s)
    }
}

impl TryFrom<String> for TimeExpr {
    type Error = TimeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        TimeExpr::parse(&s)
    }
}

impl From<TimeExpr> for String {
    fn from(expr: TimeExpr) -> String {
        expr.source
    }
}

impl fmt::Display for TimeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Shortens user input for quoting in an error message.
fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        out.push('…');
        out
    }
}

/// Parses a chain of offsets and snaps. `src` is trimmed and not empty.
fn parse_chain(src: &str) -> Result<Vec<Step>, TimeError> {
    let chain = Chain { src };
    let mut steps = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let (step, next) = match src.as_bytes()[i] {
            sign @ (b'+' | b'-') => chain.offset(i, sign == b'-')?,
            b'@' => chain.snap(i)?,
            b'0'..=b'9' => {
                return Err(chain.invalid(
                    i,
                    "an offset must start with `+` or `-` (only a whole unsigned number is epoch seconds)",
                ))
            }
            _ => return Err(chain.invalid(i, "not an offset (`+…`, `-…`) or a snap (`@…`)")),
        };
        steps.push(step);
        i = next;
    }
    Ok(steps)
}

/// The text of a chain of offsets and snaps, read one step at a time.
struct Chain<'a> {
    src: &'a str,
}

impl Chain<'_> {
    fn invalid(&self, at: usize, problem: &str) -> TimeError {
        TimeError::Invalid {
            expr: shorten(self.src),
            // `at` always follows ASCII bytes only, so it is a char boundary.
            part: shorten(self.src.get(at..).unwrap_or("")),
            problem: problem.to_owned(),
        }
    }

    /// Where the run of bytes matching `pred` that starts at `from` ends.
    fn run_end(&self, from: usize, pred: fn(&u8) -> bool) -> usize {
        from + self.src.as_bytes()[from..]
            .iter()
            .take_while(|b| pred(b))
            .count()
    }

    /// `+N unit` or `-N unit` at `start` (the sign): the step and where the next one starts.
    fn offset(&self, start: usize, negative: bool) -> Result<(Step, usize), TimeError> {
        let digits_end = self.run_end(start + 1, u8::is_ascii_digit);
        let unit_end = self.run_end(digits_end, u8::is_ascii_alphabetic);
        let digits = &self.src[start + 1..digits_end];
        let unit_name = &self.src[digits_end..unit_end];
        if digits.is_empty() && unit_name.is_empty() {
            return Err(self.invalid(start, "a sign must be followed by a number and/or a unit"));
        }
        let unit = if unit_name.is_empty() {
            Unit::Second
        } else {
            Unit::from_name(unit_name).ok_or_else(|| self.invalid(digits_end, "unknown unit"))?
        };
        let amount = if digits.is_empty() {
            1
        } else {
            digits.parse::<u64>().unwrap_or(u64::MAX)
        };
        if amount > unit.max_amount() {
            return Err(self.invalid(start, "offset is too large (more than 600000 years)"));
        }
        // max_amount() is far below i64::MAX, so the conversion cannot fail.
        let amount = i64::try_from(amount).unwrap_or(i64::MAX);
        let amount = if negative { -amount } else { amount };
        Ok((Step::Offset { amount, unit }, unit_end))
    }

    /// `@unit` (`@w1` for a week starting on a weekday) at `start`: the step and where the next
    /// one starts.
    fn snap(&self, start: usize) -> Result<(Step, usize), TimeError> {
        let unit_end = self.run_end(start + 1, u8::is_ascii_alphabetic);
        let unit_name = &self.src[start + 1..unit_end];
        if unit_name.is_empty() {
            return Err(self.invalid(
                start,
                "`@` must be followed by a snap unit (s, m, h, d, w, w0..w7, mon, q, y)",
            ));
        }
        let unit = Unit::from_name(unit_name)
            .ok_or_else(|| self.invalid(start + 1, "unknown snap unit"))?;
        let digits_end = self.run_end(unit_end, u8::is_ascii_digit);
        let weekday = match (unit, &self.src[unit_end..digits_end]) {
            (_, "") => 0,
            (Unit::Week, d) if d.len() == 1 && d <= "7" => u32::from(d.as_bytes()[0] - b'0') % 7,
            (Unit::Week, _) => {
                return Err(self.invalid(unit_end, "week snap day must be 0..7 (0 and 7 = Sunday)"))
            }
            _ => {
                return Err(self.invalid(
                    unit_end,
                    "a number after a snap unit is only allowed for weeks (`@w1`)",
                ))
            }
        };
        Ok((Step::Snap { unit, weekday }, digits_end))
    }
}

/// Applies one offset, saturating at the ends of chrono's range.
fn apply_offset(t: DateTime<Utc>, amount: i64, unit: Unit) -> DateTime<Utc> {
    let saturated = if amount < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    };
    match unit.fixed_seconds() {
        Some(secs) => i64::try_from(secs)
            .ok()
            .and_then(|secs| amount.checked_mul(secs))
            .and_then(TimeDelta::try_seconds)
            .and_then(|delta| t.checked_add_signed(delta))
            .unwrap_or(saturated),
        None => {
            let months = amount
                .unsigned_abs()
                .checked_mul(unit.months())
                .and_then(|m| u32::try_from(m).ok());
            let moved = match months {
                Some(m) if amount < 0 => t.checked_sub_months(Months::new(m)),
                Some(m) => t.checked_add_months(Months::new(m)),
                None => None,
            };
            moved.unwrap_or(saturated)
        }
    }
}

/// Rounds `t` down to the start of `unit`. Never returns a time later than `t`.
fn snap(t: DateTime<Utc>, unit: Unit, weekday: u32) -> DateTime<Utc> {
    let midnight = |date: chrono::NaiveDate| date.and_time(NaiveTime::MIN).and_utc();
    let date = t.date_naive();
    let snapped = match unit {
        Unit::Second => t.with_nanosecond(0),
        Unit::Minute => t.with_nanosecond(0).and_then(|t| t.with_second(0)),
        Unit::Hour => t
            .with_nanosecond(0)
            .and_then(|t| t.with_second(0))
            .and_then(|t| t.with_minute(0)),
        Unit::Day => Some(midnight(date)),
        Unit::Week => {
            let today = date.weekday().num_days_from_sunday();
            let back = (today + 7 - weekday) % 7;
            date.checked_sub_days(Days::new(u64::from(back)))
                .map(midnight)
        }
        Unit::Month => date.with_day(1).map(midnight),
        Unit::Quarter => date
            .with_day(1)
            .and_then(|d| d.with_month((d.month0() / 3) * 3 + 1))
            .map(midnight),
        Unit::Year => date.with_ordinal(1).map(midnight),
    };
    // Only the week snap can fail (before the first representable Sunday); rounding down past the
    // start of the range saturates there.
    snapped.unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// "now" of the test vectors in o365-api.md §4.
    fn now() -> DateTime<Utc> {
        at(2022, 2, 9, 13, 37, 5)
    }

    fn eval(s: &str) -> DateTime<Utc> {
        TimeExpr::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .resolve(now())
    }

    #[test]
    fn reference_test_vectors() {
        assert_eq!(eval("-60m"), at(2022, 2, 9, 12, 37, 5));
        assert_eq!(eval("-1h@h"), at(2022, 2, 9, 12, 0, 0));
        assert_eq!(eval("-1d@d"), at(2022, 2, 8, 0, 0, 0));
        assert_eq!(eval("-7d@m"), at(2022, 2, 2, 13, 37, 0));
        assert_eq!(eval("@w0"), at(2022, 2, 6, 0, 0, 0));
        assert_eq!(eval("+1d@d"), at(2022, 2, 10, 0, 0, 0));
        assert_eq!(eval("@d-2h"), at(2022, 2, 8, 22, 0, 0));
        assert_eq!(eval("-mon@mon+7d"), at(2022, 1, 8, 0, 0, 0));
    }

    #[test]
    fn brief_examples() {
        assert_eq!(eval("now"), now());
        assert_eq!(eval("NOW"), now());
        assert_eq!(eval("  -15m  "), at(2022, 2, 9, 13, 22, 5));
        assert_eq!(eval("-30"), at(2022, 2, 9, 13, 36, 35));
        assert_eq!(eval("+30"), at(2022, 2, 9, 13, 37, 35));
        assert_eq!(eval("-3h@h"), at(2022, 2, 9, 10, 0, 0));
        assert_eq!(eval("-h@h"), at(2022, 2, 9, 12, 0, 0));
        assert_eq!(eval("1720536960"), at(2024, 7, 9, 14, 56, 0));
        assert_eq!(eval("0"), at(1970, 1, 1, 0, 0, 0));
        assert!(TimeExpr::parse("1720536960").unwrap().is_absolute());
        assert!(!TimeExpr::parse("now").unwrap().is_absolute());
        assert!(!TimeExpr::parse("-30").unwrap().is_absolute());
    }

    #[test]
    fn every_unit_and_long_form_as_offset() {
        let cases: &[(&[&str], DateTime<Utc>)] = &[
            (
                &["s", "sec", "secs", "second", "seconds"],
                at(2022, 2, 9, 13, 37, 3),
            ),
            (
                &["m", "min", "mins", "minute", "minutes"],
                at(2022, 2, 9, 13, 35, 5),
            ),
            (
                &["h", "hr", "hrs", "hour", "hours"],
                at(2022, 2, 9, 11, 37, 5),
            ),
            (&["d", "day", "days"], at(2022, 2, 7, 13, 37, 5)),
            (&["w", "week", "weeks"], at(2022, 1, 26, 13, 37, 5)),
            (&["mon", "month", "months"], at(2021, 12, 9, 13, 37, 5)),
            (
                &["q", "qtr", "qtrs", "quarter", "quarters"],
                at(2021, 8, 9, 13, 37, 5),
            ),
            (
                &["y", "yr", "yrs", "year", "years"],
                at(2020, 2, 9, 13, 37, 5),
            ),
        ];
        for (names, expected) in cases {
            for name in *names {
                assert_eq!(eval(&format!("-2{name}")), *expected, "-2{name}");
                assert_eq!(eval(&format!("-2{}", name.to_uppercase())), *expected);
            }
        }
    }

    #[test]
    fn every_snap_unit() {
        let cases: &[(&[&str], DateTime<Utc>)] = &[
            (&["s", "sec", "seconds"], at(2022, 2, 9, 13, 37, 5)),
            (&["m", "min", "minutes"], at(2022, 2, 9, 13, 37, 0)),
            (&["h", "hr", "hours"], at(2022, 2, 9, 13, 0, 0)),
            (&["d", "day", "days"], at(2022, 2, 9, 0, 0, 0)),
            (
                &["w", "w0", "w7", "week", "weeks0"],
                at(2022, 2, 6, 0, 0, 0),
            ),
            (&["mon", "month", "months"], at(2022, 2, 1, 0, 0, 0)),
            (&["q", "qtr", "quarter"], at(2022, 1, 1, 0, 0, 0)),
            (&["y", "yr", "year"], at(2022, 1, 1, 0, 0, 0)),
        ];
        for (names, expected) in cases {
            for name in *names {
                assert_eq!(eval(&format!("@{name}")), *expected, "@{name}");
            }
        }
    }

    #[test]
    fn snap_second_drops_fraction() {
        let t = now() + TimeDelta::milliseconds(999);
        assert_eq!(TimeExpr::parse("@s").unwrap().resolve(t), now());
    }

    #[test]
    fn week_days() {
        // 2022-02-09 is a Wednesday.
        assert_eq!(eval("@w1"), at(2022, 2, 7, 0, 0, 0)); // Monday
        assert_eq!(eval("@w2"), at(2022, 2, 8, 0, 0, 0)); // Tuesday
        assert_eq!(eval("@w3"), at(2022, 2, 9, 0, 0, 0)); // today
        assert_eq!(eval("@w4"), at(2022, 2, 3, 0, 0, 0)); // last Thursday
        assert_eq!(eval("@w6"), at(2022, 2, 5, 0, 0, 0)); // Saturday
        assert_eq!(eval("@w7"), eval("@w0"));
    }

    #[test]
    fn quarters_and_years() {
        let t = at(2023, 11, 15, 8, 0, 0);
        let r = |s: &str| TimeExpr::parse(s).unwrap().resolve(t);
        assert_eq!(r("@q"), at(2023, 10, 1, 0, 0, 0));
        assert_eq!(r("-q@q"), at(2023, 7, 1, 0, 0, 0));
        assert_eq!(r("@y"), at(2023, 1, 1, 0, 0, 0));
        assert_eq!(r("-1y@y"), at(2022, 1, 1, 0, 0, 0));
        assert_eq!(r("+1q@q"), at(2024, 1, 1, 0, 0, 0));
        let t = at(2023, 6, 30, 23, 59, 59);
        assert_eq!(
            TimeExpr::parse("@q").unwrap().resolve(t),
            at(2023, 4, 1, 0, 0, 0)
        );
    }

    #[test]
    fn snap_rounds_down_even_after_plus() {
        assert_eq!(eval("+59m@h"), at(2022, 2, 9, 14, 0, 0));
        assert_eq!(eval("+1s@m"), at(2022, 2, 9, 13, 37, 0));
        assert_eq!(eval("+1mon@y"), at(2022, 1, 1, 0, 0, 0));
    }

    #[test]
    fn month_arithmetic_clamps_the_day() {
        let r = |s: &str, t| TimeExpr::parse(s).unwrap().resolve(t);
        assert_eq!(
            r("-1mon", at(2024, 3, 31, 10, 0, 0)),
            at(2024, 2, 29, 10, 0, 0)
        );
        assert_eq!(
            r("-1mon", at(2023, 3, 31, 10, 0, 0)),
            at(2023, 2, 28, 10, 0, 0)
        );
        assert_eq!(
            r("+1mon", at(2023, 1, 31, 0, 0, 0)),
            at(2023, 2, 28, 0, 0, 0)
        );
        assert_eq!(r("-1q", at(2023, 5, 31, 0, 0, 0)), at(2023, 2, 28, 0, 0, 0));
        assert_eq!(r("-1y", at(2024, 2, 29, 0, 0, 0)), at(2023, 2, 28, 0, 0, 0));
        assert_eq!(
            r("+12mon", at(2024, 2, 29, 0, 0, 0)),
            at(2025, 2, 28, 0, 0, 0)
        );
    }

    #[test]
    fn display_serde_and_as_str_keep_the_source() {
        let e: TimeExpr = " -mon@mon+7d ".parse().unwrap();
        assert_eq!(e.as_str(), "-mon@mon+7d");
        assert_eq!(e.to_string(), "-mon@mon+7d");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, "\"-mon@mon+7d\"");
        let back: TimeExpr = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        let err = serde_json::from_str::<TimeExpr>("\"-3x\"").unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let err = |s: &str| TimeExpr::parse(s).unwrap_err().to_string();
        assert_eq!(err(""), format!("empty time expression; {ACCEPTED}"));
        assert_eq!(err("   "), format!("empty time expression; {ACCEPTED}"));
        assert_eq!(
            err("-3x"),
            format!("invalid time expression `-3x`: unknown unit at `x`; {ACCEPTED}")
        );
        assert!(err("@").contains("`@` must be followed by a snap unit"));
        assert!(err("-").contains("a sign must be followed by a number and/or a unit at `-`"));
        assert!(err("3h@").contains("must start with `+` or `-`"));
        assert!(err("-3h@").contains(
            "`@` must be followed by a snap unit (s, m, h, d, w, w0..w7, mon, q, y) at `@`;"
        ));
        assert!(err("@h@").contains("at `@`"));
        assert!(err("@x").contains("unknown snap unit at `x`"));
        assert!(err("@w8").contains("week snap day must be 0..7 (0 and 7 = Sunday) at `8`"));
        assert!(err("@w12").contains("week snap day"));
        assert!(err("@d1").contains("only allowed for weeks"));
        assert!(err("-1h @h").contains("not an offset (`+…`, `-…`) or a snap (`@…`) at ` @h`"));
        assert!(err("-1d2h").contains("at `2h`"));
        assert!(err("yesterday").contains("at `yesterday`"));
        assert!(err("now-1h").contains("at `now-1h`"));
        assert!(err("-1.5h").contains("at `.5h`"));
        assert!(err("–1h").contains("not an offset")); // en dash
        for e in ["", "-3x", "@", "-", "3h@", "@h@", "garbage"] {
            assert!(!err(e).contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn huge_numbers_are_errors_or_saturate() {
        let err = |s: &str| TimeExpr::parse(s).unwrap_err().to_string();
        assert!(err("-99999999999999999999999999h").contains("too large"));
        assert!(err("-18446744073709551615s").contains("too large"));
        assert!(err("-600001y").contains("too large"));
        assert!(err("99999999999999999999").contains("out of range"));
        assert!(err("9223372036854775807").contains("out of range"));
        // Accepted one by one, out of range together: saturates instead of panicking.
        let e = TimeExpr::parse("-500000y-500000y").unwrap();
        assert_eq!(e.resolve(now()), DateTime::<Utc>::MIN_UTC);
        let e = TimeExpr::parse("+500000y+500000y@w").unwrap();
        assert!(e.resolve(now()) <= DateTime::<Utc>::MAX_UTC);
        let e = TimeExpr::parse("+600000y").unwrap();
        assert_eq!(e.resolve(now()), DateTime::<Utc>::MAX_UTC);
        let e = TimeExpr::parse("-600000y@w").unwrap();
        assert_eq!(e.resolve(now()), DateTime::<Utc>::MIN_UTC);
        let e = TimeExpr::parse(&format!("-{}s", Unit::Second.max_amount())).unwrap();
        assert_eq!(e.resolve(now()), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn long_garbage_is_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let msg = TimeExpr::parse(&long).unwrap_err().to_string();
        assert!(msg.len() < 600, "{}", msg.len());
    }

    /// Every unit spelling, for generated expressions.
    const UNITS: &[&str] = &[
        "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes", "h",
        "hr", "hrs", "hour", "hours", "d", "day", "days", "w", "week", "weeks", "mon", "month",
        "months", "q", "qtr", "qtrs", "quarter", "quarters", "y", "yr", "yrs", "year", "years",
    ];
    const SNAPS: &[&str] = &[
        "s", "m", "h", "d", "w", "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "mon", "q", "y",
        "day", "hours", "quarter", "year",
    ];

    fn item() -> impl Strategy<Value = String> {
        let amount = prop_oneof![
            Just(String::new()),
            (0u64..1_000).prop_map(|n| n.to_string()),
            any::<u32>().prop_map(|n| n.to_string()),
        ];
        let unit = prop_oneof![Just(""), proptest::sample::select(UNITS)];
        let offset =
            (prop_oneof![Just('+'), Just('-')], amount, unit).prop_map(|(sign, amount, unit)| {
                // A sign alone is not valid; make it one second.
                let amount = if amount.is_empty() && unit.is_empty() {
                    "1".into()
                } else {
                    amount
                };
                format!("{sign}{amount}{unit}")
            });
        let snap = proptest::sample::select(SNAPS).prop_map(|u| format!("@{u}"));
        prop_oneof![offset, snap]
    }

    fn chain() -> impl Strategy<Value = String> {
        proptest::collection::vec(item(), 1..6).prop_map(|items| items.concat())
    }

    fn time_1970_2200() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..7_258_118_400, 0u32..1_000_000_000)
            .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = TimeExpr::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "[-+@0-9a-zA-Z ]{0,24}") {
            if let Ok(e) = TimeExpr::parse(&s) {
                let _ = e.resolve(Utc::now());
            }
        }

        #[test]
        fn generated_expressions_parse_and_resolve(expr in chain(), now in time_1970_2200()) {
            // Amounts near u32::MAX of large units exceed the limit and must be clean errors.
            match TimeExpr::parse(&expr) {
                Ok(e) => { let _ = e.resolve(now); }
                Err(err) => prop_assert!(err.to_string().contains("too large"), "{expr}: {err}"),
            }
        }

        #[test]
        fn snapping_never_moves_forward(
            expr in chain(),
            unit in proptest::sample::select(SNAPS),
            now in time_1970_2200(),
        ) {
            if let Ok(x) = TimeExpr::parse(&expr) {
                let snapped = TimeExpr::parse(&format!("{expr}@{unit}")).unwrap();
                prop_assert!(snapped.resolve(now) <= x.resolve(now), "{expr}@{unit} at {now}");
            }
        }

        #[test]
        fn epoch_seconds_ignore_now(secs in 0i64..7_258_118_400, now in time_1970_2200()) {
            let e = TimeExpr::parse(&secs.to_string()).unwrap();
            prop_assert_eq!(e.resolve(now), DateTime::from_timestamp(secs, 0).unwrap());
        }
    }
}
