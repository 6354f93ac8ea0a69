//! The Scheduler actor: fires each source on its cron schedule. It only says "due"; the Fetcher
//! refuses a second run of a source while one is going, so a late run is skipped, never doubled.
//! Its mailbox stays quiet (one timer at a time) so timers never starve.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::str::FromStr;
use tracing::debug;

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
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| format!("invalid cron expression `{expr}`: {e}"))
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
    ) -> Result<Scheduler, String> {
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
        })
    }

    fn arm(&mut self, ctx: &mut Context<Self>) {
        let now = Utc::now();
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
            let now = Utc::now();
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
}
