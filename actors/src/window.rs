//! Window planning: which slices a run asks the API for.
//!
//! The rule that makes collection gap-free and overlap-free: a run collects from the cursor (the
//! end of the last window delivered completely) up to `end` evaluated at the run's time. The first
//! run starts at `start`. A slice left half-done by a crash or shutdown is finished first, from its
//! stored next link. Long ranges are cut into slices no longer than the API accepts.

use crate::spec::WindowSpec;
use chrono::{DateTime, Utc};
use msgtrace_storage::Checkpoint;

/// One slice to collect: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceTask {
    /// Start, inclusive.
    pub start: DateTime<Utc>,
    /// End, exclusive.
    pub end: DateTime<Utc>,
    /// Resume from this link instead of the first page.
    pub next_link: Option<String>,
    /// Pages already delivered (when resuming).
    pub pages: u64,
    /// Rows already delivered (when resuming).
    pub rows: u64,
    /// Where a resumed slice stands after re-queries (see [`msgtrace_storage::InFlight`]).
    pub resume: Option<msgtrace_storage::InFlight>,
    /// A re-read of a span collected before (for late rows and status changes): it does not
    /// move the cursor, and rows already delivered with the same status are skipped.
    pub reread: bool,
}

impl SliceTask {
    /// The slice a checkpoint's in-flight record describes, resumed from its next link.
    pub fn resume(f: &msgtrace_storage::InFlight) -> SliceTask {
        SliceTask {
            start: f.slice_start,
            end: f.slice_end,
            next_link: f.next_link.clone(),
            pages: f.pages,
            rows: f.rows,
            resume: Some(f.clone()),
            reread: false,
        }
    }
}

/// What a run will collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The slices, oldest first.
    pub tasks: Vec<SliceTask>,
    /// A span older than the API keeps, which cannot be collected: `[start, end)`.
    pub gap: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Margin kept inside the API's retention so that a start computed now is still accepted when the
/// request arrives.
const RETENTION_MARGIN_MINS: i64 = 10;

/// The slices of one run, in collection order (oldest first). A start older than `retention`
/// (the API keeps no data before it) is moved forward and the lost span reported as a gap.
pub fn plan(
    window: &WindowSpec,
    checkpoint: Option<&Checkpoint>,
    now: DateTime<Utc>,
    retention: Option<chrono::Duration>,
) -> Plan {
    let end = window.end.resolve(now);
    let mut tasks = Vec::new();
    let from = match checkpoint {
        Some(Checkpoint {
            in_flight: Some(f), ..
        }) => {
            tasks.push(SliceTask::resume(f));
            f.slice_end
        }
        Some(Checkpoint {
            cursor: Some(c), ..
        }) => *c,
        _ => window.start.resolve(now),
    };
    let mut gap = None;
    let from = match retention {
        Some(keep) => {
            let oldest = now - keep + chrono::Duration::minutes(RETENTION_MARGIN_MINS);
            if from < oldest && from < end {
                let clamped = oldest.min(end);
                gap = Some((from, clamped));
                clamped
            } else {
                from
            }
        }
        None => from,
    };
    tasks.extend(split(from, end, window.max_slice));
    // The trailing span already collected by earlier runs is read again, after the new data.
    if let (
        Some(span),
        Some(Checkpoint {
            cursor: Some(c), ..
        }),
    ) = (window.reread, checkpoint)
    {
        let floor =
            retention.map(|keep| now - keep + chrono::Duration::minutes(RETENTION_MARGIN_MINS));
        let mut s = *c - span;
        if let Some(f) = floor {
            s = s.max(f);
        }
        // Never before the first window's start: a re-read is not a backfill.
        if let Some(origin) = checkpoint.and_then(|cp| cp.origin) {
            s = s.max(origin);
        }
        let already = checkpoint
            .and_then(|cp| cp.in_flight.as_ref())
            .map_or(*c, |f| f.slice_start.min(*c));
        for mut t in split(s, already, window.max_slice) {
            t.reread = true;
            tasks.push(t);
        }
    }
    Plan { tasks, gap }
}

/// Cuts `[from, to)` into consecutive slices of at most `max`.
pub fn split(from: DateTime<Utc>, to: DateTime<Utc>, max: chrono::Duration) -> Vec<SliceTask> {
    let max = if max <= chrono::Duration::zero() {
        chrono::Duration::days(1)
    } else {
        max
    };
    let mut out = Vec::new();
    let mut s = from;
    while s < to {
        let e = if to - s > max { s + max } else { to };
        out.push(SliceTask {
            start: s,
            end: e,
            next_link: None,
            pages: 0,
            rows: 0,
            resume: None,
            reread: false,
        });
        s = e;
    }
    out
}

