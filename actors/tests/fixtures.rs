//! One test per file of `shared/reference/fixtures/` (response bodies and sample events copied
//! from peer collectors; origins in its README.md), run through `msgtrace_actors::dialect`.
//!
//! `every_fixture_file_is_covered` fails when a file appears in the directory that is not in
//! [`COVERED`], and each entry of [`COVERED`] must be named by a test in this file too, so a new
//! fixture cannot be skipped silently.

#[allow(dead_code)]
mod support;

use chrono::{DateTime, Utc};
use msgtrace_actors::dialect::{error_summary, parse_timestamp, Api, DialectError, Page, Row};
use serde_json::Value;
use url::Url;

/// The fixture directory: the repository is `<root>/main`, the references `<root>/shared`.
const FIXTURES: support::Fixtures = support::Fixtures(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/reference/fixtures"
));

/// Every fixture file, relative to [`FIXTURES`].
const COVERED: &[&str] = &[
    "README.md",
    "elastic/graph_400_invalid_starting_recipient.json",
    "elastic/graph_poisoned_skiptoken_decoded.json",
    "elastic/oauth_token_response.json",
    "elastic/pipeline_test-log.log",
    "elastic/rws_basic_stream_config_v0.yml",
    "elastic/rws_basic_v0_response.json",
    "elastic/rws_nulltrail_page1_top1_skiptoken0.json",
    "elastic/rws_nulltrail_page2_top1_skiptoken1_empty.json",
    "elastic/rws_oauth_stream_config.yml",
    "elastic/rws_page1_top2_skiptoken0.json",
    "elastic/rws_page2_top2_skiptoken2.json",
    "elastic/sample_event.json",
    "elastic/sample_logs_message_trace_test.ndjson.log",
    "elastic/test-cel-config.yml",
    "elastic/test-httpjson-null-trailing-config.yml",
    "msgraph_docs/beta_list_example1_default48h.json",
    "msgraph_docs/beta_list_example2_by_id.json",
    "msgraph_docs/beta_list_example3_time_window.json",
    "msgraph_docs/beta_list_example4_subject_recipient.json",
    "sekoia/rws_401_unauthorized.html",
    "sekoia/rws_403_no_permission.json",
    "sekoia/rws_odata_verbose_d_results.json",
    "xsiam/graph_page1_newest_first_with_nextlink.json",
    "xsiam/graph_page2_last.json",
    "xsiam/graph_sample_events.json",
    "xsiam/rws_message_trace_response.json",
    "xsiam/rws_message_trace_response_with_nextlink.json",
];

const RWS: &str =
    "https://reports.office365.com/ecp/reportingwebservice/reporting.svc/MessageTrace";
const GRAPH: &str = "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces";

fn bytes(rel: &str) -> Vec<u8> {
    FIXTURES.bytes(rel)
}

fn text(rel: &str) -> String {
    FIXTURES.text(rel)
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&bytes(rel)).unwrap_or_else(|e| panic!("fixture {rel} is not JSON: {e}"))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A realistic first-page request URL for the dialect.
fn request(api: Api) -> Url {
    let base = match api {
        Api::Graph => GRAPH,
        Api::Reporting => RWS,
    };
    api.first_page_url(
        &Url::parse(base).unwrap(),
        utc("2022-10-21T00:00:00Z"),
        utc("2022-10-21T23:59:59.9999999Z"),
        api.max_page_size(),
    )
}

fn page(api: Api, body: &[u8]) -> Page {
    let page = api
        .parse_page(body, &request(api))
        .unwrap_or_else(|e| panic!("parse_page failed: {e}"));
    // The fetcher's bounded read of the page (`$top` = its own row count) reads the same page,
    // and one row fewer is refused without the page being built.
    let top = page.rows.len().max(1);
    assert_eq!(
        api.parse_page_of_at_most(body, &request(api), top).as_ref(),
        Ok(&page),
        "the bounded read differs"
    );
    if page.rows.len() > 1 {
        assert_eq!(
            api.parse_page_of_at_most(body, &request(api), top - 1),
            Err(msgtrace_actors::dialect::DialectError::TooManyRows { max: top - 1 })
        );
    }
    // The guess the fetcher starts the next request with agrees with the parse on every page.
    assert_eq!(
        api.peek_next_link(body, &request(api)),
        page.next_link,
        "the next link read off the end of the body differs from the parsed one"
    );
    page
}

