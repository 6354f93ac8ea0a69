//! Small parsers and message helpers shared by the loading and validation steps: durations, cron
//! expressions, key paths and the wording of serde's errors.

use std::time::Duration;

/// Joins a key path and a key (`sources.a` + `url`).
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Whether `path` is `parent` or lies inside it (`parent.x`, `parent[0]`).
pub(crate) fn is_within(path: &str, parent: &str) -> bool {
    match path.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

const DURATION_HINT: &str = "write a number of seconds or <n><unit> with unit s, m, h or d, e.g. \"45s\", \"15m\", \"4h\", \"2d\"";

/// Why a text is not a duration (each message ends with how to write one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// Nothing but white space.
    #[error("empty duration; {}", DURATION_HINT)]
    Empty,
    /// More seconds than a `u64` holds.
    #[error("duration too large; {}", DURATION_HINT)]
    TooLarge,
    /// A part that does not start with a number.
    #[error("not a duration; {}", DURATION_HINT)]
    NotADuration,
    /// A number inside the text without its unit (`5m3`).
    #[error("a number inside a duration needs a unit; {}", DURATION_HINT)]
    NoUnit,
    /// A unit other than `s`, `m`, `h` or `d`.
    #[error("unknown duration unit; {}", DURATION_HINT)]
    UnknownUnit,
}

/// Parses a duration: a number of seconds (`"30"`) or one or more `<n><unit>` parts with unit
/// `s`, `m`, `h` or `d` (`"45s"`, `"15m"`, `"4h"`, `"2d"`, `"1h30m"`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError::TooLarge);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotADuration);
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge)?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => return Err(DurationError::NoUnit),
            _ => return Err(DurationError::UnknownUnit),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit)
            .and_then(|n| total.checked_add(n))
            .ok_or(DurationError::TooLarge)?;
    }
    Ok(Duration::from_secs(total))
}

/// Why a text is not a 5-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CronError {
    /// `@` and a name that is not one of the shorthands.
    #[error("unknown shorthand; use @yearly, @monthly, @weekly, @daily or @hourly, or 5 fields")]
    UnknownShorthand,
    /// Not five fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), found {0}; e.g. \"*/15 * * * *\""
    )]
    FieldCount(usize),
    /// One field is wrong.
    #[error("{name} field `{field}`: {why}")]
    Field {
        /// The field's name (`minute`, `day-of-week`).
        name: &'static str,
        /// The field as written.
        field: String,
        /// What is wrong with it.
        why: CronFieldError,
    },
}

/// What is wrong with one field of a cron expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CronFieldError {
    /// `/0`, `/x`.
    #[error("step `{0}` must be a positive number")]
    Step(String),
    /// `5-1`.
    #[error("range {0}-{1} runs backwards")]
    Backwards(u32, u32),
    /// `,5`.
    #[error("empty list item")]
    EmptyItem,
    /// A number past the field's range.
    #[error("{n} is outside {min}-{max}")]
    Outside {
        /// The number.
        n: u32,
        /// The field's least value.
        min: u32,
        /// The field's greatest value.
        max: u32,
    },
    /// Neither a number nor a name of the field.
    #[error("`{v}` is not a number in {min}-{max}")]
    NotANumber {
        /// The text.
        v: String,
        /// The field's least value.
        min: u32,
        /// The field's greatest value.
        max: u32,
    },
    /// `sat-mon`.
    #[error("day-of-week range runs backwards")]
    DaysBackwards,
    /// `mon-fri/2`.
    #[error("steps over a day-of-week range are not supported; list the days")]
    DayStep,
}

