//! The page client: one page fetched with retries, token refresh and the request budget, its
//! body kept in the spool, parsed off the fetcher's thread. The same client fetches the pages of
//! a row's details ([`Fetch::Details`]), at the budget's low priority.

use super::*;

/// A page fetched (or not) and what it took, for the job record.
pub(super) struct Fetched {
    /// The parsed page and its share of the rows-in-flight budget.
    pub(super) page: Result<Got, Stop>,
    /// Requests retried.
    pub(super) retries: u64,
    /// 429 answers.
    pub(super) throttled: u64,
}

/// Called with each 200 body (or the spool's) before it is parsed, and the URL it came from;
/// called again with an empty body when that body does not parse.
pub(super) type OnBody<'a> = &'a mut dyn FnMut(&[u8], &url::Url);

/// What a request fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fetch {
    /// A page of the summary (message traces): the budget's normal priority.
    Summary,
    /// A page of one row's details (`getDetailsByRecipient`): the budget's low priority
    /// ([`crate::quota::acquire_low`]), parsed as detail records.
    Details,
}

/// Rows-in-flight a detail page takes (a route has a few records).
const DETAIL_PAGE_ROWS: u32 = 100;

/// What becomes of a fetched page's body besides its rows.
#[derive(Clone)]
pub(super) struct PageUse {
    /// What the page is.
    pub(super) fetch: Fetch,
    /// With a plan, the thread that parses the page also makes it ready for the sinks
    /// ([`make_ready`]).
    pub(super) plan: Option<Arc<PagePlan>>,
    /// With a spool, the body is taken from it when it is there (kept before a crash), and
    /// otherwise kept in it as soon as it arrives, before anything else is done with it: before
    /// the request for the page after it goes out (`on_body`). So at any moment only the page
    /// whose request is outstanding is lost to a kill.
    pub(super) spool: Option<Arc<Spool>>,
}

/// Fetches and parses one page, with retries, token refresh on 401, and cancellation (see
/// [`PageUse`] for what else becomes of it).
pub(super) async fn fetch_page(
    env: Rc<FetcherEnv>,
    url: String,
    is_next_link: bool,
    cancel: watch::Receiver<bool>,
    on_body: Option<OnBody<'_>>,
    page_use: PageUse,
) -> Fetched {
    let mut request = PageRequest {
        env: &env,
        url: &url,
        is_next_link,
        cancel: &cancel,
        on_body,
        page_use,
        retries: 0,
        throttled: 0,
    };
    let page = request.run().await;
    Fetched {
        page,
        retries: u64::from(request.retries),
        throttled: request.throttled,
    }
}

/// A page parsed, with its share of the rows-in-flight budget.
pub(super) type Got = (Parsed, tokio::sync::OwnedSemaphorePermit);

/// One page's request under way: the spool around it, then attempts until one answers or the
/// retry policy gives up.
struct PageRequest<'a, 'b> {
    env: &'a FetcherEnv,
    url: &'a str,
    is_next_link: bool,
    cancel: &'a watch::Receiver<bool>,
    on_body: Option<OnBody<'b>>,
    page_use: PageUse,
    retries: u32,
    throttled: u64,
}

/// What one attempt came to.
enum Attempt {
    /// A page (boxed: it is large, and one box a page costs nothing).
    Got(Box<Got>),
    /// The token was refused (401): a new one is fetched and the request made again at once.
    Reauthenticate,
    /// A failure, judged by the retry policy.
    Failed(Failure, String),
}

impl PageRequest<'_, '_> {
    async fn run(&mut self) -> Result<Got, Stop> {
        let request_url = url::Url::parse(self.url).map_err(|source| FetchError::BadLink {
            url: self.url.to_owned(),
            source,
        })?;
        if let Some(got) = self.spooled_page(&request_url).await? {
            return Ok(got);
        }
        let mut reauthenticated = false;
        loop {
            let (failure, message) = match self.attempt(&request_url, reauthenticated).await? {
                Attempt::Got(got) => return Ok(*got),
                Attempt::Reauthenticate => {
                    reauthenticated = true;
                    continue;
                }
                Attempt::Failed(failure, message) => (failure, message),
            };
            self.wait_to_retry(failure, message).await?;
        }
    }