fn page_of(api: Api, rel: &str) -> Page {
    page(api, &bytes(rel))
}

fn identities(api: Api, rows: &[Row]) -> Vec<(String, String)> {
    rows.iter()
        .map(|row| api.row_identity(row).expect("row has an identity"))
        .collect()
}

fn id(trace: &str, recipient: &str) -> (String, String) {
    (trace.to_owned(), recipient.to_owned())
}

fn times(api: Api, rows: &[Row]) -> Vec<DateTime<Utc>> {
    rows.iter()
        .map(|row| api.row_time(row).expect("row has a time"))
        .collect()
}

fn field<'a>(row: &'a Row, name: &str) -> &'a Value {
    row.get(name)
        .unwrap_or_else(|| panic!("row has no `{name}`"))
}

/// The `body: |` / `body: |-` block scalars of an elastic/stream mock config, in order.
/// A block is every following line indented deeper than the `body:` key (or blank).
fn yaml_bodies(yaml: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut bodies = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let key = lines[i].trim();
        i += 1;
        if key != "body: |" && key != "body: |-" {
            continue;
        }
        let key_indent = indent(lines[i - 1]);
        let mut block = Vec::new();
        while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > key_indent) {
            block.push(lines[i]);
            i += 1;
        }
        let strip = block
            .iter()
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| indent(l));
        let body: Vec<&str> = block.iter().map(|l| l.get(strip..).unwrap_or("")).collect();
        bodies.push(body.join("\n").trim_end().to_owned());
    }
    bodies
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

// ---------------------------------------------------------------------------------------------
// Coverage