/// Checks a standard 5-field cron expression (minute hour day-of-month month day-of-week, or a
/// shorthand such as `@hourly`) and returns it in the `cron` crate's form: seconds first
/// (`"0 */15 * * * *"`), with numeric days of week turned into names (that crate counts Sunday
/// as 1 where standard cron counts it as 0).
pub(crate) fn cron_to_six_fields(expr: &str) -> Result<String, CronError> {
    let expr = expr.trim();
    if expr.starts_with('@') {
        return match expr {
            "@yearly" | "@monthly" | "@weekly" | "@daily" | "@hourly" => Ok(expr.to_owned()),
            _ => Err(CronError::UnknownShorthand),
        };
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(CronError::FieldCount(fields.len()));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let specs = [
        CronField::numbers("minute", 0, 59),
        CronField::numbers("hour", 0, 23),
        CronField::numbers("day-of-month", 1, 31),
        CronField {
            names: MONTHS,
            first: 1,
            ..CronField::numbers("month", 1, 12)
        },
        CronField {
            names: DAYS,
            ..CronField::numbers("day-of-week", 0, 7)
        },
    ];
    let mut out = vec!["0".to_owned()];
    for (field, spec) in fields.iter().zip(specs) {
        let checked = spec.check(field).map_err(|why| CronError::Field {
            name: spec.name,
            field: (*field).to_owned(),
            why,
        })?;
        out.push(checked);
    }
    Ok(out.join(" "))
}

/// One field of a 5-field cron expression: its range and the names it accepts.
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names of the values (`jan`, `sun`), the first one meaning `first`.
    names: &'static [&'static str],
    first: u32,
}

impl CronField {
    fn numbers(name: &'static str, min: u32, max: u32) -> CronField {
        CronField {
            name,
            min,
            max,
            names: &[],
            first: 0,
        }
    }

    fn is_day_of_week(&self) -> bool {
        self.name == "day-of-week"
    }

    /// The field in the `cron` crate's form: numeric days of week become names.
    fn check(&self, field: &str) -> Result<String, CronFieldError> {
        let items: Result<Vec<String>, CronFieldError> =
            field.split(',').map(|item| self.item(item)).collect();
        Ok(items?.join(","))
    }

    /// One list item: `*`, `?`, a value or a range, with an optional `/step`.
    fn item(&self, item: &str) -> Result<String, CronFieldError> {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => match step.parse::<u32>() {
                Ok(s) if s >= 1 => (base, Some(s)),
                _ => return Err(CronFieldError::Step(step.to_owned())),
            },
            None => (item, None),
        };
        let step_text = step.map(|s| format!("/{s}")).unwrap_or_default();
        let dow = self.is_day_of_week();
        if base == "*" || (base == "?" && (dow || self.name == "day-of-month")) {
            return Ok(format!("{base}{step_text}"));
        }
        if let Some((lo, hi)) = base.split_once('-') {
            let (lo, hi) = (self.value(lo)?, self.value(hi)?);
            if dow {
                return day_range(lo, hi, step);
            }
            if lo > hi {
                return Err(CronFieldError::Backwards(lo, hi));
            }
            return Ok(format!("{lo}-{hi}{step_text}"));
        }
        if base.is_empty() {
            return Err(CronFieldError::EmptyItem);
        }
        let n = self.value(base)?;
        Ok(match (dow, step) {
            (false, _) => format!("{n}{step_text}"),
            // `cron` counts from 1 (Sunday), standard cron from 0.
            (true, Some(_)) => format!("{}{step_text}", n % 7 + 1),
            (true, None) => day_name(n).to_owned(),
        })
    }

    /// A number in range, or one of the field's names.
    fn value(&self, v: &str) -> Result<u32, CronFieldError> {
        let (min, max) = (self.min, self.max);
        if let Ok(n) = v.parse::<u32>() {
            if (min..=max).contains(&n) {
                return Ok(n);
            }
            return Err(CronFieldError::Outside { n, min, max });
        }
        self.names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(v))
            .map(|i| i as u32 + self.first)
            .ok_or_else(|| CronFieldError::NotANumber {
                v: v.to_owned(),
                min,
                max,
            })
    }
}

fn day_name(n: u32) -> &'static str {
    ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][(n % 7) as usize]
}