    /// The page from the spool, when a run before a crash kept it there and it still parses.
    async fn spooled_page(&mut self, request_url: &url::Url) -> Result<Option<Got>, Stop> {
        let Some(spool) = self.page_use.spool.clone() else {
            return Ok(None);
        };
        let Some(body) = spooled(&self.env.shared, &spool, self.url).await else {
            return Ok(None);
        };
        let slot = self.row_slot().await?;
        match self.use_body(body, request_url).await? {
            Ok(page) => {
                debug!("page taken from the spool (fetched before a restart), not requested");
                Ok(Some((page, slot)))
            }
            Err(e) => {
                warn!(error = %e, "a page kept in the spool does not parse; requesting it again");
                Ok(None)
            }
        }
    }

    /// This page's share of the rows-in-flight budget (taken before the token: a long wait must
    /// not age it); given back after its commit, or before a retry's wait.
    async fn row_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, FetchError> {
        let rows = match self.page_use.fetch {
            Fetch::Summary => self.env.spec.page_size,
            Fetch::Details => DETAIL_PAGE_ROWS,
        };
        self.env
            .shared
            .rows_in_flight
            .take(rows)
            .await
            .ok_or(FetchError::Stopping)
    }

    /// One request: the tenant's budget, the rows budget, a token, the GET, and its answer.
    async fn attempt(
        &mut self,
        request_url: &url::Url,
        reauthenticated: bool,
    ) -> Result<Attempt, Stop> {
        let spec = &self.env.spec;
        // The budget first: a long wait must not age the token taken for this request. The
        // place is held until the answer comes (dropped), or given back as a 429.
        let permit = match &self.env.quota {
            Some(gate) => Some(wait_for_budget(&spec.id, gate, self.page_use.fetch).await),
            None => None,
        };
        let slot = self.row_slot().await?;
        let header = match self.env.auth.send(GetAuthHeader(spec.auth.clone())).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(FetchError::Token(e).into()),
            Err(e) => return Err(FetchError::TokenActor(e).into()),
        };
        tracing::trace!("page requested");
        let answer = http::get(
            self.url,
            Some(header.0.expose()),
            spec.request_timeout,
            spec.max_body_bytes,
            spec.proxy.as_ref(),
        )
        .await;
        match (permit, &answer) {
            (Some(p), Ok(resp)) if resp.status == 429 => p.throttled(),
            (p, _) => drop(p),
        }
        let resp = match answer {
            Ok(resp) => resp,
            Err(e) => return transfer_failed(self.url, e).map_err(Stop::from),
        };
        if resp.status == 200 {
            crate::telemetry::response_bytes(&spec.id, resp.body.len());
            tracing::trace!(bytes = resp.body.len(), "page answered");
            if let Some(s) = &self.page_use.spool {
                keep(&self.env.shared, s, self.url, resp.body.clone()).await;
                tracing::trace!("page kept in the spool");
            }
            return Ok(match self.use_body(resp.body, request_url).await? {
                Ok(page) => Attempt::Got(Box::new((page, slot))),
                Err(e) => {
                    Attempt::Failed(Failure::BadBody, format!("{}: {e}", strip_query(self.url)))
                }
            });
        }
        if resp.status == 401 && !reauthenticated {
            if let Some(token) = spec.auth.token_spec() {
                info!("API answered 401: fetching a new token and retrying the page");
                self.env.auth.do_send(InvalidateToken {
                    spec: token.clone(),
                    refused: AuthHeader(header.0.clone()),
                });
                return Ok(Attempt::Reauthenticate);
            }
        }
        if resp.status == 429 {
            self.throttled += 1;
            crate::telemetry::throttled(&spec.id);
        }
        let failure = Failure::Status {
            code: resp.status,
            retry_after: resp.retry_after,
        };
        let message = dialect::explain_status(spec.api, resp.status, &resp.body, self.url);
        Ok(Attempt::Failed(failure, message))
    }

    /// A body (the API's or the spool's): shown to `on_body`, then parsed (and made ready) off
    /// the fetcher's thread. One that does not parse is taken out of the spool, and `on_body` is
    /// told with an empty body (which drops a page started from a link read off it).
    async fn use_body(
        &mut self,
        body: bytes::Bytes,
        request_url: &url::Url,
    ) -> Result<Result<Parsed, dialect::DialectError>, FetchError> {
        if let Some(f) = self.on_body.as_mut() {
            f(&body, request_url);
        }
        let spec = &self.env.spec;
        let parsed = parse_off_thread(
            &self.env.shared,
            Parse {
                api: spec.api,
                max_rows: spec.page_size as usize,
                fetch: self.page_use.fetch,
            },
            body,
            request_url,
            self.url,
            self.page_use.plan.clone(),
        )
        .await
        .ok_or(FetchError::Stopping)?;
        if parsed.is_err() {
            if let Some(s) = &self.page_use.spool {
                forget(&self.env.shared, s, self.url);
            }
            if let Some(f) = self.on_body.as_mut() {
                f(b"", request_url);
            }
        }
        Ok(parsed)
    }

    /// After a failed attempt: waits as the retry policy says ([`RetryPolicy::judge`], which
    /// also holds the tenant back after a 429), or gives up with the failure.
    ///
    /// [`RetryPolicy::judge`]: crate::retry::RetryPolicy::judge
    async fn wait_to_retry(&mut self, failure: Failure, message: String) -> Result<(), Stop> {
        let spec = &self.env.spec;
        let judgement = spec.retry.judge(&failure, self.retries, self.is_next_link);
        if let (Some(gate), Some(hold)) = (&self.env.quota, judgement.tenant_hold) {
            gate.lock().block_until(Instant::now() + hold);
        }
        let Some(decision) = judgement.retry else {
            return Err(FetchError::Api { failure, message }.into());
        };
        self.retries += 1;
        crate::telemetry::retried(&spec.id);
        log_retry(&spec.retry, self.retries, &decision, &failure, &message);
        let mut c = self.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(decision.delay) => Ok(()),
            _ = c.wait_for(|v| *v) => Err(Stop::Cancelled(None)),
        }
    }
}

