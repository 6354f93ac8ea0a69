//! One slice's paging as a plain state machine, without I/O: which request comes next, what a
//! delivered page changes in the checkpoint, when a next link is abandoned and the slice
//! re-queried, and when the slice is done or fails. [`super::slice`] drives it (fetch, deliver,
//! commit); the decisions, and their tests, are here.

use crate::dialect::Api;
use crate::link_guard::{LinkGuard, LinkLimits, Poisoned};
use crate::window::{self, SliceTask};
use chrono::{DateTime, Utc};
use msgtrace_storage::InFlight;

/// Re-queries of one slice allowed in one run of it before it fails.
pub const MAX_REQUERIES: u32 = 3;

/// A row's identity: trace id and recipient.
pub type Identity = (String, String);

/// What a slice has delivered so far, for re-queries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// The inclusive end of the re-query under way, if any.
    pub query_end: Option<DateTime<Utc>>,
    /// The oldest row time delivered in the slice so far (rows come newest first).
    pub oldest: Option<DateTime<Utc>>,
    /// The identities of the rows delivered at exactly `oldest`.
    pub oldest_ids: Vec<Identity>,
    /// Identities to drop (delivered before a re-query, at the re-query's end instant).
    pub skip: Vec<Identity>,
    /// Re-queries of the slice so far, over every run of it.
    pub requeries: u32,
}

impl Progress {
    /// A row delivered at `t`.
    pub fn delivered(&mut self, t: DateTime<Utc>, id: Identity) {
        match self.oldest {
            Some(o) if t > o => {}
            Some(o) if t == o => self.oldest_ids.push(id),
            _ => {
                self.oldest = Some(t);
                self.oldest_ids.clear();
                self.oldest_ids.push(id);
            }
        }
    }
}

/// The next request of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The URL to ask.
    pub url: String,
    /// It is a next link (not a query's first page).
    pub is_next_link: bool,
}

/// What a page that was delivered changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Follow this next link.
    Next(String),
    /// The next link was abandoned (`why`): the slice is re-queried from its first page.
    Requery(Poisoned),
    /// The slice is complete.
    Done,
}

/// The checkpoint's new state after a page of the slice.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    /// The slice is complete: the cursor moves to its end, nothing is in flight.
    Cursor(DateTime<Utc>),
    /// The slice goes on from here.
    InFlight(InFlight),
    /// A re-read slice leaves the checkpoint alone.
    Unchanged,
}

/// The URL of a query's first page.
#[derive(Clone, Debug)]
pub struct Query {
    /// The dialect.
    pub api: Api,
    /// The configured API URL.
    pub base: url::Url,
    /// `$top`.
    pub page_size: u32,
    /// What the query's links may do.
    pub limits: LinkLimits,
}

/// One slice being collected.
#[derive(Debug)]
pub struct SliceRun {
    task: SliceTask,
    query: Query,
    link: Option<String>,
    pages: u64,
    rows: u64,
    track: Progress,
    requeries_now: u32,
    guard: Option<LinkGuard>,
}

impl SliceRun {
    /// A run of `task` (resumed from its in-flight record when it has one).
    pub fn new(task: &SliceTask, query: Query) -> SliceRun {
        let track = match &task.resume {
            Some(f) => Progress {
                query_end: f.query_end,
                oldest: f.oldest,
                oldest_ids: f.oldest_ids.clone(),
                skip: if f.query_end.is_some() {
                    f.oldest_ids.clone()
                } else {
                    Vec::new()
                },
                requeries: f.requeries,
            },
            None => Progress::default(),
        };
        SliceRun {
            link: task.next_link.clone(),
            pages: task.pages,
            rows: task.rows,
            task: task.clone(),
            query,
            track,
            requeries_now: 0,
            guard: None,
        }
    }

    /// What the slice has delivered so far.
    pub fn progress(&self) -> &Progress {
        &self.track
    }