/// A day-of-week range by names. 7 is Sunday again: a range ending on it wraps into Sat + Sun.
fn day_range(lo: u32, hi: u32, step: Option<u32>) -> Result<String, CronFieldError> {
    let (lo, hi) = (lo % 7, if hi == 7 && lo > 0 { 7 } else { hi % 7 });
    if lo > hi {
        return Err(CronFieldError::DaysBackwards);
    }
    if step.is_some() {
        return Err(CronFieldError::DayStep);
    }
    Ok(if hi == 7 {
        if lo == 6 {
            "Sat,Sun".to_owned()
        } else {
            format!("{}-Sat,Sun", day_name(lo))
        }
    } else if lo == hi {
        day_name(lo).to_owned()
    } else {
        format!("{}-{}", day_name(lo), day_name(hi))
    })
}

/// Finds the key path of a line of TOML text (its table header plus the key on that line), for
/// syntax errors, which toml reports by position only.
pub(crate) fn key_path_at_line(text: &str, line: usize) -> Option<String> {
    let mut header = String::new();
    for (i, raw_line) in text.lines().enumerate() {
        let trimmed = raw_line.trim();
        if i + 1 == line {
            if trimmed.starts_with('[') {
                let name = trimmed.trim_start_matches('[').split(']').next()?.trim();
                return (!name.is_empty()).then(|| name.to_owned());
            }
            let (key, _) = trimmed.split_once('=')?;
            let key = key.trim();
            let plausible = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c));
            if !plausible {
                return (!header.is_empty()).then_some(header);
            }
            let key: String = key
                .chars()
                .filter(|c| !matches!(c, '"' | '\'' | ' '))
                .collect();
            return Some(join(&header, &key));
        }
        if trimmed.starts_with('[') {
            if let Some(name) = trimmed.trim_start_matches('[').split(']').next() {
                header = name.trim().replace(['"', '\''], "");
            }
        }
    }
    None
}

