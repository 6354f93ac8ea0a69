//! The status page at `/` of the control listener: server-rendered HTML that reloads itself
//! every [`REFRESH_SECS`] (a `<meta http-equiv="refresh">`; no script, no build step). Every
//! value from the engine is HTML-escaped: job errors quote what servers answered.

use super::{SourceView, PAGE_JOBS};
use chrono::{DateTime, Utc};
use msgtrace_storage::JobRecord;
use std::fmt::Write as _;

/// Seconds between reloads of the page.
pub const REFRESH_SECS: u32 = 5;

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "–".into())
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

/// A duration in seconds as `1d 2h`, `3h 4m`, `5m 6s`, `7s`.
pub fn span(secs: i64) -> String {
    let (sign, s) = if secs < 0 { ("-", -secs) } else { ("", secs) };
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sign}{s}s"),
        (0, 0, _) => format!("{sign}{m}m {s}s"),
        (0, _, _) => format!("{sign}{h}h {m}m"),
        _ => format!("{sign}{d}d {h}h"),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.3em .7em;text-align:left;vertical-align:top}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
.running{color:#06c}.idle,.succeeded{color:#080}.failing,.failed,.interrupted,.cancelled{color:#c00}\
.error{color:#c00;max-width:40em}small{color:#666}";

/// The page for these sources and jobs (the newest [`PAGE_JOBS`] are shown), rendered at `now`.
pub fn render(sources: &[SourceView], jobs: &[JobRecord], now: DateTime<Utc>) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>msgtrace status</title><style>{STYLE}</style></head><body>\n\
         <h1>msgtrace</h1><p><small>version {} · as of <span id=\"now\">{}</span> · reloads every {REFRESH_SECS} s · \
         JSON: <a href=\"/api/sources\">sources</a> <a href=\"/api/jobs\">jobs</a> \
         <a href=\"/api/dump\">dump</a></small></p>\n",
        env!("CARGO_PKG_VERSION"),
        time(Some(now)),
    );
    // With `[cluster]` every source has an owner (this instance or another): a column for it.
    let owners = sources.iter().any(|s| s.owner.is_some());
    h.push_str(
        "<h2>Sources</h2>\n<table id=\"sources\"><thead><tr><th>source</th><th>state</th><th>cursor</th>\
         <th>lag</th><th>next due</th><th>quota left</th><th>last job</th><th>pages</th><th>rows</th>\
         <th>last error</th>",
    );
    h.push_str(if owners { "<th>owner</th>" } else { "" });
    h.push_str("</tr></thead><tbody>\n");
    if sources.is_empty() {
        h.push_str("<tr><td colspan=\"10\">no sources</td></tr>\n");
    }
    for s in sources {
        source_row(&mut h, s, owners);
    }
    h.push_str("</tbody></table>\n");
    let shown = &jobs[jobs.len().saturating_sub(PAGE_JOBS)..];
    let _ = writeln!(
        h,
        "<h2>Recent jobs</h2><p><small>the newest {} of {} kept; all of them: <code>msgtrace jobs</code></small></p>",
        shown.len(),
        jobs.len()
    );
    h.push_str(
        "<table id=\"jobs\"><thead><tr><th>job</th><th>source</th><th>kind</th><th>state</th>\
         <th>started</th><th>ended</th><th>window</th><th>pages</th><th>rows</th><th>retries</th>\
         <th>429s</th><th>errors</th></tr></thead><tbody>\n",
    );
    if shown.is_empty() {
        h.push_str("<tr><td colspan=\"12\">no jobs yet</td></tr>\n");
    }
    for j in shown.iter().rev() {
        job_row(&mut h, j);
    }
    h.push_str("</tbody></table>\n</body></html>\n");
    h
}

/// One row of the sources table (with its owner's cell when `owners`).
fn source_row(h: &mut String, s: &SourceView, owners: bool) {
    let quota = match s.quota {
        Some(q) => format!("{} of {} per {} s", q.remaining, q.requests, q.per_secs),
        None => "no budget".into(),
    };
    let (job, job_state, pages, rows) = match &s.last_job {
        Some(j) => (
            escape(&j.id),
            lower(j.state),
            j.pages.to_string(),
            j.rows.to_string(),
        ),
        None => ("–".into(), String::new(), "–".into(), "–".into()),
    };
    let _ = writeln!(
        h,
        "<tr data-source=\"{id}\"><td class=\"source\">{id}</td><td class=\"state {state}\">{state}</td>\
         <td class=\"cursor\">{cursor}</td><td class=\"lag num\">{lag}</td><td class=\"next-due\">{next}</td>\
         <td class=\"quota\">{quota}</td><td class=\"last-job {job_state}\">{job} {job_state}</td>\
         <td class=\"pages num\">{pages}</td><td class=\"rows num\">{rows}</td><td class=\"error\">{error}</td>{owner}</tr>",
        id = escape(&s.source),
        owner = if owners {
            let owner = s.owner.as_deref().map(escape);
            format!("<td class=\"owner\">{}</td>", owner.unwrap_or_else(|| "–".into()))
        } else {
            String::new()
        },
        state = escape(&s.state),
        cursor = time(s.cursor),
        lag = s.lag_secs.map(span).unwrap_or_else(|| "–".into()),
        next = time(s.next_due),
        error = s.last_error.as_deref().map(escape).unwrap_or_default(),
    );
}