    /// The slice's pages and rows delivered so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.pages, self.rows)
    }

    /// The next request: the link to follow, or the (re-)query's first page.
    pub fn request(&mut self) -> Request {
        let (url, is_next_link) = match &self.link {
            Some(l) => (l.clone(), true),
            None => {
                let end = self
                    .track
                    .query_end
                    .unwrap_or_else(|| window::inclusive_end(self.task.end));
                let url = self.query.api.first_page_url(
                    &self.query.base,
                    self.task.start,
                    end,
                    self.query.page_size,
                );
                (url.to_string(), false)
            }
        };
        match &mut self.guard {
            Some(g) if !is_next_link => g.restart(&url),
            Some(_) => {}
            None => self.guard = Some(LinkGuard::new(self.query.limits, &url)),
        }
        Request { url, is_next_link }
    }

    /// The request for a next link was refused for good: the link is abandoned and the slice
    /// re-queried (`true`), or, after [`MAX_REQUERIES`] in this run or for a query's first page,
    /// the slice fails with the refusal (`false`).
    pub fn link_failed(&mut self, is_next_link: bool) -> bool {
        if !is_next_link || self.requeries_now >= MAX_REQUERIES {
            return false;
        }
        self.abandon();
        true
    }

    /// A page was delivered: `parsed` rows as the API sent them, `delivered` events, the oldest
    /// instant among them with its identities, and its next link. Returns what comes next and
    /// what the checkpoint becomes (after a [`Step::Requery`], see [`SliceRun::may_go_on`]).
    pub fn delivered(
        &mut self,
        job_id: &str,
        parsed: usize,
        delivered: u64,
        oldest: Option<(DateTime<Utc>, Vec<Identity>)>,
        next_link: Option<String>,
    ) -> (Step, Mark) {
        if let Some((t, ids)) = oldest {
            for id in ids {
                self.track.delivered(t, id);
            }
        }
        self.pages += 1;
        self.rows += delivered;
        let poisoned = match (&next_link, &mut self.guard) {
            (Some(n), Some(g)) => g.follow(parsed, n).err(),
            _ => None,
        };
        let step = match (next_link, poisoned) {
            (_, Some(why)) => {
                self.abandon();
                Step::Requery(why)
            }
            (Some(n), None) => Step::Next(n),
            (None, None) => Step::Done,
        };
        self.link = match &step {
            Step::Next(n) => Some(n.clone()),
            _ => None,
        };
        let mark = match &step {
            _ if self.task.reread => Mark::Unchanged,
            Step::Done => Mark::Cursor(self.task.end),
            Step::Next(n) => Mark::InFlight(self.in_flight(job_id, Some(n.clone()))),
            Step::Requery(_) => Mark::InFlight(self.in_flight(job_id, None)),
        };
        (step, mark)
    }

    /// After a [`Step::Requery`] is committed: whether the slice may go on (`Err` when links
    /// were abandoned more than [`MAX_REQUERIES`] times in this run).
    pub fn may_go_on(&self) -> Result<(), super::FetchError> {
        if self.requeries_now > MAX_REQUERIES {
            return Err(super::FetchError::TooManyRequeries(self.requeries_now));
        }
        Ok(())
    }

    /// Abandons the query's next link: rows come newest first, so every row newer than the
    /// oldest one delivered is already out; the re-query asks up to that instant (inclusive)
    /// and skips the rows delivered at exactly it.
    fn abandon(&mut self) {
        self.requeries_now += 1;
        self.track.requeries += 1;
        self.track.query_end = Some(
            self.track
                .oldest
                .unwrap_or_else(|| window::inclusive_end(self.task.end)),
        );
        self.track.skip = self.track.oldest_ids.clone();
        self.link = None;
    }

    /// The checkpoint's record of a slice about to ask for its first page, when it is not
    /// resumed (nor a re-read, which moves no checkpoint): a restart then resumes this very
    /// slice, so it asks for the same first page, instead of planning anew up to an `end` that
    /// may have moved since. A page delivered again after a kill so keeps its URL, and a sink
    /// that names what it writes by it (`object_store`) overwrites its first delivery.
    pub fn starting(&self, job_id: &str) -> Option<InFlight> {
        (self.task.resume.is_none() && !self.task.reread && self.link.is_none())
            .then(|| self.in_flight(job_id, None))
    }

    fn in_flight(&self, job_id: &str, next_link: Option<String>) -> InFlight {
        InFlight {
            job_id: job_id.to_owned(),
            slice_start: self.task.start,
            slice_end: self.task.end,
            next_link,
            pages: self.pages,
            rows: self.rows,
            query_end: self.track.query_end,
            oldest: self.track.oldest,
            oldest_ids: self.track.oldest_ids.clone(),
            requeries: self.track.requeries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 10, min, 0).unwrap()
    }

    fn task() -> SliceTask {
        SliceTask {
            start: t(0),
            end: t(59),
            next_link: None,
            pages: 0,
            rows: 0,
            resume: None,
            reread: false,
        }
    }

    fn query() -> Query {
        Query {
            api: Api::Graph,
            base: url::Url::parse(
                "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces",
            )
            .unwrap(),
            page_size: 2,
            limits: LinkLimits::default(),
        }
    }

    fn id(s: &str) -> Identity {
        (s.to_owned(), "r@x".to_owned())
    }

    #[test]
    fn pages_are_followed_to_the_end_and_the_cursor_moves_to_the_slice_end() {
        let mut run = SliceRun::new(&task(), query());
        let first = run.request();
        assert!(!first.is_next_link);
        assert!(first.url.contains("$top=2"), "{}", first.url);
        let (step, mark) = run.delivered(
            "j",
            2,
            2,
            Some((t(50), vec![id("a")])),
            Some("https://graph.microsoft.com/n2".into()),
        );
        assert_eq!(step, Step::Next("https://graph.microsoft.com/n2".into()));
        let Mark::InFlight(f) = mark else {
            panic!("{mark:?}")
        };
        assert_eq!(
            (f.next_link.as_deref(), f.pages, f.rows, f.oldest),
            (Some("https://graph.microsoft.com/n2"), 1, 2, Some(t(50)))
        );
        assert_eq!(
            run.request(),
            Request {
                url: "https://graph.microsoft.com/n2".into(),
                is_next_link: true
            }
        );
        let (step, mark) = run.delivered("j", 1, 1, Some((t(40), vec![id("b")])), None);
        assert_eq!((step, mark), (Step::Done, Mark::Cursor(t(59))));
        assert_eq!(run.totals(), (2, 3));
    }

    #[test]
    fn a_link_back_into_the_query_re_queries_up_to_the_oldest_row_delivered() {
        let mut run = SliceRun::new(&task(), query());
        run.request();
        run.delivered(
            "j",
            2,
            2,
            Some((t(50), vec![id("a")])),
            Some("https://graph.microsoft.com/n2".into()),
        );
        run.request();
        let (step, mark) = run.delivered(
            "j",
            2,
            2,
            Some((t(45), vec![id("b"), id("c")])),
            Some("https://graph.microsoft.com/n2".into()),
        );
        assert!(
            matches!(&step, Step::Requery(Poisoned::Revisited)),
            "{step:?}"
        );
        // Recorded with the page, so that a restart re-queries too.
        let Mark::InFlight(f) = mark else {
            panic!("{mark:?}")
        };
        assert_eq!(
            (f.next_link, f.query_end, f.requeries),
            (None, Some(t(45)), 1)
        );
        assert_eq!(f.oldest_ids, vec![id("b"), id("c")]);
        assert_eq!(run.progress().skip, vec![id("b"), id("c")]);
        assert!(run.may_go_on().is_ok());
        let again = run.request();
        assert!(!again.is_next_link);
        assert!(
            again.url.contains("2026-11-20T10:45:00.0000000Z"),
            "the re-query ends at the oldest row: {}",
            again.url
        );
    }

    #[test]
    fn a_failing_next_link_re_queries_three_times_then_the_slice_fails() {
        let mut run = SliceRun::new(&task(), query());
        assert!(
            !run.link_failed(false),
            "a first page refused fails the slice"
        );
        for _ in 0..MAX_REQUERIES {
            assert!(run.link_failed(true));
            assert!(!run.request().is_next_link, "the slice's first page again");
        }
        assert!(!run.link_failed(true));
        assert_eq!(run.progress().requeries, MAX_REQUERIES);
        assert_eq!(
            run.progress().query_end,
            Some(window::inclusive_end(t(59))),
            "nothing delivered: the whole slice"
        );
    }

    #[test]
    fn links_abandoned_too_often_fail_the_run_after_the_page_is_committed() {
        let limits = LinkLimits {
            max_pages: 100,
            max_empty_in_a_row: 1,
        };
        let mut run = SliceRun::new(&task(), Query { limits, ..query() });
        for n in 0..=MAX_REQUERIES {
            run.request();
            let (step, _) = run.delivered(
                "j",
                0,
                0,
                None,
                Some(format!("https://graph.microsoft.com/e{n}")),
            );
            assert!(matches!(step, Step::Requery(_)), "{step:?}");
            assert_eq!(run.may_go_on().is_ok(), n < MAX_REQUERIES, "{n}");
        }
    }

    #[test]
    fn a_resumed_re_query_goes_on_where_it_was_and_a_re_read_leaves_the_checkpoint_alone() {
        let mut run = SliceRun::new(&task(), query());
        run.request();
        run.delivered(
            "j",
            2,
            2,
            Some((t(30), vec![id("a")])),
            Some("https://graph.microsoft.com/n2".into()),
        );
        assert!(run.link_failed(true));
        let (_, Mark::InFlight(f)) = run.delivered(
            "j",
            1,
            1,
            Some((t(20), vec![id("b")])),
            Some("https://graph.microsoft.com/n3".into()),
        ) else {
            panic!()
        };
        let resumed = SliceRun::new(&SliceTask::resume(&f), query());
        let (a, b) = (resumed.progress(), run.progress());
        assert_eq!(
            (a.query_end, a.oldest, &a.oldest_ids, a.requeries),
            (b.query_end, b.oldest, &b.oldest_ids, b.requeries)
        );
        assert_eq!(resumed.totals(), (2, 3));

        let reread = SliceTask {
            reread: true,
            ..task()
        };
        let mut run = SliceRun::new(&reread, query());
        run.request();
        assert_eq!(
            run.delivered("j", 1, 1, None, None),
            (Step::Done, Mark::Unchanged)
        );
    }
}
