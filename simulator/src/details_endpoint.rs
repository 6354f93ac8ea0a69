//! The detail endpoint: `GET /{version}/admin/exchange/tracing/messageTraces/{id}/getDetailsByRecipient(recipientAddress='…')`.
//!
//! It is a data endpoint like the summary one: the same injected and scheduled faults (429 with
//! `Retry-After`, 5xx, bodies cut short or not JSON), the same bearer check, the same per-tenant
//! quota and page latency. A row it does not have (or does not publish yet) is a 404.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Serialize;

use super::details::GraphDetail;
use super::query::Params;
use super::server::{
    bad_request, gate, graph_authorized, graph_code, graph_error, graph_error_retry, origin,
    page_latency, State,
};

/// A detail page: `@odata.context`, `value`, and `@odata.nextLink` when
/// [`SimConfig::detail_page_size`](super::SimConfig::detail_page_size) leaves records for
/// another page.
#[derive(Serialize)]
struct DetailPage<'a> {
    #[serde(rename = "@odata.context")]
    context: String,
    value: Vec<GraphDetail<'a>>,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
}

/// Answers a detail request; `asked` is the trace id and address read off its path, or why they
/// cannot be.
pub(crate) async fn graph_details(
    req: &HttpRequest,
    state: &State,
    version: &str,
    asked: Result<(String, String), String>,
) -> HttpResponse {
    state.observe(req);
    state.schedule_fault();
    let counters = &state.counters;
    counters.bump(&counters.detail_requests, 1);
    if let Some(answer) = state.take_body_fault() {
        return answer;
    }
    if let Err((status, retry, message)) = gate(state, || graph_authorized(req, state)).await {
        return graph_error_retry(req, state, status, graph_code(status), &message, retry);
    }
    let (trace_id, address) = match asked {
        Ok(a) => a,
        Err(m) => return bad_request(req, state, &m),
    };
    let params = Params::parse(req.query_string());
    let skip = match params.get("$skiptoken").map(|s| s.trim().parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad_request(req, state, "Invalid skip token."),
    };
    page_latency(state).await;
    let cfg = &state.config;
    let now = Utc::now();
    let row = cfg.model.row_of(&trace_id, &address).filter(|r| {
        cfg.late
            .is_none_or(|l| cfg.model.row_visible_at(r, now, &l))
    });
    let Some(row) = row else {
        let message = format!("No message trace {trace_id} with recipient {address} was found.");
        return graph_error(
            req,
            state,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &message,
        );
    };
    let records = cfg.model.details(&row, now, cfg.late.as_ref());
    let size = cfg.detail_page_size.unwrap_or(usize::MAX).max(1);
    let end = skip.saturating_add(size).min(records.len());
    let page = records.get(skip.min(end)..end).unwrap_or_default();
    let origin = origin(req);
    let next_link =
        (end < records.len()).then(|| format!("{origin}{}?$skiptoken={end}", req.path()));
    counters.bump(&counters.detail_records_served, page.len() as u64);
    counters.bump(&counters.pages_served, 1);
    HttpResponse::Ok().json(DetailPage {
        context: format!(
            "{origin}/{version}/$metadata#Collection(microsoft.graph.exchangeMessageTraceDetail)"
        ),
        value: page.iter().map(|d| d.graph_detail()).collect(),
        next_link,
    })
}