/// One row of the recent jobs table.
fn job_row(h: &mut String, j: &JobRecord) {
    let errors: Vec<String> = j.errors.iter().map(|e| escape(e)).collect();
    let _ = writeln!(
        h,
        "<tr data-job=\"{id}\"><td class=\"job\">{id}</td><td class=\"source\">{source}</td><td>{kind}</td>\
         <td class=\"state {state}\">{state}</td><td>{started}</td><td>{ended}</td><td>{w0} – {w1}</td>\
         <td class=\"pages num\">{pages}</td><td class=\"rows num\">{rows}</td><td class=\"num\">{retries}</td>\
         <td class=\"num\">{throttled}</td><td class=\"error\">{errors}</td></tr>",
        id = escape(&j.id),
        source = escape(&j.source),
        kind = lower(j.kind),
        state = lower(j.state),
        started = time(Some(j.started_at)),
        ended = time(j.finished_at),
        w0 = time(j.window_start),
        w1 = time(j.window_end),
        pages = j.pages,
        rows = j.rows,
        retries = j.retries,
        throttled = j.throttled,
        errors = errors.join("<br>"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{JobBrief, QuotaView};
    use chrono::TimeZone;
    use msgtrace_storage::{JobKind, JobState};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap()
    }

    #[test]
    fn engine_text_is_escaped() {
        let evil = "<script>alert('x')</script> & \"more\"";
        let source = SourceView {
            source: "src".into(),
            state: "failing".into(),
            cursor: None,
            lag_secs: None,
            next_due: None,
            last_job: None,
            last_error: Some(evil.into()),
            restarts: 0,
            quota: None,
            details_backlog: 0,
            owner: None,
        };
        let mut job = JobRecord::new("src", "src-1", JobKind::Scheduled, now());
        job.errors.push(evil.into());
        let html = render(&[source], &[job], now());
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;")
        );
    }

    #[test]
    fn shows_sources_jobs_and_quota() {
        let source = SourceView {
            source: "contoso".into(),
            state: "running".into(),
            cursor: Some(now() - chrono::Duration::seconds(7325)),
            lag_secs: Some(7325),
            next_due: Some(now()),
            last_job: Some(JobBrief {
                id: "contoso-9".into(),
                state: JobState::Running,
                pages: 3,
                rows: 2999,
            }),
            last_error: None,
            restarts: 0,
            quota: Some(QuotaView {
                requests: 100,
                per_secs: 300,
                remaining: 97,
            }),
            details_backlog: 0,
            owner: None,
        };
        let jobs: Vec<JobRecord> = (0..30)
            .map(|n| {
                JobRecord::new(
                    "contoso",
                    &format!("contoso-{n:02}"),
                    JobKind::Scheduled,
                    now(),
                )
            })
            .collect();
        let html = render(&[source], &jobs, now());
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("<tr data-source=\"contoso\">"));
        assert!(html.contains("<td class=\"lag num\">2h 2m</td>"), "{html}");
        assert!(html.contains("97 of 100 per 300 s"));
        assert!(html.contains("<td class=\"rows num\">2999</td>"));
        assert_eq!(html.matches("<tr data-job=").count(), PAGE_JOBS);
        assert!(
            html.contains("data-job=\"contoso-29\""),
            "the newest are shown"
        );
        assert!(
            !html.contains("data-job=\"contoso-09\""),
            "the oldest are not"
        );
        assert!(
            html.find("contoso-29").unwrap() < html.find("contoso-10").unwrap(),
            "newest first"
        );
    }

    /// With `[cluster]` the sources table has an owner column; without it, none (the page of a
    /// single instance is unchanged).
    #[test]
    fn owners_show_in_a_column_of_their_own_only_with_a_cluster() {
        let view = |id: &str, owner: Option<&str>| SourceView {
            source: id.into(),
            state: "idle".into(),
            cursor: None,
            lag_secs: None,
            next_due: None,
            last_job: None,
            last_error: None,
            restarts: 0,
            quota: None,
            details_backlog: 0,
            owner: owner.map(str::to_owned),
        };
        let html = render(
            &[view("a", Some("collector-0")), view("b", Some("<x>"))],
            &[],
            now(),
        );
        assert!(html.contains("<th>owner</th>"), "{html}");
        assert!(
            html.contains("<td class=\"owner\">collector-0</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"owner\">&lt;x&gt;</td>"),
            "{html}"
        );
        let single = render(&[view("a", None)], &[], now());
        assert!(!single.contains("owner"), "{single}");
    }

    #[test]
    fn spans_read_as_the_largest_units() {
        assert_eq!(span(7), "7s");
        assert_eq!(span(65), "1m 5s");
        assert_eq!(span(7325), "2h 2m");
        assert_eq!(span(90_000), "1d 1h");
        assert_eq!(span(-5), "-5s");
    }
}
