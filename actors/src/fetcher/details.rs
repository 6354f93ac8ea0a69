//! A source's per-recipient details: its backlog ([`msgtrace_storage::details`]) drained one
//! summary row at a time. For each row, its detail records are fetched with the page client at
//! the budget's low priority (next links followed under the [`LinkGuard`]), the records an
//! earlier request delivered are skipped, the others go to the source's sinks (after their
//! summary row: a row enters the backlog only once its page is committed), and once the sinks
//! have them, the row leaves the backlog with their identities, in one transaction.
//!
//! A crash before that transaction delivers that row's records again at the next drain; one
//! after it, none. A row whose request the API refuses for good (404: no such trace any more, a
//! detail URL that cannot be made) is taken out without records, with a warning; any other
//! failure ends the drain, the row stays, and a later drain asks again.
//!
//! Who drains: a job of `msgtrace run --once` or a backfill, after its slices ([`drain`]); under
//! `msgtrace run`, a loop of the fetcher's own beside its jobs ([`keep_draining`]), woken by each
//! commit that adds rows. One drain of a source at a time ([`Shared::details_turn`]).

use super::*;
use crate::dialect::details::{self, detail_event};
use crate::dialect::Row;
use crate::link_guard::LinkGuard;
use msgtrace_storage::DetailRecordId;

/// Backlog entries read at a time.
const BATCH: usize = 64;

/// What a drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Drained {
    /// Rows whose details were delivered (and that left the backlog).
    pub(super) rows: u64,
    /// Detail events delivered.
    pub(super) events: u64,
    /// Records skipped: delivered by an earlier request for the row.
    pub(super) known: u64,
    /// Rows taken out without their details (the API refused the request for good).
    pub(super) given_up: u64,
}

/// How a drain delivers: holding a batch a sink refuses (scheduled mode) or failing with it,
/// within a deadline.
#[derive(Clone, Copy)]
pub(super) struct Delivery {
    pub(super) hold: bool,
    pub(super) deadline: Option<Instant>,
}

/// Drains `env`'s backlog until it is empty (`Ok`), it is cancelled, or a request fails in a
/// way that may pass (the row stays for the next drain).
pub(super) async fn drain(
    env: &Rc<FetcherEnv>,
    cancel: &watch::Receiver<bool>,
    delivery: Delivery,
) -> Result<Drained, Stop> {
    let source = &env.spec.id;
    let turn = env.shared.details_turn(source);
    let _turn = turn.lock().await;
    let mut done = Drained::default();
    loop {
        let entries = env
            .store
            .details_pending(source, BATCH)
            .map_err(FetchError::Details)?;
        if entries.is_empty() {
            crate::telemetry::details_backlog(source, 0);
            return Ok(done);
        }
        for entry in entries {
            if *cancel.borrow() {
                return Err(Stop::Cancelled(None));
            }
            row_details(env, cancel, delivery, &entry, &mut done).await?;
        }
        crate::telemetry::details_backlog(source, env.store.details_backlog(source));
    }
}

/// Fetches, delivers and completes the details of one backlog entry.
async fn row_details(
    env: &Rc<FetcherEnv>,
    cancel: &watch::Receiver<bool>,
    delivery: Delivery,
    entry: &DetailEntry,
    done: &mut Drained,
) -> Result<(), Stop> {
    let spec = &env.spec;
    let url = match details::details_url(&spec.url, &entry.trace_id, &entry.recipient) {
        Ok(url) => url,
        Err(e) => return give_up(env, entry, &e, done).await,
    };
    let records = match records_of(env, cancel, url.as_str()).await {
        Ok(records) => records,
        Err(Stop::Failed(e)) if e.kind() == Kind::Rejected => {
            return give_up(env, entry, &e, done).await
        }
        Err(other) => return Err(other),
    };
    let known = env
        .store
        .details_known(&spec.id, entry)
        .map_err(FetchError::Details)?;
    let (events, delivered, skipped) =
        new_events(env, entry, records, &known, strip_query(url.as_str()));
    let n = events.len() as u64;
    let plan = PagePlan::for_details(env);
    let mut rows = 0;
    let mut positions = Vec::new();
    if let Some(batch) = into_batch(&plan, events, false, &mut rows)? {
        let mut nothing_ahead = None;
        let hold = delivery.hold.then_some(Hold {
            cancel,
            deadline: delivery.deadline,
            ahead: &mut nothing_ahead,
        });
        let taken = deliver(env, batch, hold).await?;
        if let Some(e) = taken.refusal {
            debug!(error = %e, "a sink refused detail events for a while; they were held and delivered");
        }
        positions = taken.positions;
    }
    env.store
        .complete_details(&spec.id, entry, &delivered, &positions, spec.durable)
        .await
        .map_err(FetchError::Details)?;
    crate::telemetry::detail_events(&spec.id, n);
    debug!(
        trace = %entry.trace_id,
        events = n,
        known = skipped,
        "details delivered"
    );
    done.rows += 1;
    done.events += n;
    done.known += skipped;
    Ok(())
}

