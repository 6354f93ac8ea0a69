//! The page client: one page fetched with retries, token refresh and the request budget, its
//! body kept in the spool, parsed off the fetcher's thread.

use super::*;

/// A page fetched (or not) and what it took, for the job record.
pub(super) struct Fetched {
    /// The parsed page and its share of the rows-in-flight budget.
    pub(super) page: Result<(Parsed, tokio::sync::OwnedSemaphorePermit), Stop>,
    /// Requests retried.
    pub(super) retries: u64,
    /// 429 answers.
    pub(super) throttled: u64,
}

/// Called with each 200 body (or the spool's) before it is parsed, and the URL it came from;
/// called again with an empty body when that body does not parse.
pub(super) type OnBody<'a> = &'a mut dyn FnMut(&[u8], &url::Url);

/// What becomes of a fetched page's body besides its rows.
#[derive(Clone)]
pub(super) struct PageUse {
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
    let mut retries: u32 = 0;
    let mut throttled = 0;
    let page = fetch_with_retries(
        &env,
        &url,
        is_next_link,
        &cancel,
        (&mut retries, &mut throttled),
        on_body,
        page_use,
    )
    .await;
    Fetched {
        page,
        retries: u64::from(retries),
        throttled,
    }
}

pub(super) async fn fetch_with_retries(
    env: &FetcherEnv,
    url: &str,
    is_next_link: bool,
    cancel: &watch::Receiver<bool>,
    (retries, throttled): (&mut u32, &mut u64),
    mut on_body: Option<OnBody<'_>>,
    page_use: PageUse,
) -> Result<(Parsed, tokio::sync::OwnedSemaphorePermit), Stop> {
    let spec = &env.spec;
    let request_url = url::Url::parse(url)
        .map_err(|e| Stop::Failed(format!("next link `{url}` is not a valid URL: {e}")))?;
    let PageUse { plan, spool } = page_use;
    let kept = match &spool {
        Some(s) => spooled(&env.shared, s, url).await,
        None => None,
    };
    if let Some(body) = kept {
        let slot = env
            .shared
            .rows_in_flight
            .take(spec.page_size)
            .await
            .ok_or_else(|| Stop::Failed("the engine is stopping".into()))?;
        if let Some(f) = on_body.as_mut() {
            f(&body, &request_url);
        }
        match parse_off_thread(
            &env.shared,
            spec.api,
            spec.page_size as usize,
            body,
            &request_url,
            url,
            plan.clone(),
        )
        .await
        {
            None => return Err(Stop::Failed("the engine is stopping".into())),
            Some(Ok(page)) => {
                debug!("page taken from the spool (fetched before a restart), not requested");
                return Ok((page, slot));
            }
            Some(Err(e)) => {
                warn!(error = %e, "a page kept in the spool does not parse; requesting it again");
                if let Some(s) = &spool {
                    forget(&env.shared, s, url);
                }
                if let Some(f) = on_body.as_mut() {
                    f(b"", &request_url);
                }
            }
        }
    }
    let mut reauthenticated = false;
    loop {
        // The budget first: a long wait must not age the token taken for this request. The
        // place is held until the answer comes (dropped), or given back as a 429.
        let mut permit = None;
        if let Some(gate) = &env.quota {
            let taken = crate::quota::acquire(gate).await;
            let left = gate.lock().remaining(Instant::now());
            crate::telemetry::quota_remaining(&spec.id, left);
            if !taken.waited.is_zero() {
                debug!(
                    waited_ms = taken.waited.as_millis() as u64,
                    "waited for the API request budget"
                );
            }
            permit = Some(taken);
        }
        // Then this page's share of the rows-in-flight budget (before the token, for the same
        // reason); given back after its commit, or before a retry's wait.
        let slot = env
            .shared
            .rows_in_flight
            .take(spec.page_size)
            .await
            .ok_or_else(|| Stop::Failed("the engine is stopping".into()))?;
        let header = match env.auth.send(GetAuthHeader(spec.auth.clone())).await {
            Ok(Ok(h)) => h,
            Ok(Err(e @ crate::token::AuthError::Rejected(_))) => {
                return Err(Stop::Fatal(e.to_string()))
            }
            Ok(Err(e)) => return Err(Stop::Failed(e.to_string())),
            Err(e) => return Err(Stop::Failed(format!("token actor unavailable: {e}"))),
        };
        let answer = http::get(
            url,
            Some(header.0.expose()),
            spec.request_timeout,
            spec.max_body_bytes,
            spec.proxy.as_ref(),
        )
        .await;
        match (permit.take(), &answer) {
            (Some(p), Ok(resp)) if resp.status == 429 => p.throttled(),
            (p, _) => drop(p),
        }
        let (failure, message) = match answer {
            Ok(resp) if resp.status == 200 => {
                crate::telemetry::response_bytes(&spec.id, resp.body.len());
                if let Some(s) = &spool {
                    keep(&env.shared, s, url, resp.body.clone()).await;
                }
                if let Some(f) = on_body.as_mut() {
                    f(&resp.body, &request_url);
                }
                let parse = parse_off_thread(
                    &env.shared,
                    spec.api,
                    spec.page_size as usize,
                    resp.body,
                    &request_url,
                    url,
                    plan.clone(),
                );
                match parse.await {
                    None => return Err(Stop::Failed("the engine is stopping".into())),
                    Some(Ok(page)) => return Ok((page, slot)),
                    Some(Err(e)) => {
                        // Neither the body nor a page started from a link read off it stays:
                        // an empty body is no link, and drops the page started.
                        if let Some(s) = &spool {
                            forget(&env.shared, s, url);
                        }
                        if let Some(f) = on_body.as_mut() {
                            f(b"", &request_url);
                        }
                        (Failure::BadBody, format!("{}: {e}", strip_query(url)))
                    }
                }
            }
            Ok(resp) if resp.status == 401 && !reauthenticated => {
                if let Some(token) = spec.auth.token_spec() {
                    reauthenticated = true;
                    info!("API answered 401: fetching a new token and retrying the page");
                    env.auth.do_send(InvalidateToken {
                        spec: token.clone(),
                        refused: AuthHeader(header.0.clone()),
                    });
                    continue;
                }
                (
                    Failure::Status {
                        code: 401,
                        retry_after: resp.retry_after,
                    },
                    dialect::explain_status(spec.api, 401, &resp.body, url),
                )
            }
            Ok(resp) => {
                if resp.status == 429 {
                    *throttled += 1;
                    crate::telemetry::throttled(&spec.id);
                }
                (
                    Failure::Status {
                        code: resp.status,
                        retry_after: resp.retry_after,
                    },
                    dialect::explain_status(spec.api, resp.status, &resp.body, url),
                )
            }
            Err(HttpError::Timeout(t)) => (
                Failure::Timeout,
                format!(
                    "{}: request timed out after {t:?} (request_timeout_secs)",
                    strip_query(url)
                ),
            ),
            Err(HttpError::TooLarge(n)) => (
                Failure::BadBody,
                format!(
                    "{}: response body larger than {n} bytes; lower page_size",
                    strip_query(url)
                ),
            ),
            Err(HttpError::Connection(e)) => {
                (Failure::Connection, format!("{}: {e}", strip_query(url)))
            }
            Err(HttpError::Request(e)) => return Err(Stop::Failed(e)),
        };
        // Not while waiting to retry.
        drop(slot);
        let decision = spec.retry.decide(&failure, *retries).or_else(|| {
            // A next link answered 400 may be a transient server state: two more tries.
            (is_next_link
                && matches!(failure, Failure::Status { code: 400, .. })
                && *retries < NEXT_LINK_400_RETRIES)
                .then(|| crate::retry::Decision {
                    delay: NEXT_LINK_400_BACKOFF.delay(*retries),
                    from_retry_after: false,
                })
        });
        if let Failure::Status {
            code: 429,
            retry_after,
        } = failure
        {
            // Every source of this tenant holds back, not only this one, and for the wait this
            // page takes: one rule for the page and the tenant (`RetryPolicy::decide`).
            let hold = decision
                .as_ref()
                .map(|d| d.delay)
                .or(retry_after.map(|a| a.min(crate::retry::MAX_RETRY_AFTER)));
            if let (Some(gate), Some(hold)) = (&env.quota, hold) {
                gate.lock().block_until(Instant::now() + hold);
            }
        }
        match decision {
            None => {
                return Err(match failure {
                    Failure::Status {
                        code: 400 | 404 | 410,
                        ..
                    }
                    | Failure::BadBody => Stop::Rejected(message),
                    Failure::Status {
                        code: 401 | 403, ..
                    } => Stop::Fatal(message),
                    _ => Stop::Failed(message),
                })
            }
            Some(d) => {
                *retries += 1;
                crate::telemetry::retried(&spec.id);
                let announced = match failure {
                    Failure::Status {
                        retry_after: Some(a),
                        ..
                    } => Some(a),
                    _ => None,
                };
                match announced {
                    _ if d.from_retry_after => {
                        warn!(attempt = *retries, delay_ms = d.delay.as_millis() as u64, error = %message, "honouring Retry-After")
                    }
                    Some(a) if spec.retry.honor_retry_after => warn!(
                        attempt = *retries,
                        retry_after_secs = a.as_secs(),
                        delay_ms = d.delay.as_millis() as u64,
                        error = %message,
                        "Retry-After is longer than {} s: ignored; retrying after the retry policy's delay",
                        crate::retry::MAX_RETRY_AFTER.as_secs()
                    ),
                    _ => {
                        warn!(attempt = *retries, delay_ms = d.delay.as_millis() as u64, error = %message, "retrying page")
                    }
                }
                let mut c = cancel.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d.delay) => {}
                    _ = c.wait_for(|v| *v) => return Err(Stop::Cancelled(None)),
                }
            }
        }
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

