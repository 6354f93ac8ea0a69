//! The Sink actor: wraps a plain [`Sink`] and acknowledges a batch only once the sink has it.

use crate::event::Batch;
use crate::hook::panic_message;
use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt as _;
use msgtrace_storage::{FileMark, SinkPosition};
use std::panic::AssertUnwindSafe;

/// Why a sink could not take a batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    /// The sink's id.
    pub sink: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// What a sink reads of a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkInput {
    /// The events, `batch.events` (the default).
    Events,
    /// NDJSON only, through [`Batch::ndjson`]. The fetcher then encodes each page once, on the
    /// thread that parsed it, and when every sink of a source takes NDJSON it frees the events
    /// there too: a page's rows never cross threads, and `batch.events` is empty.
    Ndjson,
}

/// A destination for events. Implementations: stdout, file, HTTP (product crate), or a host's own.
///
/// `deliver` must return only once the batch is durable as far as the sink can tell (written and
/// flushed, or acknowledged by the receiver): the checkpoint moves past the batch right after.
pub trait Sink: Send + 'static {
    /// The sink's id (its key in the configuration).
    fn name(&self) -> &str;
    /// What the sink reads of a batch ([`SinkInput::Events`] unless it says otherwise).
    fn input(&self) -> SinkInput {
        SinkInput::Events
    }
    /// Delivers one batch.
    fn deliver<'a>(&'a mut self, batch: &'a Batch) -> LocalBoxFuture<'a, Result<(), SinkError>>;
    /// The file the sink appends to and its length after the last delivery, recorded with the
    /// commit that covers it ([`msgtrace_storage::positions`]). Only a sink that, after a
    /// restart, recognises the pages it holds past that record when they are delivered again
    /// gives one (msgtrace's `file` sink); `None` by default.
    fn position(&self) -> Option<FileMark> {
        None
    }
    /// As a job starts: the greatest lengths the commits recorded for the sink's files. A sink
    /// that gives positions compares the pages delivered again with what its file holds past
    /// them instead of writing them twice (a fetcher that panicked, a commit that failed after
    /// its page was delivered). Does nothing by default.
    fn resume(&mut self, committed: &[FileMark]) {
        let _ = committed;
    }
    /// Flushes anything buffered (called on shutdown).
    fn flush(&mut self) -> LocalBoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
    /// Lets go of the files or connections the sink holds and opens them again by their
    /// configured names (a reload, `SIGHUP`: logrotate renamed the file). Called between two
    /// deliveries, never during one. Does nothing by default.
    fn reopen(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Delivers one page's events; answered once the sink has them, with where its file then
/// stands ([`Sink::position`]).
#[derive(Message, Clone)]
#[rtype(result = "Result<Option<SinkPosition>, SinkError>")]
pub struct Deliver(pub Batch);

/// Tells the sink, as a job starts, how far the commits say its files hold rows
/// ([`Sink::resume`]): every record, the sink takes its own.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume(pub std::sync::Arc<Vec<SinkPosition>>);

/// Flushes the sink.
#[derive(Message)]
#[rtype(result = "Result<(), SinkError>")]
pub struct FlushSink;

/// Builds a sink afresh (after the one before panicked).
pub type SinkFactory = Box<dyn Fn() -> Box<dyn Sink> + Send>;

/// Reopens the sink ([`Sink::reopen`]) once the deliveries sent before it are done. A failure is
/// logged; the sink tries again at its next delivery.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reopen;

/// The Sink actor. One batch at a time ([`AtomicResponse`]): batches never interleave.
///
/// Supervised: a panic in the sink (an embedder's code, or ours) is caught, the page is refused
/// (so not acknowledged: the fetcher gives it again), and the sink is built again from its
/// factory when it has one, or kept as it is. Before, the panic ended the actor's thread for
/// good, and a scheduled run held the page forever.
pub struct SinkActor {
    name: String,
    sink: Option<Box<dyn Sink>>,
    factory: Option<SinkFactory>,
    /// Set when the engine shuts down: a delivery still under way [`SHUTDOWN_GRACE`] later
    /// (a sink retrying a receiver that is down) is abandoned.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How long a delivery may go on once the engine shuts down: long enough for a write or a
/// request to a healthy receiver, short enough that a sink retrying one that is down (about
/// 31 s of backoff for `http`) lets the process exit well within a service manager's grace
/// (Kubernetes: 30 s). The abandoned page is not acknowledged, so the next run delivers it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl SinkActor {
    /// Wraps a sink.
    pub fn new(sink: Box<dyn Sink>) -> SinkActor {
        SinkActor {
            name: sink.name().to_owned(),
            sink: Some(sink),
            factory: None,
            stopping: None,
        }
    }

    /// Builds the sink again with `factory` after it panicked.
    pub fn with_factory(mut self, factory: SinkFactory) -> SinkActor {
        self.factory = Some(factory);
        self
    }

    /// Takes the sink back after a delivery or flush: its answer, or, when it panicked (`Err`
    /// with the panic's message), the sink to go on with and a refusal that says so.
    fn settle(
        &mut self,
        sink: Option<Box<dyn Sink>>,
        r: Result<Result<(), SinkError>, String>,
        then: &str,
    ) -> Result<(), SinkError> {
        match r {
            Ok(r) => {
                self.sink = sink;
                r
            }
            Err(what) => {
                self.sink = sink.map(|s| self.after_panic(s, &what));
                Err(SinkError {
                    sink: self.name.clone(),
                    message: format!("the sink panicked ({what}){then}"),
                })
            }
        }
    }

    /// The sink to go on with after `sink` panicked (`what`): a new one from the factory, or the
    /// same one.
    fn after_panic(&self, sink: Box<dyn Sink>, what: &str) -> Box<dyn Sink> {
        match &self.factory {
            Some(build) => {
                tracing::error!(sink = %self.name, panic = %what, "the sink panicked; it is built again and given the page again");
                drop(sink);
                build()
            }
            None => {
                tracing::error!(sink = %self.name, panic = %what, "the sink panicked; it is kept and given the page again");
                sink
            }
        }
    }

    /// Abandons a delivery [`SHUTDOWN_GRACE`] after `stopping` turns true.
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> SinkActor {
        self.stopping = Some(stopping);
        self
    }
}

/// Resolves [`SHUTDOWN_GRACE`] after `stopping` turns true; never without one.
async fn abandoned(stopping: Option<tokio::sync::watch::Receiver<bool>>) {
    match stopping {
        Some(mut s) => {
            if s.wait_for(|v| *v).await.is_err() {
                // The engine is gone without saying so: nothing will stop the delivery.
                return std::future::pending().await;
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
        None => std::future::pending().await,
    }
}

impl Actor for SinkActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Backpressure: a fetcher waits for its page anyway; keep the queue short.
        ctx.set_mailbox_capacity(16);
    }
}

impl Handler<Deliver> for SinkActor {
    type Result = AtomicResponse<Self, Result<Option<SinkPosition>, SinkError>>;

    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) -> Self::Result {
        let name = self.name.clone();
        let sink = self.sink.take();
        let stopping = self.stopping.clone();
        AtomicResponse::new(Box::pin(
            async move {
                match sink {
                    Some(mut s) => {
                        let delivery = AssertUnwindSafe(s.deliver(&msg.0)).catch_unwind();
                        let r = tokio::select! {
                            r = delivery => r.map_err(|panic| panic_message(&*panic)),
                            () = abandoned(stopping) => Ok(Err(SinkError {
                                sink: name.clone(),
                                message: "shutting down: the page was abandoned (not acknowledged; the next run delivers it again)".into(),
                            })),
                        };
                        (Some(s), r)
                    }
                    None => (
                        None,
                        Ok(Err(SinkError {
                            sink: name,
                            message: "sink is gone after an earlier failure".into(),
                        })),
                    ),
                }
            }
            .into_actor(self)
            .map(|(sink, r), act, _| {
                act.settle(sink, r, "; the page was not acknowledged and is given to it again")?;
                let file = act.sink.as_ref().and_then(|s| s.position());
                Ok(file.map(|file| SinkPosition {
                    sink: act.name.clone(),
                    file,
                }))
            }),
        ))
    }
}

