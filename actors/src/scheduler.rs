//! The Scheduler actor: fires each source on its cron schedule. It only says "due"; the Fetcher
//! refuses a second run of a source while one is going, so a late run is skipped, never doubled.
//! Its mailbox stays quiet (one timer at a time) so timers never starve.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::str::FromStr;
use std::sync::Arc;
use tracing::debug;

/// Where the scheduler reads the wall-clock time ([`Scheduler::with_clock`]: a test's clock
/// that follows tokio's paused time).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A cron expression that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression `{expr}`: {reason}")]
pub struct CronError {
    /// The expression.
    pub expr: String,
    /// What the cron parser said.
    pub reason: String,
}

/// A source is due.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Due {
    /// The source id.
    pub source: String,
    /// The scheduled time of this run.
    pub scheduled_for: DateTime<Utc>,
}

/// Stop firing (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopScheduling;

struct Entry {
    source: String,
    schedule: cron::Schedule,
    next: Option<DateTime<Utc>>,
}

/// The Scheduler actor.
pub struct Scheduler {
    entries: Vec<Entry>,
    target: Recipient<Due>,
    timer: Option<SpawnHandle>,
    clock: Clock,
}

/// The cron expression for a poll interval that divides 60.
pub fn cron_for_interval(minutes: u32) -> String {
    if minutes >= 60 {
        "0 0 * * * *".into()
    } else {
        format!("0 */{minutes} * * * *")
    }
}

/// Parses a 6-field cron expression; the error says what is wrong.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, CronError> {
    cron::Schedule::from_str(expr).map_err(|e| CronError {
        expr: expr.to_owned(),
        reason: e.to_string(),
    })
}

/// When a 6-field cron expression fires next after `now`; `None` if it does not parse or never
/// fires again.
pub fn next_due(expr: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse_cron(expr).ok()?.after(&now).next()
}

impl Scheduler {
    /// A scheduler for `(source id, 6-field cron)` pairs that tells `target` when one is due.
    pub fn new(
        sources: Vec<(String, String)>,
        target: Recipient<Due>,
    ) -> Result<Scheduler, CronError> {
        let mut entries = Vec::new();
        for (source, expr) in sources {
            let schedule = parse_cron(&expr)?;
            entries.push(Entry {
                source,
                schedule,
                next: None,
            });
        }
        Ok(Scheduler {
            entries,
            target,
            timer: None,
            clock: Arc::new(Utc::now),
        })
    }

    /// Reads the time from `clock` instead of the system's (tests).
    pub fn with_clock(mut self, clock: Clock) -> Scheduler {
        self.clock = clock;
        self
    }

    fn arm(&mut self, ctx: &mut Context<Self>) {
        let now = (self.clock)();
        for e in &mut self.entries {
            if e.next.is_none() {
                e.next = e.schedule.after(&now).next();
            }
        }
        let Some(next) = self.entries.iter().filter_map(|e| e.next).min() else {
            return;
        };
        let delay = (next - now).to_std().unwrap_or_default();
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            let now = (act.clock)();
            for e in &mut act.entries {
                if let Some(at) = e.next.filter(|at| *at <= now) {
                    debug!(source = %e.source, scheduled_for = %at, "source due");
                    act.target.do_send(Due {
                        source: e.source.clone(),
                        scheduled_for: at,
                    });
                    e.next = e.schedule.after(&now).next();
                }
            }
            act.arm(ctx);
        }));
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.arm(ctx);
    }
}

impl Handler<StopScheduling> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: StopScheduling, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_due_is_the_next_firing_after_now() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T10:07:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = next_due(&cron_for_interval(15), now).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-01T10:15:00+00:00");
        assert_eq!(next_due("not cron", now), None);
    }

    #[test]
    fn interval_crons_parse_and_fire_on_the_minute_grid() {
        for m in [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60] {
            let s = parse_cron(&cron_for_interval(m)).unwrap();
            let base = DateTime::parse_from_rfc3339("2026-01-01T10:07:30Z")
                .unwrap()
                .with_timezone(&Utc);
            let next = s.after(&base).next().unwrap();
            assert_eq!(next.timestamp() % (i64::from(m) * 60), 0, "interval {m}");
        }
    }

    /// A fetcher stand-in: records what it is told.
    struct Recorder(Arc<std::sync::Mutex<Vec<Due>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<Due> for Recorder {
        type Result = ();
        fn handle(&mut self, due: Due, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(due);
        }
    }

    /// A wall clock that starts at `base` and follows tokio's (paused) time.
    fn paused_clock(base: DateTime<Utc>) -> Clock {
        let started = tokio::time::Instant::now();
        Arc::new(move || base + chrono::Duration::from_std(started.elapsed()).unwrap())
    }

    #[actix_rt::test]
    async fn in_paused_time_each_source_is_due_on_its_grid_once_per_firing_until_stopped() {
        tokio::time::pause();
        let base = DateTime::parse_from_rfc3339("2026-01-01T10:07:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let fetcher = Recorder(seen.clone()).start();
        let scheduler = Scheduler::new(
            vec![
                ("a".into(), cron_for_interval(15)),
                ("b".into(), cron_for_interval(60)),
            ],
            fetcher.recipient(),
        )
        .unwrap()
        .with_clock(paused_clock(base))
        .start();
        // 10:07:30 + 1 h: a at 10:15, 10:30, 10:45, 11:00; b at 11:00.
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        let fired: Vec<(String, String)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d.source.clone(),
                    d.scheduled_for.format("%H:%M:%S").to_string(),
                )
            })
            .collect();
        let want = [
            ("a", "10:15:00"),
            ("a", "10:30:00"),
            ("a", "10:45:00"),
            ("a", "11:00:00"),
            ("b", "11:00:00"),
        ];
        assert_eq!(
            fired,
            want.map(|(s, t)| (s.to_owned(), t.to_owned())).to_vec()
        );
        // Stopped: nothing more, however long.
        scheduler.send(StopScheduling).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
        assert_eq!(seen.lock().unwrap().len(), want.len());
    }

    #[test]
    fn a_bad_cron_is_a_typed_error_naming_the_expression() {
        let e = parse_cron("not cron").unwrap_err();
        assert_eq!(e.expr, "not cron");
        assert!(
            e.to_string()
                .starts_with("invalid cron expression `not cron`: "),
            "{e}"
        );
    }
}
