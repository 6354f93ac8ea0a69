//! The job inspector's views (`msgtrace jobs`): the filters of its flags, its JSON and its
//! text table. The same functions serve a stopped engine's records and a running one's
//! (`/api/jobs`), so both print the same.

use chrono::{DateTime, Utc};
use msgtrace_storage::{JobRecord, JobState};
use serde::Deserialize;

/// `--source ID`, `--state STATE`, `--last N` (and `/api/jobs?source=&state=&last=`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Only this source's jobs.
    pub source: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only the newest N (by start) of those left.
    pub last: Option<usize>,
}

impl JobFilter {
    /// The records that pass, oldest first (the order [`msgtrace_storage::Store::jobs`] gives).
    pub fn apply(&self, jobs: Vec<JobRecord>) -> Vec<JobRecord> {
        let mut kept: Vec<JobRecord> = jobs
            .into_iter()
            .filter(|j| self.source.as_ref().is_none_or(|s| *s == j.source))
            .filter(|j| self.state.is_none_or(|s| s == j.state))
            .collect();
        if let Some(n) = self.last {
            kept.drain(..kept.len().saturating_sub(n));
        }
        kept
    }
}

/// The state names `--state` takes, as the records spell them.
pub const STATES: &[&str] = &[
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "interrupted",
];

/// A `--state` value that names no job state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{0}`; use one of {states}", states = STATES.join(", "))]
pub struct UnknownState(pub String);

/// Parses a `--state` value.
pub fn parse_state(s: &str) -> Result<JobState, UnknownState> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| UnknownState(s.to_owned()))
}

/// What `msgtrace jobs --json` prints (and `/api/jobs` answers).
pub fn to_json(jobs: &[JobRecord]) -> String {
    // Job records are plain data: they always serialize.
    serde_json::to_string_pretty(jobs).unwrap_or_default() + "\n"
}

/// What `msgtrace jobs --json` prints with `[cluster]` on a running engine (and `/api/jobs`
/// answers): every record with `owner`, the member holding its source's claim now (`null`
/// while nobody does). Without `owners` (single-instance mode): [`to_json`], unchanged.
pub fn to_json_with_owners(
    jobs: &[JobRecord],
    owners: Option<&std::collections::BTreeMap<String, String>>,
) -> String {
    let Some(owners) = owners else {
        return to_json(jobs);
    };
    let with: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let mut v = serde_json::to_value(j).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("owner".into(), serde_json::json!(owners.get(&j.source)));
            }
            v
        })
        .collect();
    serde_json::to_string_pretty(&with).unwrap_or_default() + "\n"
}

/// What `msgtrace jobs` prints after the jobs with `[cluster]`: this instance, etcd's state,
/// the members, and who holds each claimed source (from the running engine, or read from etcd
/// while it does not run).
pub fn render_owners(view: &crate::cluster::ClusterView) -> String {
    use std::fmt::Write as _;
    // A stopped instance (read from etcd by the command), or one before its first round.
    let not_live = if view.live {
        ""
    } else {
        " (not a live member)"
    };
    let mut s = format!(
        "\ncluster: this instance `{}`{not_live}, etcd {}, members {}\n",
        view.name,
        view.etcd,
        if view.members.is_empty() {
            "-".to_owned()
        } else {
            view.members.join(", ")
        }
    );
    let _ = writeln!(s, "{:<24} OWNER", "SOURCE");
    for (source, owner) in &view.owners {
        let _ = writeln!(s, "{source:<24} {owner}");
    }
    s
}

fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// What `msgtrace jobs` prints: a line per job (source, kind, state, start and end times,
/// window, pages, events, errors), its tasks, gaps and errors beneath it.
pub fn render_text(jobs: &[JobRecord]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let line = |s: &mut String, c: [&str; 11]| {
        let l = format!(
            "{:<12} {:<9} {:<40} {:<11} {:<20} {:<20} {:<20} {:<20} {:>6} {:>9} {:>6}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
        );
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(
        &mut s,
        [
            "SOURCE",
            "KIND",
            "JOB",
            "STATE",
            "STARTED",
            "ENDED",
            "WINDOW START",
            "WINDOW END",
            "PAGES",
            "EVENTS",
            "ERRORS",
        ],
    );
    for j in jobs {
        line(
            &mut s,
            [
                &j.source,
                &lower(j.kind),
                &j.id,
                &lower(j.state),
                &time(Some(j.started_at)),
                &time(j.finished_at),
                &time(j.window_start),
                &time(j.window_end),
                &j.pages.to_string(),
                &j.rows.to_string(),
                &j.errors.len().to_string(),
            ],
        );
        job_details(&mut s, j);
        for e in &j.errors {
            let _ = writeln!(s, "    error: {e}");
        }
    }
    s
}

/// The lines beneath a job in `msgtrace jobs`: its tasks, its details, its gaps (its errors
/// follow).
fn job_details(s: &mut String, j: &JobRecord) {
    use std::fmt::Write as _;
    let count = |n: u32, what: &str| {
        if n > 0 {
            format!("  {what} {n}")
        } else {
            String::new()
        }
    };
    for t in &j.tasks {
        let _ = writeln!(
            s,
            "    task {} .. {}  {:<9} pages {:>5}  rows {:>8}  dropped {}  retries {}{}{}",
            time(Some(t.start)),
            time(Some(t.end)),
            lower(t.state),
            t.pages,
            t.rows,
            t.dropped,
            t.retries,
            count(t.requeries, "requeries"),
            count(t.reschedules, "reschedules"),
        );
    }
    if j.detail_rows > 0 {
        let _ = writeln!(
            s,
            "    details of {} rows: {} events",
            j.detail_rows, j.detail_events
        );
    }
    for (g0, g1) in &j.gaps {
        let _ = writeln!(
            s,
            "    gap  {} .. {}  (older than the API keeps)",
            time(Some(*g0)),
            time(Some(*g1))
        );
    }
}

/// The details backlogs beneath the jobs in `msgtrace jobs`: a line per source with summary
/// rows whose details are still to be fetched; nothing when there are none.
pub fn render_backlogs(backlogs: &[super::DetailsBacklog]) -> String {
    let mut s = String::new();
    if backlogs.is_empty() {
        return s;
    }
    s.push_str("\nDETAILS BACKLOG (summary rows whose details are still to be fetched)\n");
    for b in backlogs {
        s.push_str(&format!("{:<12} {:>9}\n", b.source, b.entries));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use msgtrace_storage::JobKind;

    fn job(source: &str, n: u32, state: JobState) -> JobRecord {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, n, 0).unwrap();
        let mut j = JobRecord::new(source, &format!("{source}-{n}"), JobKind::Scheduled, at);
        j.state = state;
        j
    }

    #[test]
    fn filters_by_source_state_and_the_newest_n() {
        let all = vec![
            job("a", 1, JobState::Succeeded),
            job("b", 2, JobState::Failed),
            job("a", 3, JobState::Failed),
            job("a", 4, JobState::Succeeded),
        ];
        let ids = |f: JobFilter| -> Vec<String> {
            f.apply(all.clone()).into_iter().map(|j| j.id).collect()
        };
        assert_eq!(ids(JobFilter::default()).len(), 4);
        let a = || Some("a".to_owned());
        assert_eq!(
            ids(JobFilter {
                source: a(),
                ..Default::default()
            }),
            ["a-1", "a-3", "a-4"]
        );
        assert_eq!(
            ids(JobFilter {
                state: Some(JobState::Failed),
                ..Default::default()
            }),
            ["b-2", "a-3"]
        );
        assert_eq!(
            ids(JobFilter {
                source: a(),
                last: Some(2),
                ..Default::default()
            }),
            ["a-3", "a-4"]
        );
        assert_eq!(
            ids(JobFilter {
                last: Some(0),
                ..Default::default()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(JobFilter {
                last: Some(9),
                ..Default::default()
            })
            .len(),
            4
        );
    }

    #[test]
    fn backlogs_are_listed_beneath_the_jobs_when_there_are_any() {
        assert_eq!(render_backlogs(&[]), "");
        let text = render_backlogs(&[super::super::DetailsBacklog {
            source: "contoso".into(),
            entries: 42,
        }]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("DETAILS BACKLOG"), "{text}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["contoso", "42"]
        );
    }

    #[test]
    fn state_names_are_the_records_spelling() {
        for name in STATES {
            let state = parse_state(name).unwrap();
            assert_eq!(serde_json::to_value(state).unwrap(), *name);
        }
        let e = parse_state("done").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown state `done`; use one of pending, running, succeeded, failed, cancelled, interrupted"
        );
    }

    #[test]
    fn the_text_view_has_source_kind_and_time_columns() {
        let mut j = job("contoso", 5, JobState::Succeeded);
        j.finished_at = Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 7, 9).unwrap());
        j.pages = 12;
        j.rows = 3400;
        let text = render_text(&[j]);
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            &head[..6],
            ["SOURCE", "KIND", "JOB", "STATE", "STARTED", "ENDED"]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "contoso",
                "scheduled",
                "contoso-5",
                "succeeded",
                "2026-01-02T03:05:00Z",
                "2026-01-02T03:07:09Z",
                "-",
                "-",
                "12",
                "3400",
                "0"
            ]
        );
    }

    #[test]
    fn owners_are_added_only_with_a_cluster() {
        let jobs = vec![
            job("contoso", 1, JobState::Succeeded),
            job("fabrikam", 2, JobState::Failed),
        ];
        assert_eq!(
            to_json_with_owners(&jobs, None),
            to_json(&jobs),
            "single instance: unchanged"
        );
        let owners = [("contoso".to_owned(), "c-1".to_owned())].into();
        let with: Vec<serde_json::Value> =
            serde_json::from_str(&to_json_with_owners(&jobs, Some(&owners))).unwrap();
        assert_eq!(with[0]["owner"], "c-1");
        assert!(with[1]["owner"].is_null(), "nobody holds fabrikam");
        let plain: Vec<serde_json::Value> = serde_json::from_str(&to_json(&jobs)).unwrap();
        let mut stripped = with.clone();
        for j in &mut stripped {
            j.as_object_mut().unwrap().remove("owner");
        }
        assert_eq!(stripped, plain, "nothing else changes");

        let view = crate::cluster::ClusterView {
            name: "c-0".into(),
            etcd: "up".into(),
            error: None,
            live: true,
            members: vec!["c-0".into(), "c-1".into()],
            owned: vec![],
            owners,
        };
        let text = render_owners(&view);
        assert!(
            text.contains("cluster: this instance `c-0`, etcd up, members c-0, c-1\n"),
            "{text}"
        );
        assert!(text.contains(&format!("{:<24} c-1\n", "contoso")), "{text}");
    }
}