/// Parses a page on a thread of the blocking pool, so that the fetcher's thread goes on with
/// requests (the next page's above all) and deliveries meanwhile; with a `plan`, the same thread
/// then makes the page ready for the sinks while its rows are in that core's cache, and the rows
/// never reach the fetcher's thread. `None` when the engine is stopping.
pub(super) async fn parse_off_thread(
    shared: &Shared,
    api: Api,
    max_rows: usize,
    body: bytes::Bytes,
    request_url: &url::Url,
    url: &str,
    plan: Option<Arc<PagePlan>>,
) -> Option<Result<Parsed, dialect::DialectError>> {
    let request_url = request_url.clone();
    let source: Arc<str> = Arc::from(strip_query(url));
    shared
        .off_thread(move || {
            let page = api.parse_page_of_at_most(&body, &request_url, max_rows)?;
            crate::buffers::give_bytes(body);
            Ok(match plan {
                Some(plan) => Parsed::Ready(make_ready(&plan, page, source)),
                None => Parsed::Rows(page),
            })
        })
        .await
}

/// Tries of a next link that answers 400 before it is abandoned (beyond the retry policy).
pub(super) const NEXT_LINK_400_RETRIES: u32 = 2;

/// Their waits: 0.5 s, then 1 s.
const NEXT_LINK_400_BACKOFF: crate::retry::Backoff =
    crate::retry::Backoff::doubling(Duration::from_millis(500), Duration::from_secs(1));

pub(super) fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
