//! One test per file of `actors/tests/fixtures/` (Microsoft's sample responses of the detail
//! request, origins in its README.md), run through `msgtrace_actors::dialect::details`.
//!
//! As in `fixtures.rs`: `every_fixture_file_is_covered` fails when a file appears in the
//! directory that is not in [`COVERED`], and each entry of [`COVERED`] must be named by a test.

#[allow(dead_code)]
mod support;

use msgtrace_actors::dialect::details::{detail_event, details_url, parse_details, DetailIdentity};
use msgtrace_actors::dialect::Page;
use url::Url;

const FIXTURES: support::Fixtures =
    support::Fixtures(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));

/// Every fixture file, relative to [`FIXTURES`].
const COVERED: &[&str] = &[
    "README.md",
    "msgraph_docs/beta_getdetailsbyrecipient_example.json",
    "msgraph_docs/v1_getdetailsbyrecipient_example.json",
];

const GRAPH: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";
const TRACE: &str = "7e3b2b2e-1b5e-4b17-80cc-2af6c1d9a3b1";
const RECIPIENT: &str = "robert@contoso.com";

/// The request the documentation shows, as the fetcher builds it.
fn request() -> Url {
    details_url(&Url::parse(GRAPH).unwrap(), TRACE, RECIPIENT).unwrap()
}

fn page_of(rel: &str) -> Page {
    parse_details(&FIXTURES.bytes(rel), &request()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What both examples hold: Receive then Deliver, five seconds apart, both with the trace's id.
fn check_sample(page: &Page) {
    assert_eq!(page.next_link, None);
    let now = chrono::Utc::now();
    let events: Vec<_> = page
        .rows
        .iter()
        .map(|r| detail_event(r.clone(), RECIPIENT, now))
        .collect();
    let ids: Vec<DetailIdentity> = events
        .iter()
        .map(|e| e.identity.clone().expect("identified"))
        .collect();
    assert_eq!(
        ids.iter().map(|i| i.event.as_str()).collect::<Vec<_>>(),
        ["Receive", "Deliver"]
    );
    assert!(ids
        .iter()
        .all(|i| i.id == TRACE && i.recipient == RECIPIENT));
    assert_eq!(
        ids[0].id, ids[1].id,
        "the trace's id does not tell records apart"
    );
    assert_ne!(ids[0], ids[1], "the identity does");
    assert_eq!(
        (ids[1].date_time - ids[0].date_time).num_seconds(),
        5,
        "{ids:?}"
    );
    for e in &events {
        assert_eq!(e.fields["recipientAddress"], RECIPIENT);
        assert_eq!(e.fields["_detail"], true);
        assert_eq!(e.fields["action"], "");
        assert!(e.fields["data"].as_str().unwrap().starts_with("<root>"));
    }
    assert_eq!(events[0].fields["_time"], 1_749_810_605.0);
}

#[test]
fn every_fixture_file_is_covered() {
    assert_eq!(
        FIXTURES.files(),
        COVERED,
        "list every fixture in COVERED, with a test"
    );
    support::assert_each_is_read(COVERED, include_str!("detail_fixtures.rs"));
    let readme = FIXTURES.text("README.md");
    for f in COVERED.iter().filter(|f| **f != "README.md") {
        let name = f.rsplit('/').next().unwrap();
        assert!(readme.contains(name), "README.md does not describe {f}");
    }
}

#[test]
fn msgraph_docs_v1_getdetailsbyrecipient_example() {
    let page = page_of("msgraph_docs/v1_getdetailsbyrecipient_example.json");
    check_sample(&page);
    assert!(page.rows.iter().all(|r| !r.contains_key("@odata.type")));
}

#[test]
fn msgraph_docs_beta_getdetailsbyrecipient_example() {
    let page = page_of("msgraph_docs/beta_getdetailsbyrecipient_example.json");
    check_sample(&page);
    // The annotation is kept as a field of the record, as the API sent it.
    assert_eq!(
        page.rows[0]["@odata.type"],
        "#microsoft.graph.exchangeMessageTraceDetail"
    );
}

#[test]
fn the_documented_request_is_the_one_built() {
    assert_eq!(
        request().as_str(),
        format!("{GRAPH}/{TRACE}/getDetailsByRecipient(recipientAddress='{RECIPIENT}')")
    );
}