/// The message for an unknown key: what it is, the accepted keys, and the closest one.
pub(crate) fn unknown_key_message(field: &str, accepted: &[String]) -> String {
    let closest = accepted
        .iter()
        .map(|a| (edit_distance(field, a), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d);
    let suggestion = closest
        .map(|(_, a)| format!("did you mean `{a}`? "))
        .unwrap_or_default();
    if accepted.is_empty() {
        format!("unknown key `{field}`; remove it")
    } else {
        format!(
            "unknown key `{field}`; {suggestion}accepted keys: {}",
            accepted.join(", ")
        )
    }
}

/// Rewords serde's type errors for people who write TOML (tables, arrays, integers), and never
/// repeats a string value (it may hold a secret from the environment).
pub(crate) fn type_error_message(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    else {
        return message.to_owned();
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let found = match found {
        f if f.starts_with("string ") => "a string".to_owned(),
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        f if f.starts_with("integer ") && message.starts_with("invalid value") => {
            format!(
                "{} (out of range)",
                f.trim_start_matches("integer ").trim_matches('`')
            )
        }
        f => f.replace('`', ""),
    };
    let expected = match expected {
        e if e.starts_with("struct ") || e == "a map" => "a table",
        "a sequence" => "an array",
        "i64" | "u64" | "u32" | "i32" | "u16" | "usize" => "an integer",
        "f64" => "a number",
        e => e,
    };
    format!("expected {expected}, found {found}")
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The host name (`gethostname`), the default member name of `[cluster]`; `None` when it cannot
/// be read or is not UTF-8.
pub(crate) fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..len]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in [
            "",
            "h",
            "4x",
            "-5s",
            "1.5h",
            "4 h",
            "5m3",
            "99999999999999999999",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cron_expressions() {
        assert_eq!(
            cron_to_six_fields("*/15 * * * *").unwrap(),
            "0 */15 * * * *"
        );
        assert_eq!(cron_to_six_fields("0 6 1 jan *").unwrap(), "0 0 6 1 1 *");
        assert_eq!(
            cron_to_six_fields("5 0 * * 1-5").unwrap(),
            "0 5 0 * * Mon-Fri"
        );
        assert_eq!(
            cron_to_six_fields("5 0 * * 0,6").unwrap(),
            "0 5 0 * * Sun,Sat"
        );
        assert_eq!(
            cron_to_six_fields("5 0 * * 5-7").unwrap(),
            "0 5 0 * * Fri-Sat,Sun"
        );
        assert_eq!(cron_to_six_fields("5 0 * * 0/2").unwrap(), "0 5 0 * * 1/2");
        assert_eq!(cron_to_six_fields("0 * * * sun").unwrap(), "0 0 * * * Sun");
        assert_eq!(cron_to_six_fields("@hourly").unwrap(), "@hourly");
        for bad in [
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "x * * * *",
            "5-1 * * * *",
            "@often",
            "* * * * 8",
            ",5 * * * *",
        ] {
            assert!(cron_to_six_fields(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_one_line_each() {
        let hint = "write a number of seconds or <n><unit> with unit s, m, h or d, e.g. \"45s\", \"15m\", \"4h\", \"2d\"";
        for (text, message) in [
            ("", "empty duration"),
            ("99999999999999999999", "duration too large"),
            ("h", "not a duration"),
            ("5m3", "a number inside a duration needs a unit"),
            ("4x", "unknown duration unit"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert_eq!(e.to_string(), format!("{message}; {hint}"), "{text}");
        }
        for (expr, message) in [
            ("@often", "unknown shorthand; use @yearly, @monthly, @weekly, @daily or @hourly, or 5 fields"),
            ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), found 4; e.g. \"*/15 * * * *\""),
            ("*/0 * * * *", "minute field `*/0`: step `0` must be a positive number"),
            ("5-1 * * * *", "minute field `5-1`: range 5-1 runs backwards"),
            (",5 * * * *", "minute field `,5`: empty list item"),
            ("* 24 * * *", "hour field `24`: 24 is outside 0-23"),
            ("x * * * *", "minute field `x`: `x` is not a number in 0-59"),
            ("* * * * sat-mon", "day-of-week field `sat-mon`: day-of-week range runs backwards"),
            ("* * * * 1-5/2", "day-of-week field `1-5/2`: steps over a day-of-week range are not supported; list the days"),
        ] {
            assert_eq!(cron_to_six_fields(expr).unwrap_err().to_string(), message, "{expr}");
        }
    }

    #[test]
    fn key_paths_of_lines() {
        let text = "a = 1\n[sources.x]\nb = 2\n[sources.x.auth]\n\"c\" = 3\n[[weird]]\n";
        assert_eq!(key_path_at_line(text, 1).as_deref(), Some("a"));
        assert_eq!(key_path_at_line(text, 3).as_deref(), Some("sources.x.b"));
        assert_eq!(key_path_at_line(text, 4).as_deref(), Some("sources.x.auth"));
        assert_eq!(
            key_path_at_line(text, 5).as_deref(),
            Some("sources.x.auth.c")
        );
        assert_eq!(key_path_at_line(text, 6).as_deref(), Some("weird"));
        assert_eq!(key_path_at_line(text, 99), None);
    }

    #[test]
    fn messages() {
        let accepted = vec!["poll_interval_mins".to_owned(), "page_size".to_owned()];
        let m = unknown_key_message("poll_interval_min", &accepted);
        assert!(m.contains("did you mean `poll_interval_mins`?"), "{m}");
        assert!(m.ends_with("accepted keys: poll_interval_mins, page_size"));
        assert!(!unknown_key_message("zzz", &accepted).contains("did you mean"));
        assert_eq!(
            type_error_message("invalid type: string \"hunter2\", expected i64"),
            "expected an integer, found a string"
        );
        assert_eq!(
            type_error_message("invalid type: integer `5`, expected struct RawAuth"),
            "expected a table, found integer 5"
        );
        assert!(is_within("a.b.c", "a.b") && is_within("a.b[0]", "a.b") && is_within("a.b", "a.b"));
        assert!(!is_within("a.bc", "a.b"));
    }
}