/// A request that got no answer: timed out, too large, or cut off (a failure to judge), or
/// that could not be made (an error at once).
fn transfer_failed(url: &str, e: HttpError) -> Result<Attempt, FetchError> {
    let url = strip_query(url);
    let (failure, message) = match e {
        HttpError::Timeout(t) => (
            Failure::Timeout,
            format!("{url}: request timed out after {t:?} (request_timeout_secs)"),
        ),
        HttpError::TooLarge(n) => (
            Failure::BadBody,
            format!("{url}: response body larger than {n} bytes; lower page_size"),
        ),
        HttpError::Connection(e) => (Failure::Connection, format!("{url}: {e}")),
        e @ HttpError::Request(_) => return Err(FetchError::Request(e)),
    };
    Ok(Attempt::Failed(failure, message))
}

/// Waits for the tenant's request budget (at the priority of what is fetched), and exports what
/// is left of it. The permit holds the request's place until its answer.
async fn wait_for_budget(
    source: &str,
    gate: &crate::quota::SharedGate,
    fetch: Fetch,
) -> crate::quota::Permit {
    let taken = match fetch {
        Fetch::Summary => crate::quota::acquire(gate).await,
        Fetch::Details => crate::quota::acquire_low(gate).await,
    };
    let left = gate.lock().remaining(Instant::now());
    crate::telemetry::quota_remaining(source, left);
    if !taken.waited.is_zero() {
        debug!(
            waited_ms = taken.waited.as_millis() as u64,
            "waited for the API request budget"
        );
    }
    taken
}