#[test]
fn every_fixture_file_is_covered() {
    let found = FIXTURES.files();
    let uncovered: Vec<&String> = found
        .iter()
        .filter(|f| !COVERED.contains(&f.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "fixture files with no test: {uncovered:?} (add a test and list them in COVERED)"
    );
    let missing: Vec<&&str> = COVERED
        .iter()
        .filter(|f| !found.iter().any(|g| g == *f))
        .collect();
    assert!(
        missing.is_empty(),
        "COVERED lists missing files: {missing:?}"
    );
    // Each listed file must also be named by a test (once in COVERED + at least once more).
    support::assert_each_is_read(COVERED, include_str!("fixtures.rs"));
}

#[test]
fn readme_names_the_fixtures() {
    let readme = text("README.md");
    for f in COVERED.iter().filter(|f| **f != "README.md") {
        let (dir, name) = f.split_once('/').unwrap();
        // The Graph docs examples are described as a group, not by file name.
        if dir == "msgraph_docs" {
            assert!(readme.contains("## msgraph_docs/"));
        } else {
            assert!(readme.contains(name), "README.md does not describe {f}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pages and error bodies, table-driven: what each fixture must parse to.

/// A page fixture: the rows' identities and times in order, fields of some rows (row, name,
/// value as JSON text), and what else is particular to it.
struct PageCase {
    file: &'static str,
    api: Api,
    ids: &'static [(&'static str, &'static str)],
    times: &'static [&'static str],
    fields: &'static [(usize, &'static str, &'static str)],
    also: Option<fn(&Page)>,
}

const PAGES: &[PageCase] = &[
    PageCase {
        file: "elastic/rws_basic_v0_response.json",
        api: Api::Reporting,
        ids: &[(
            "cf7a249a-5edd-4350-130a-08da8f69e0f6",
            "linus@wildsecurity.onmicrosoft.com",
        )],
        times: &["2022-09-05T18:10:13.4907658Z"],
        fields: &[(0, "ToIP", r#""192.168.2.2""#)],
        also: Some(|p| {
            assert_eq!(
                parse_timestamp(field(&p.rows[0], "EndDate").as_str().unwrap()),
                Some(utc("2022-09-06T09:01:46.0369423Z"))
            )
        }),
    },
    PageCase {
        file: "elastic/rws_nulltrail_page1_top1_skiptoken0.json",
        api: Api::Reporting,
        ids: &[("a6f62809-5cda-4454-0962-08dab38940d6", "linus@contoso.com")],
        times: &["2022-10-21T17:25:30.6006882Z"],
        fields: &[(0, "ToIP", "null")],
        also: None,
    },
    // The trailing empty page: no rows, no next link.
    PageCase {
        file: "elastic/rws_nulltrail_page2_top1_skiptoken1_empty.json",
        api: Api::Reporting,
        ids: &[],
        times: &[],
        fields: &[],
        also: Some(|p| assert_eq!(p, &Page::default())),
    },
    PageCase {
        file: "elastic/rws_page1_top2_skiptoken0.json",
        api: Api::Reporting,
        ids: &[
            ("cf7a249a-5edd-4350-130a-08da8f69e0f6", "linus@contoso.com"),
            ("cf7a249a-5edd-4350-130a-08da8f69e0f9", "linus@contoso.com"),
        ],
        times: &[
            "2022-09-05T18:10:13.4907658Z",
            "2022-09-05T18:10:13.4907658Z",
        ],
        fields: &[(1, "Index", "4")],
        // Same MessageId, distinct MessageTraceId: the identity must not use MessageId.
        also: Some(|p| {
            assert_eq!(
                field(&p.rows[0], "MessageId"),
                field(&p.rows[1], "MessageId")
            )
        }),
    },
    PageCase {
        file: "elastic/rws_page2_top2_skiptoken2.json",
        api: Api::Reporting,
        ids: &[("a6f62809-5cda-4454-0962-08dab38940d6", "linus@contoso.com")],
        times: &["2022-10-21T17:25:30.6006882Z"],
        fields: &[
            (0, "ToIP", "null"),
            (
                0,
                "MessageId",
                r#""<GVAP278MB037518E76F4082DFE9B607B3DA2D9@GVAP278MB0375.CHEP278.PROD.OUTLOOK.COM>""#,
            ),
        ],
        also: None,
    },
];

#[test]
fn pages_parse_to_their_rows_identities_and_times() {
    for c in PAGES {
        let p = page_of(c.api, c.file);
        let want: Vec<_> = c.ids.iter().map(|(t, r)| id(t, r)).collect();
        assert_eq!(identities(c.api, &p.rows), want, "{}", c.file);
        let want: Vec<_> = c.times.iter().map(|t| utc(t)).collect();
        assert_eq!(times(c.api, &p.rows), want, "{}", c.file);
        for (row, name, value) in c.fields {
            assert_eq!(
                field(&p.rows[*row], name),
                &parse_json(value),
                "{}: {name}",
                c.file
            );
        }
        assert_eq!(p.next_link, None, "{}", c.file);
        if let Some(also) = c.also {
            also(&p);
        }
    }
}

/// The pass-through reading (`Api::parse_raw_page`) of every page the full parser reads: the
/// same rows (each row's text parses to the full parser's row), identities, times and statuses,
/// and the same next link; or `None` (the page takes the full parser), which only the verbose
/// OData pages (`__metadata`, `d`) may be.
#[test]
fn pages_read_passed_through_are_the_same_rows_or_take_the_full_parser() {
    let mut passed = 0;
    for c in PAGES {
        let body = bytes(c.file);
        let full = page(c.api, &body);
        let Some(raw) = c.api.parse_raw_page(&body, &request(c.api), 5000, &[]) else {
            let text = String::from_utf8_lossy(&body);
            assert!(
                text.contains("__metadata") || text.contains("\"d\""),
                "{}: not passed through",
                c.file
            );
            continue;
        };
        passed += 1;
        assert_eq!(raw.rows.len(), full.rows.len(), "{}", c.file);
        assert_eq!(raw.next_link, full.next_link, "{}", c.file);
        let status = c.api.status_field();
        for (r, f) in raw.rows.iter().zip(&full.rows) {
            let parsed: Row = serde_json::from_str(r.text).expect("a row's text is JSON");
            assert_eq!(&parsed, f, "{}", c.file);
            assert_eq!(r.identity(), c.api.row_identity_ref(f), "{}", c.file);
            assert_eq!(r.time, c.api.row_time(f), "{}", c.file);
            assert_eq!(
                r.status(),
                f.get(status).and_then(Value::as_str),
                "{}",
                c.file
            );
        }
    }
    assert!(
        passed * 2 > PAGES.len(),
        "most fixtures pass through: {passed}"
    );
}

/// An error body: the summary a log line shows, and the error the dialect gives.
struct ErrorCase {
    file: &'static str,
    api: Api,
    summary: &'static str,
    error: fn(&str) -> String,
}

const ERROR_BODIES: &[ErrorCase] = &[
    ErrorCase {
        file: "elastic/graph_400_invalid_starting_recipient.json",
        api: Api::Graph,
        summary: "BadRequest: |System.ArgumentException|Invalid starting recipient address",
        error: |s| format!("response is an error body, not a page: {s}"),
    },
    // An HTML page: not JSON, and the message shows its start.
    ErrorCase {
        file: "sekoia/rws_401_unauthorized.html",
        api: Api::Reporting,
        summary: "401 - Unauthorized: Access is denied due to invalid credentials.",
        error: |s| {
            format!("response is not JSON (expected value at line 1 column 1); body starts: {s}")
        },
    },
    ErrorCase {
        file: "sekoia/rws_403_no_permission.json",
        api: Api::Reporting,
        summary: "No permission to access the report for the organization .",
        error: |s| {
            DialectError::ErrorBody {
                summary: s.to_owned(),
            }
            .to_string()
        },
    },
];

#[test]
fn error_bodies_are_errors_with_their_summary() {
    for c in ERROR_BODIES {
        let body = bytes(c.file);
        assert_eq!(error_summary(&body), c.summary, "{}", c.file);
        let err = c.api.parse_page(&body, &request(c.api)).unwrap_err();
        assert_eq!(err.to_string(), (c.error)(c.summary), "{}", c.file);
    }
    let html = bytes("sekoia/rws_401_unauthorized.html");
    assert!(matches!(
        Api::Reporting.parse_page(&html, &request(Api::Reporting)),
        Err(DialectError::NotJson { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// elastic/

/// A poisoned Graph `$skiptoken` (elastic/integrations#18134), base64-decoded: the window and the
/// starting recipient are JSON-encoded twice (`"\"2026-…Z\""`), and Graph answers 400 to it for
/// ever. A collector must not store such a link as its cursor without bounding the retries.
#[test]
fn elastic_graph_poisoned_skiptoken_decoded() {
    let v = json("elastic/graph_poisoned_skiptoken_decoded.json");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 4);
    for key in ["StartDate", "EndDate", "StartingRecipientAddress"] {
        let raw = obj[key].as_str().unwrap();
        let inner: String = serde_json::from_str(raw)
            .unwrap_or_else(|e| panic!("{key} is not double-encoded: {e}"));
        assert!(!inner.starts_with('"'), "{key}: {inner}");
    }
    let start: String = serde_json::from_str(obj["StartDate"].as_str().unwrap()).unwrap();
    assert_eq!(
        parse_timestamp(&start),
        Some(utc("2026-03-26T15:43:20.2718704Z"))
    );
    assert_eq!(obj["ResultSize"], "1000");
}

/// Token parsing belongs to the auth module; here only the shape.
#[test]
fn elastic_oauth_token_response() {
    let v = json("elastic/oauth_token_response.json");
    assert!(!v["access_token"].as_str().unwrap().is_empty());
    assert_eq!(v["expires_in"].as_u64(), Some(3600));
    assert_eq!(v["token_type"], "Bearer");
}

#[test]
fn elastic_pipeline_test_log() {
    let content = text("elastic/pipeline_test-log.log");
    assert!(!content.ends_with('\n'));
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 5);
    let rows: Vec<Row> = lines[..4]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let api = Api::Reporting;
    assert_eq!(
        identities(api, &rows),
        vec![
            id("cf7a249a-5edd-4350-130a-08da8f69e0f6", "linus@contoso.com"),
            id("a6f62809-5cda-4454-0962-08dab38940d6", "linus@contoso.com"),
            id("a5e6dc0f-23df-4b20-d240-08dab38944a1", "linus@contoso.com"),
            id("a5e6dc0f-23df-4b20-d240-08dab38944a1", "linus@contoso.com"),
        ]
    );
    assert_eq!(
        times(api, &rows),
        vec![
            utc("2022-09-05T18:10:13.4907658Z"), // no zone in the source: UTC
            utc("2022-10-21T17:25:30.6006882Z"),
            utc("2022-10-21T17:25:36.969376Z"),
            utc("2022-10-21T17:25:36.969376Z"),
        ]
    );
    assert_eq!(field(&rows[0], "ToIP"), "216.160.83.56");
    for row in &rows[1..] {
        assert_eq!(field(row, "ToIP"), &Value::Null);
    }
    // Same identity, different sender: the later row is an update of the same record.
    assert_ne!(
        field(&rows[2], "SenderAddress"),
        field(&rows[3], "SenderAddress")
    );
    // The last line is an empty envelope: a page with no rows and no next link.
    assert_eq!(page(api, lines[4].as_bytes()), Page::default());
}

#[test]
fn elastic_rws_basic_stream_config_v0() {
    let yaml = text("elastic/rws_basic_stream_config_v0.yml");
    assert!(yaml.contains("Basic c29tZV91c2VybmFtZTpzb21lX3Bhc3N3b3Jk"));
    let bodies = yaml_bodies(&yaml);
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        parse_json(&bodies[0]),
        json("elastic/rws_basic_v0_response.json")
    );
    let p = page(Api::Reporting, bodies[0].as_bytes());
    assert_eq!(
        identities(Api::Reporting, &p.rows),
        vec![id(
            "cf7a249a-5edd-4350-130a-08da8f69e0f6",
            "linus@wildsecurity.onmicrosoft.com"
        )]
    );
    assert_eq!(p.next_link, None);
}

#[test]
fn elastic_rws_oauth_stream_config() {
    let bodies = yaml_bodies(&text("elastic/rws_oauth_stream_config.yml"));
    assert_eq!(bodies.len(), 5, "token + 4 RWS pages");
    // Each extracted fixture is exactly one of the mock's bodies.
    let extracts = [
        "elastic/oauth_token_response.json",
        "elastic/rws_page1_top2_skiptoken0.json",
        "elastic/rws_page2_top2_skiptoken2.json",
        "elastic/rws_nulltrail_page1_top1_skiptoken0.json",
        "elastic/rws_nulltrail_page2_top1_skiptoken1_empty.json",
    ];
    for (body, extract) in bodies.iter().zip(extracts) {
        assert_eq!(parse_json(body), json(extract), "{extract}");
    }
    let counts: Vec<usize> = bodies[1..]
        .iter()
        .map(|b| page(Api::Reporting, b.as_bytes()).rows.len())
        .collect();
    assert_eq!(counts, vec![2, 1, 1, 0]);
}

/// Elastic's ECS output document: the original row survives under
/// `microsoft.online_message_trace` (without `ToIP`, which was null) and in `event.original`.
#[test]
fn elastic_sample_event() {
    let v = json("elastic/sample_event.json");
    let api = Api::Reporting;
    let row: Row = serde_json::from_value(v["microsoft"]["online_message_trace"].clone()).unwrap();
    let original: Row = serde_json::from_str(v["event"]["original"].as_str().unwrap()).unwrap();
    for row in [&row, &original] {
        assert_eq!(
            api.row_identity(row),
            Some(id(
                "a5e6dc0f-23df-4b20-d240-08dab38944a1",
                "linus@contoso.com"
            ))
        );
        assert_eq!(api.row_time(row), Some(utc("2022-10-21T17:25:36.969376Z")));
    }
    assert!(!row.contains_key("ToIP"));
    assert_eq!(field(&original, "ToIP"), &Value::Null);
    // @timestamp is the received time cut to milliseconds.
    assert_eq!(
        parse_timestamp(v["@timestamp"].as_str().unwrap()),
        Some(utc("2022-10-21T17:25:36.969Z"))
    );
}

#[test]
fn elastic_sample_logs_message_trace_test_ndjson() {
    let content = text("elastic/sample_logs_message_trace_test.ndjson.log");
    let rows: Vec<Row> = content
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let api = Api::Reporting;
    assert_eq!(
        identities(api, &rows),
        vec![
            id("a5e6dc0f-23df-4b20-d240-08dab38944a1", "linus@contoso.com"),
            id("a6f62809-5cda-4454-0962-08dab38940d6", "linus@contoso.com"),
        ]
    );
    assert_eq!(
        times(api, &rows),
        vec![
            utc("2022-10-21T17:25:36.969376Z"),
            utc("2022-10-21T17:25:30.6006882Z"),
        ]
    );
}

/// Elastic's Graph system test: batch 4, initial window 48 h, 7 hits expected. The `graph-api`
/// mock it points to is not stored, so there is no body to parse; this pins what it asserts.
#[test]
fn elastic_test_cel_config() {
    let yaml = text("elastic/test-cel-config.yml");
    assert!(yaml_bodies(&yaml).is_empty());
    for line in [
        "service: graph-api",
        "batch_size: 4",
        "initial_interval: 48h",
        "hit_count: 7",
    ] {
        assert!(yaml.contains(line), "{line}");
    }
}

/// Elastic's null-trailing system test: with `$top=1` the mock serves one row and then an empty
/// page, and exactly one hit is expected; replay those two pages of the mock.
#[test]
fn elastic_test_httpjson_null_trailing_config() {
    let yaml = text("elastic/test-httpjson-null-trailing-config.yml");
    assert!(yaml_bodies(&yaml).is_empty());
    assert!(yaml.contains("batch_size: 1"));
    assert!(yaml.contains("hit_count: 1"));
    assert!(yaml.contains("/ecp/reportingwebservice/reporting.svc/MessageTrace"));
    let mock = yaml_bodies(&text("elastic/rws_oauth_stream_config.yml"));
    let hits: usize = mock[3..]
        .iter()
        .map(|b| page(Api::Reporting, b.as_bytes()).rows.len())
        .sum();
    assert_eq!(hits, 1);
}

// ---------------------------------------------------------------------------------------------
// msgraph_docs/

/// One row of a Graph docs example: (id, recipient, received, status, size).
fn graph_docs_example(rel: &str) -> (String, String, DateTime<Utc>, String, i64, Row) {
    let api = Api::Graph;
    let p = page_of(api, rel);
    assert_eq!(p.rows.len(), 1, "{rel}");
    assert_eq!(p.next_link, None, "{rel}");
    let row = p.rows.into_iter().next().unwrap();
    let (id, recipient) = api.row_identity(&row).unwrap();
    assert_eq!(field(&row, "toIP"), "", "{rel}: inbound has an empty toIP");
    (
        id,
        recipient,
        api.row_time(&row).unwrap(),
        field(&row, "status").as_str().unwrap().to_owned(),
        field(&row, "size").as_i64().unwrap(),
        row,
    )
}

#[test]
fn msgraph_docs_example1_default48h() {
    let (id, rcpt, time, status, size, row) =
        graph_docs_example("msgraph_docs/beta_list_example1_default48h.json");
    assert_eq!(id, "4451a062-48cb-e80d-e8c0-196330437ae6");
    assert_eq!(rcpt, "recipient@contoso.com");
    assert_eq!(time, utc("2025-06-13T10:30:00Z"));
    assert_eq!(
        status, "Delivered",
        "capitalised here, lowercase in the other examples"
    );
    assert_eq!(size, 45678);
    // Only `__metadata` is envelope; the per-row `@odata.type` is kept as data.
    assert_eq!(
        field(&row, "@odata.type"),
        "#microsoft.graph.exchangeMessageTrace"
    );
}

#[test]
fn msgraph_docs_example2_by_id() {
    let (id, rcpt, time, status, size, _) =
        graph_docs_example("msgraph_docs/beta_list_example2_by_id.json");
    assert_eq!(id, "a3f6d2c1-5c3b-4f7a-9d1e-2c8f1b0a6e45");
    assert_eq!(rcpt, "recipient@contoso.com");
    assert_eq!(time, utc("2026-01-18T10:30:00Z"));
    assert_eq!(status, "delivered");
    assert_eq!(size, 45678);
}

#[test]
fn msgraph_docs_example3_time_window() {
    let (id, rcpt, time, status, size, _) =
        graph_docs_example("msgraph_docs/beta_list_example3_time_window.json");
    assert_eq!(id, "b7c1f4d2-9a6e-4c3b-8f2d-1e0a6c5b4d3f");
    assert_eq!(rcpt, "recipient@contoso.com");
    assert_eq!(time, utc("2026-01-21T14:12:34Z"));
    assert_eq!(status, "delivered");
    assert_eq!(size, 51234);
}

#[test]
fn msgraph_docs_example4_subject_recipient() {
    let (id, rcpt, time, status, size, row) =
        graph_docs_example("msgraph_docs/beta_list_example4_subject_recipient.json");
    assert_eq!(id, "c1d2e3f4-5678-49ab-9cde-0123456789ab");
    assert_eq!(rcpt, "test@contoso.com");
    assert_eq!(time, utc("2026-01-22T09:15:00Z"));
    assert_eq!(status, "delivered");
    assert_eq!(size, 28765);
    assert_eq!(
        field(&row, "subject"),
        "Weekly digest: updates for your team"
    );
}

// ---------------------------------------------------------------------------------------------
// sekoia/

/// OData verbose: `d.results`, a `__metadata` object per row, and dates as `\/Date(ms)\/` with
/// literal backslashes (the Python fixture's `"\\/Date(…)\\/"`).
#[test]
fn sekoia_rws_odata_verbose_d_results() {
    let api = Api::Reporting;
    let p = page_of(api, "sekoia/rws_odata_verbose_d_results.json");
    assert_eq!(p.next_link, None);
    assert_eq!(
        identities(api, &p.rows),
        vec![
            id(
                "3b4fc661-180d-4c2f-60c9-08da6e38dd10",
                "foo.bar@own.security"
            ),
            id(
                "47a1a53c-7e88-431e-7154-08da6e38dce4",
                "azure-noreply@microsoft.com"
            ),
        ]
    );
    assert_eq!(field(&p.rows[0], "Received"), r"\/Date(1658751973240)\/");
    assert_eq!(
        times(api, &p.rows),
        vec![
            utc("2022-07-25T12:26:13.240Z"),
            utc("2022-07-25T12:26:12.952Z")
        ]
    );
    for row in &p.rows {
        assert!(!row.contains_key("__metadata"), "envelope dropped");
        assert_eq!(field(row, "ToIP"), &Value::Null);
        assert_eq!(
            parse_timestamp(field(row, "StartDate").as_str().unwrap()),
            Some(utc("2022-07-23T12:28:17.628Z"))
        );
        assert_eq!(
            parse_timestamp(field(row, "EndDate").as_str().unwrap()),
            Some(utc("2022-07-25T12:28:17.628Z"))
        );
    }
    assert_eq!(field(&p.rows[0], "Status"), "GettingStatus");
    assert_eq!(field(&p.rows[1], "Status"), "Failed");
    assert_eq!(field(&p.rows[1], "FromIP"), &Value::Null);
    assert_eq!(p.rows[0].len(), 14);
}

// ---------------------------------------------------------------------------------------------
// xsiam/

#[test]
fn xsiam_graph_page1_newest_first_with_nextlink() {
    let api = Api::Graph;
    let p = page_of(api, "xsiam/graph_page1_newest_first_with_nextlink.json");
    let ids: Vec<&Value> = p.rows.iter().map(|r| field(r, "id")).collect();
    assert_eq!(ids, ["evt-3", "evt-2"]);
    // This test double has no recipientAddress, hence no identity.
    assert!(p.rows.iter().all(|r| api.row_identity(r).is_none()));
    assert_eq!(
        times(api, &p.rows),
        vec![utc("2025-01-01T10:03:00Z"), utc("2025-01-01T10:02:00Z")]
    );
    assert_eq!(
        p.next_link.map(String::from).as_deref(),
        Some("https://graph.microsoft.com/next")
    );
}

#[test]
fn xsiam_graph_page2_last() {
    let api = Api::Graph;
    let first = page_of(api, "xsiam/graph_page1_newest_first_with_nextlink.json");
    let last = page_of(api, "xsiam/graph_page2_last.json");
    let ids: Vec<&Value> = last.rows.iter().map(|r| field(r, "id")).collect();
    assert_eq!(ids, ["evt-1", "evt-0"]);
    assert_eq!(last.next_link, None);
    let t_last = times(api, &last.rows);
    assert_eq!(
        t_last,
        vec![utc("2025-01-01T10:01:00Z"), utc("2025-01-01T10:00:00Z")]
    );
    // Newest first across pages: every row of page 2 is older than every row of page 1.
    let oldest_first_page = times(api, &first.rows).into_iter().min().unwrap();
    assert!(t_last.iter().all(|t| *t < oldest_first_page));
}

/// A bare array of Graph rows (a collector's event list, not a response body).
#[test]
fn xsiam_graph_sample_events() {
    let body = bytes("xsiam/graph_sample_events.json");
    let err = Api::Graph
        .parse_page(&body, &request(Api::Graph))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "response JSON is an array, expected an object with a `value` array"
    );
    let rows: Vec<Row> = serde_json::from_slice(&body).unwrap();
    let api = Api::Graph;
    assert_eq!(
        identities(api, &rows),
        vec![
            id("evt-1", "bob@contoso.com"),
            id("evt-2", "dave@contoso.com")
        ]
    );
    assert_eq!(
        times(api, &rows),
        vec![utc("2025-01-01T10:00:00Z"), utc("2025-01-01T10:01:00Z")]
    );
    assert_eq!(field(&rows[0], "status"), "Delivered");
    assert_eq!(field(&rows[1], "status"), "Pending");
}

#[test]
fn xsiam_rws_message_trace_response() {
    let api = Api::Reporting;
    let p = page_of(api, "xsiam/rws_message_trace_response.json");
    assert_eq!(
        identities(api, &p.rows),
        vec![
            id("123456-78901-abcdef", "recipient@example.com"),
            id("123456-78902-abcdef", "recipient2@example.com"),
        ]
    );
    assert_eq!(
        times(api, &p.rows),
        vec![utc("2023-07-01T12:00:00Z"), utc("2023-07-01T11:00:00Z")]
    );
    assert_eq!(field(&p.rows[0], "Status"), "Delivered");
    assert_eq!(field(&p.rows[1], "Status"), "Failed");
    assert_eq!(p.next_link, None);
}

/// The relative `odata.nextLink` `/MessageTrace?$skiptoken=10` is an absolute-path reference:
/// per RFC 3986 it replaces the whole path of the request URL.
#[test]
fn xsiam_rws_message_trace_response_with_nextlink() {
    let api = Api::Reporting;
    let body = bytes("xsiam/rws_message_trace_response_with_nextlink.json");
    let p = page(api, &body);
    assert_eq!(
        identities(api, &p.rows),
        vec![id("123456-78901-abcdef", "recipient@example.com")]
    );
    assert_eq!(times(api, &p.rows), vec![utc("2023-07-01T12:00:00Z")]);
    assert_eq!(
        p.next_link.map(String::from).as_deref(),
        Some("https://reports.office365.com/MessageTrace?$skiptoken=10")
    );
    let proxy = Url::parse("http://127.0.0.1:8080/tenant/x/MessageTrace?$top=1").unwrap();
    let p = api.parse_page(&body, &proxy).unwrap();
    assert_eq!(
        p.next_link.map(String::from).as_deref(),
        Some("http://127.0.0.1:8080/MessageTrace?$skiptoken=10")
    );
}
