//! One test per file of `actors/tests/fixtures/` (Microsoft's sample responses of the detail
//! request, origins in its README.md), run through `msgtrace_actors::dialect::details`.
//!
//! As in `fixtures.rs`: `every_fixture_file_is_covered` fails when a file appears in the
//! directory that is not in [`COVERED`], and each entry of [`COVERED`] must be named by a test.

use std::path::{Path, PathBuf};

use msgtrace_actors::dialect::details::{detail_event, details_url, parse_details, DetailIdentity};
use msgtrace_actors::dialect::Page;
use url::Url;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Every fixture file, relative to [`FIXTURES`].
const COVERED: &[&str] = &[
    "README.md",
    "msgraph_docs/beta_getdetailsbyrecipient_example.json",
    "msgraph_docs/v1_getdetailsbyrecipient_example.json",
];

const GRAPH: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";
const TRACE: &str = "7e3b2b2e-1b5e-4b17-80cc-2af6c1d9a3b1";
const RECIPIENT: &str = "robert@contoso.com";

fn path(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(path(rel)).unwrap_or_else(|e| panic!("reading fixture {rel}: {e}"))
}

/// The request the documentation shows, as the fetcher builds it.
fn request() -> Url {
    details_url(&Url::parse(GRAPH).unwrap(), TRACE, RECIPIENT).unwrap()
}

fn page_of(rel: &str) -> Page {
    parse_details(&bytes(rel), &request()).unwrap_or_else(|e| panic!("{rel}: {e}"))
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
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                let rel = p.strip_prefix(FIXTURES).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new(FIXTURES), &mut found);
    found.sort();
    assert_eq!(found, COVERED, "list every fixture in COVERED, with a test");
    let source = include_str!("detail_fixtures.rs");
    let readme = String::from_utf8(bytes("README.md")).unwrap();
    for f in COVERED.iter().filter(|f| **f != "README.md") {
        assert!(
            source.matches(&format!("\"{f}\"")).count() >= 2,
            "{f} is listed in COVERED but no test reads it"
        );
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