/// The inclusive upper bound sent to the API for a slice ending (exclusively) at `end`: one
/// 100 ns tick earlier, the APIs' timestamp precision. Both APIs treat their bounds as inclusive;
/// asking for `[start, end - 1 tick]` makes a row at exactly `end` belong to the next slice only.
pub fn inclusive_end(end: DateTime<Utc>) -> DateTime<Utc> {
    end - chrono::Duration::nanoseconds(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::TimeExpr;
    use chrono::TimeZone;
    use msgtrace_storage::InFlight;

    fn spec(start: &str, end: &str, max_h: i64) -> WindowSpec {
        WindowSpec {
            start: TimeExpr::parse(start).unwrap(),
            end: TimeExpr::parse(end).unwrap(),
            max_slice: chrono::Duration::hours(max_h),
            reread: None,
        }
    }

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap()
    }

    fn cp(cursor: DateTime<Utc>) -> Checkpoint {
        Checkpoint {
            cursor: Some(cursor),
            in_flight: None,
            pages_total: 0,
            rows_total: 0,
            updated_at: cursor,
            origin: None,
        }
    }

    #[test]
    fn first_run_uses_start_and_end() {
        let t = plan(&spec("-3h@h", "-2h@h", 240), None, at(10, 12, 7), None).tasks;
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].start, t[0].end), (at(10, 9, 0), at(10, 10, 0)));
    }

    #[test]
    fn runs_chain_without_gap_or_overlap_whatever_the_interval() {
        let w = spec("-3h@h", "-2h@h", 240);
        for step_mins in [1i64, 7, 15, 45, 60, 95, 1440] {
            let mut now = at(10, 12, 7);
            let mut cursor: Option<DateTime<Utc>> = None;
            let mut covered: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
            for _ in 0..50 {
                let c = cursor.map(cp);
                for task in plan(&w, c.as_ref(), now, None).tasks {
                    covered.push((task.start, task.end));
                    cursor = Some(task.end);
                }
                now += chrono::Duration::minutes(step_mins);
            }
            for pair in covered.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "gap or overlap at step {step_mins}");
            }
            assert!(covered.iter().all(|(s, e)| s < e));
        }
    }

    #[test]
    fn catch_up_after_downtime_is_sliced() {
        let w = spec("-3h@h", "-2h@h", 240);
        let t = plan(&w, Some(&cp(at(1, 0, 0))), at(25, 12, 0), None).tasks;
        assert!(t.len() > 2);
        assert!(t
            .iter()
            .all(|s| s.end - s.start <= chrono::Duration::hours(240)));
        assert_eq!(t.first().unwrap().start, at(1, 0, 0));
        assert_eq!(t.last().unwrap().end, at(25, 10, 0));
    }

    #[test]
    fn in_flight_slice_resumes_first() {
        let w = spec("-3h@h", "-2h@h", 1);
        let mut c = cp(at(10, 5, 0));
        c.in_flight = Some(InFlight {
            job_id: "j".into(),
            slice_start: at(10, 5, 0),
            slice_end: at(10, 6, 0),
            next_link: Some("http://x/next".into()),
            pages: 3,
            rows: 30,
            query_end: None,
            oldest: None,
            oldest_ids: Vec::new(),
            requeries: 0,
        });
        let t = plan(&w, Some(&c), at(10, 9, 30), None).tasks;
        assert_eq!(t[0].next_link.as_deref(), Some("http://x/next"));
        assert_eq!(t[0].pages, 3);
        assert_eq!(
            t.iter().map(|s| s.start).collect::<Vec<_>>(),
            vec![at(10, 5, 0), at(10, 6, 0)]
        );
    }

    #[test]
    fn nothing_due_when_cursor_is_ahead() {
        let w = spec("-3h@h", "-2h@h", 240);
        assert!(plan(&w, Some(&cp(at(10, 10, 0))), at(10, 12, 59), None)
            .tasks
            .is_empty());
    }

    #[test]
    fn a_start_older_than_retention_is_clamped_with_a_recorded_gap() {
        let w = spec("-100d@d", "-1h@h", 240);
        let now = at(10, 12, 0);
        let p = plan(&w, None, now, Some(chrono::Duration::days(90)));
        let (g0, g1) = p.gap.expect("gap");
        assert_eq!(g0, w.start.resolve(now));
        assert_eq!(
            g1,
            now - chrono::Duration::days(90) + chrono::Duration::minutes(10)
        );
        assert_eq!(p.tasks[0].start, g1, "collection starts where the gap ends");
        assert_eq!(p.tasks.last().unwrap().end, at(10, 11, 0));
        // Within retention: untouched.
        let p = plan(
            &spec("-3d", "-1h@h", 240),
            None,
            now,
            Some(chrono::Duration::days(90)),
        );
        assert!(p.gap.is_none());
        // A cursor left behind by long downtime is clamped too.
        let p = plan(
            &w,
            Some(&cp(at(1, 0, 0))),
            now,
            Some(chrono::Duration::days(5)),
        );
        assert!(p.gap.is_some());
    }

    #[test]
    fn reread_follows_the_new_data_and_covers_the_trailing_span() {
        let mut w = spec("-3h@h", "-2h@h", 240);
        w.reread = Some(chrono::Duration::hours(24));
        let p = plan(&w, Some(&cp(at(10, 10, 0))), at(10, 13, 5), None);
        assert_eq!(p.tasks.len(), 2);
        assert!(!p.tasks[0].reread);
        assert_eq!(
            (p.tasks[0].start, p.tasks[0].end),
            (at(10, 10, 0), at(10, 11, 0))
        );
        assert!(p.tasks[1].reread);
        assert_eq!(
            (p.tasks[1].start, p.tasks[1].end),
            (at(9, 10, 0), at(10, 10, 0))
        );
        // The first run has nothing to re-read.
        assert!(plan(&w, None, at(10, 13, 5), None)
            .tasks
            .iter()
            .all(|t| !t.reread));
        // Never before the first window's start.
        let mut c = cp(at(10, 10, 0));
        c.origin = Some(at(10, 6, 0));
        let p = plan(&w, Some(&c), at(10, 13, 5), None);
        assert_eq!(p.tasks[1].start, at(10, 6, 0));
    }

    #[test]
    fn inclusive_end_is_one_tick_before() {
        let e = at(10, 10, 0);
        assert_eq!((e - inclusive_end(e)).num_nanoseconds(), Some(100));
    }
}