/// The detail records of one row: its first page and the pages its next links lead to (a
/// link the guard refuses ends them, with a warning: the records so far are the row's).
async fn records_of(
    env: &Rc<FetcherEnv>,
    cancel: &watch::Receiver<bool>,
    url: &str,
) -> Result<Vec<Row>, Stop> {
    let mut guard = LinkGuard::new(env.spec.link_limits, url);
    let mut records = Vec::new();
    let mut next = Some((url.to_owned(), false));
    while let Some((url, is_next_link)) = next.take() {
        let page_use = PageUse {
            fetch: Fetch::Details,
            plan: None,
            spool: None,
        };
        let fetched = fetch_page(
            env.clone(),
            url,
            is_next_link,
            cancel.clone(),
            None,
            page_use,
        )
        .await;
        let page = match fetched.page?.0 {
            Parsed::Rows(page) => page,
            // Never: a detail page has no plan to be made ready with.
            Parsed::Ready(_) => Page::default(),
        };
        let n = page.rows.len();
        records.extend(page.rows);
        if let Some(link) = page.next_link {
            match guard.follow(n, link.as_str()) {
                Ok(()) => next = Some((link.to_string(), true)),
                Err(why) => {
                    warn!(error = %why, "a next link of a row's details is not followed; its records so far are delivered");
                    crate::telemetry::poisoned_link(&env.spec.id);
                }
            }
        }
    }
    Ok(records)
}

/// The records not delivered before as events, the identities to record for them, and how
/// many were skipped. A record without an identity is delivered flagged `__isBroken` (and,
/// having none, is delivered again by a later request for the row).
fn new_events(
    env: &FetcherEnv,
    entry: &DetailEntry,
    records: Vec<Row>,
    known: &std::collections::HashSet<DetailRecordId>,
    source: &str,
) -> (Vec<Event>, Vec<DetailRecordId>, u64) {
    let now = Utc::now();
    let (input_id, source): (Arc<str>, Arc<str>) =
        (Arc::from(env.spec.id.as_str()), Arc::from(source));
    let mut events = Vec::with_capacity(records.len());
    let mut delivered = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for record in records {
        let mut e = detail_event(record, &entry.recipient, now);
        let id = e.identity.take().map(|i| DetailRecordId {
            id: i.id,
            date_time: i.date_time,
            event: i.event,
        });
        if id.as_ref().is_some_and(|id| known.contains(id)) {
            skipped += 1;
            continue;
        }
        let is_broken = id.is_none();
        if is_broken {
            e.fields.insert("__isBroken".into(), true.into());
        }
        delivered.extend(id);
        events.push(Event {
            fields: e.fields,
            meta: EventMeta {
                input_id: input_id.clone(),
                source: source.clone(),
                is_final: false,
                is_broken,
            },
        });
    }
    (events, delivered, skipped)
}

/// Takes a row out of the backlog without its details, saying why.
async fn give_up(
    env: &FetcherEnv,
    entry: &DetailEntry,
    why: &dyn std::fmt::Display,
    done: &mut Drained,
) -> Result<(), Stop> {
    warn!(
        trace = %entry.trace_id,
        error = %why,
        "the API refused the details of a row for good; the row leaves the backlog without them"
    );
    env.store
        .complete_details(&env.spec.id, entry, &[], &[], env.spec.durable)
        .await
        .map_err(FetchError::Details)?;
    done.given_up += 1;
    Ok(())
}

/// The scheduled mode's detail worker: drains the backlog whenever commits add to it (and once
/// at the start, for what a run before left), until cancelled. A failed drain is tried again
/// after the retry policy's hold delay (`retry.initial_interval_ms`, doubling up to 60 s).
pub(super) async fn keep_draining(env: Rc<FetcherEnv>, mut cancel: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    let delivery = Delivery {
        hold: true,
        deadline: None,
    };
    loop {
        let woken = env.details_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let wait = match drain(&env, &cancel, delivery).await {
            Ok(d) => {
                failures = 0;
                if d.rows + d.given_up > 0 {
                    info!(
                        rows = d.rows,
                        events = d.events,
                        known = d.known,
                        given_up = d.given_up,
                        "details backlog drained"
                    );
                }
                None
            }
            Err(Stop::Cancelled(_)) => return,
            Err(Stop::Failed(e)) => {
                let delay = env.spec.retry.hold_delay(failures);
                failures = failures.saturating_add(1);
                warn!(error = %e, delay_ms = delay.as_millis() as u64, "fetching details failed; the rows stay in the backlog and are asked for again");
                Some(delay)
            }
        };
        let asleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => woken.await,
            }
        };
        tokio::select! {
            _ = asleep => {}
            _ = cancel.wait_for(|v| *v) => return,
        }
    }
}