/// One line per retry, saying where its delay came from.
fn log_retry(
    policy: &crate::retry::RetryPolicy,
    attempt: u32,
    d: &crate::retry::Decision,
    failure: &Failure,
    message: &str,
) {
    let delay_ms = d.delay.as_millis() as u64;
    let announced = match failure {
        Failure::Status {
            retry_after: Some(a),
            ..
        } => Some(*a),
        _ => None,
    };
    match announced {
        _ if d.from_retry_after => {
            warn!(attempt, delay_ms, error = %message, "honouring Retry-After")
        }
        Some(a) if policy.honor_retry_after => warn!(
            attempt,
            retry_after_secs = a.as_secs(),
            delay_ms,
            error = %message,
            "Retry-After is longer than {} s: ignored; retrying after the retry policy's delay",
            crate::retry::MAX_RETRY_AFTER.as_secs()
        ),
        _ => warn!(attempt, delay_ms, error = %message, "retrying page"),
    }
}

/// The body the spool kept for `url`, if it has a usable one (read on the blocking pool: the
/// fetcher's thread is every source's).
pub(super) async fn spooled(
    shared: &Shared,
    spool: &Arc<Spool>,
    url: &str,
) -> Option<bytes::Bytes> {
    let (spool, owned) = (spool.clone(), url.to_owned());
    match shared.spool_io(move || spool.get(&owned)).await {
        Some(Ok(body)) => body.map(bytes::Bytes::from),
        Some(Err(why)) => {
            warn!(%why, url = strip_query(url), "a page kept in the spool cannot be used; requesting it again");
            None
        }
        None => None,
    }
}

/// Keeps a page's body in the spool, on the blocking pool; done when it is kept. A failure (a
/// full disk) is a warning, at most one a minute: the page is only requested again after a
/// crash.
pub(super) async fn keep(shared: &Shared, spool: &Arc<Spool>, url: &str, body: bytes::Bytes) {
    let (spool, url) = (spool.clone(), url.to_owned());
    if let Some(Err(e)) = shared.spool_io(move || spool.put(&url, &body)).await {
        shared.spool_failed("keep a page in", &e);
    }
}

/// Removes a committed (or unusable) page from the spool, on the blocking pool, without
/// waiting: nothing asks for it again.
pub(super) fn forget(shared: &Shared, spool: &Arc<Spool>, url: &str) {
    let (shared, spool, url) = (shared.clone(), spool.clone(), url.to_owned());
    drop(tokio::task::spawn_local(async move {
        if let Some(Err(e)) = shared.spool_io(move || spool.remove(&url)).await {
            shared.spool_failed("remove a page from", &e);
        }
    }));
}

/// How a body is read: a summary page of at most `max_rows` rows of `api`, or a detail page.
#[derive(Clone, Copy)]
pub(super) struct Parse {
    pub(super) api: Api,
    pub(super) max_rows: usize,
    pub(super) fetch: Fetch,
}

/// Parses a page on a thread of the blocking pool, so that the fetcher's thread goes on with
/// requests (the next page's above all) and deliveries meanwhile; with a `plan`, the same thread
/// then makes the page ready for the sinks while its rows are in that core's cache, and the rows
/// never reach the fetcher's thread. `None` when the engine is stopping.
pub(super) async fn parse_off_thread(
    shared: &Shared,
    how: Parse,
    body: bytes::Bytes,
    request_url: &url::Url,
    url: &str,
    plan: Option<Arc<PagePlan>>,
) -> Option<Result<Parsed, dialect::DialectError>> {
    let request_url = request_url.clone();
    let source: Arc<str> = Arc::from(strip_query(url));
    shared
        .off_thread(move || {
            tracing::trace!(bytes = body.len(), "page received; parsing");
            let page = match how.fetch {
                Fetch::Summary => {
                    let passed = plan.as_deref().and_then(|plan| {
                        super::passthrough::try_ready(plan, &body, &request_url, how.max_rows)
                    });
                    if let Some(ready) = passed {
                        tracing::trace!("page passed through");
                        crate::buffers::give_bytes(body);
                        return Ok(Parsed::Ready(ready));
                    }
                    how.api
                        .parse_page_of_at_most(&body, &request_url, how.max_rows)?
                }
                Fetch::Details => dialect::details::parse_details(&body, &request_url)?,
            };
            crate::buffers::give_bytes(body);
            Ok(match plan {
                Some(plan) => Parsed::Ready(make_ready(&plan, page, source)),
                None => Parsed::Rows(page),
            })
        })
        .await
}

pub(super) fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
