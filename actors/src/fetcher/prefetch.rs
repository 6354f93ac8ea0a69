//! The pages after the one being delivered, fetched ahead by their own tasks.

use super::*;

/// The pages after the one being delivered, fetched ahead by their own task (on the fetcher's
/// thread) while the pages before them are delivered and committed: up to `depth` of them,
/// following the next links in order, handed over in that order. Dropping it aborts the task
/// (a failed delivery, a cancelled job, a re-query).
pub(super) struct Prefetch {
    pub(super) pages: tokio::sync::mpsc::UnboundedReceiver<Ahead>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// The next page, taken off `pages` by [`Prefetch::next_is_ready`].
    peeked: Option<Ahead>,
}

/// A page fetched ahead: its URL, the page, and its place among the `depth` allowed.
pub(super) type Ahead = (String, Fetched, tokio::sync::OwnedSemaphorePermit);

impl Prefetch {
    pub(super) fn start(
        env: &Rc<FetcherEnv>,
        url: String,
        cancel: &watch::Receiver<bool>,
        depth: usize,
        page_use: PageUse,
    ) -> Prefetch {
        let (tx, pages) = tokio::sync::mpsc::unbounded_channel();
        let places = Arc::new(tokio::sync::Semaphore::new(depth.max(1)));
        let fetch = fetch_ahead(env.clone(), url, cancel.clone(), places, tx, page_use)
            .instrument(tracing::Span::current());
        Prefetch {
            pages,
            task: tokio::task::spawn_local(fetch),
            peeked: None,
        }
    }

    /// Whether the next page is already in and made ready with rows for the sinks (so the page
    /// before it may be committed with it: [`super::group`]); never waits.
    pub(super) fn next_is_ready(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.pages.try_recv().ok();
        }
        matches!(
            &self.peeked,
            Some((_, Fetched { page: Ok((Parsed::Ready(Ok(ready)), _)), .. }, _)) if ready.batch.is_some()
        )
    }

    /// The next page fetched ahead, when it is `url` (it always is: both sides follow the same
    /// next links; `None` otherwise, and the caller fetches it itself).
    pub(super) async fn take(&mut self, url: &str) -> Option<Fetched> {
        let next = match self.peeked.take() {
            Some(peeked) => Some(peeked),
            None => self.pages.recv().await,
        };
        match next {
            // Its place is given back: the task may fetch one more.
            Some((u, fetched, _place)) => (u == url).then_some(fetched),
            None => {
                // A panic in the task is the fetcher's panic, as without the prefetch.
                if let Err(e) = (&mut self.task).await {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
                None
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task of a [`Prefetch`]: fetches `url` and the pages its next links lead to, each once it
/// has a place, until the last page or the first failure (handed over like a page).
///
/// A page's next link is read off the end (or the start) of its body ([`Api::peek_next_link`])
/// as soon as the body is in, and when a place is free the next page is requested at once, by
/// its own task, while this one is still being parsed: the service prepares the next page while
/// this one is parsed, instead of after. The guess is checked against the parsed page's link; a wrong one
/// (only a row field *named* like the key, after the real link, can cause one) is aborted and the
/// right one fetched: at most one request wasted, never a row.
pub(super) async fn fetch_ahead(
    env: Rc<FetcherEnv>,
    url: String,
    cancel: watch::Receiver<bool>,
    places: Arc<tokio::sync::Semaphore>,
    pages: tokio::sync::mpsc::UnboundedSender<Ahead>,
    page_use: PageUse,
) {
    let Ok(place) = places.clone().acquire_owned().await else {
        return;
    };
    let mut current = Started::spawn(&env, url, &cancel, &places, place, &page_use);
    loop {
        let (fetched, successor) = match (&mut current.task.0).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        };
        let next = match &fetched.page {
            Ok((parsed, _)) => parsed.next_link().map(|u| u.to_string()),
            Err(_) => None,
        };
        let Started { url, place, .. } = current;
        if pages.send((url, fetched, place)).is_err() {
            return;
        }
        let Some(next) = next else {
            return;
        };
        current = match successor {
            Some(s) if s.url == next => s,
            guessed => {
                if let Some(wrong) = &guessed {
                    warn!(
                        guessed = %strip_query(&wrong.url),
                        "the next link read off the end of a page was not the page's own; fetching the right one"
                    );
                }
                drop(guessed);
                let Ok(place) = places.clone().acquire_owned().await else {
                    return;
                };
                Started::spawn(&env, next, &cancel, &places, place, &page_use)
            }
        };
    }
}

/// A page being fetched ahead by its own task, holding its place among the pages ahead. The
/// task ends with the page and, when it started one, the page after it. Dropping it aborts the
/// task and so, in turn, the page after it.
pub(super) struct Started {
    pub(super) url: String,
    pub(super) place: tokio::sync::OwnedSemaphorePermit,
    pub(super) task: AbortOnDrop<(Fetched, Option<Started>)>,
}

/// A task aborted when its handle is dropped.
pub(super) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Started {
    pub(super) fn spawn(
        env: &Rc<FetcherEnv>,
        url: String,
        cancel: &watch::Receiver<bool>,
        places: &Arc<tokio::sync::Semaphore>,
        place: tokio::sync::OwnedSemaphorePermit,
        page_use: &PageUse,
    ) -> Started {
        let fetch: futures_util::future::LocalBoxFuture<'static, _> = Box::pin(
            fetch_and_start_next(
                env.clone(),
                url.clone(),
                cancel.clone(),
                places.clone(),
                page_use.clone(),
            )
            .instrument(tracing::Span::current()),
        );
        Started {
            url,
            place,
            task: AbortOnDrop(tokio::task::spawn_local(fetch)),
        }
    }
}

/// Fetches `url`, and starts the page after it as soon as its body is in (when a place is free).
pub(super) async fn fetch_and_start_next(
    env: Rc<FetcherEnv>,
    url: String,
    cancel: watch::Receiver<bool>,
    places: Arc<tokio::sync::Semaphore>,
    page_use: PageUse,
) -> (Fetched, Option<Started>) {
    let mut next: Option<Started> = None;
    let fetched = {
        let mut start_next = |body: &[u8], request_url: &url::Url| {
            // A body given again (the page was retried) replaces the one before.
            next = None;
            let Some(link) = env.spec.api.peek_next_link(body, request_url) else {
                return;
            };
            if let Ok(place) = places.clone().try_acquire_owned() {
                next = Some(Started::spawn(
                    &env,
                    link.to_string(),
                    &cancel,
                    &places,
                    place,
                    &page_use,
                ));
            }
        };
        fetch_page(
            env.clone(),
            url,
            true,
            cancel.clone(),
            Some(&mut start_next),
            page_use.clone(),
        )
        .await
    };
    if fetched.page.is_err() {
        next = None;
    }
    (fetched, next)
}