impl Handler<Reopen> for SinkActor {
    type Result = ();

    fn handle(&mut self, _: Reopen, _: &mut Context<Self>) {
        // Deliveries are atomic responses: none is under way while this runs.
        if let Some(Err(e)) = self.sink.as_mut().map(|s| s.reopen()) {
            tracing::warn!(error = %e, "reload: the sink could not reopen; it tries again at its next page");
        }
    }
}

impl Handler<Resume> for SinkActor {
    type Result = ();

    fn handle(&mut self, msg: Resume, _: &mut Context<Self>) {
        // Deliveries are atomic responses: none is under way while this runs.
        let own: Vec<FileMark> = msg
            .0
            .iter()
            .filter(|p| p.sink == self.name)
            .map(|p| p.file.clone())
            .collect();
        if let Some(s) = self.sink.as_mut() {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| s.resume(&own)));
            if let Err(panic) = r {
                tracing::error!(sink = %self.name, panic = %panic_message(&*panic), "the sink panicked when told its committed positions; it goes on without them");
            }
        }
    }
}

impl Handler<FlushSink> for SinkActor {
    type Result = AtomicResponse<Self, Result<(), SinkError>>;

    fn handle(&mut self, _: FlushSink, _: &mut Context<Self>) -> Self::Result {
        let sink = self.sink.take();
        AtomicResponse::new(Box::pin(
            async move {
                match sink {
                    Some(mut s) => {
                        let r = AssertUnwindSafe(s.flush()).catch_unwind().await;
                        (Some(s), r.map_err(|panic| panic_message(&*panic)))
                    }
                    None => (None, Ok(Ok(()))),
                }
            }
            .into_actor(self)
            .map(|(sink, r), act, _| act.settle(sink, r, " while flushing")),
        ))
    }
}
