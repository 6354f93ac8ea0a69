//! The configuration contract (shared/design/interface.md): the documented example is valid, the
//! defaults are the documented ones, and broken files report every error with its key path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use msgtrace::config::{
    self, Api, AssertionAlg, AuthConfig, Compression, ConfigErrors, HttpFormat, LogFormat,
    LogLevel, Plan, Quota, RetryKind, Schedule, SinkKind, TokenEndpoint,
};

fn config_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(config_path(name)).unwrap()
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "MSGTRACE_TEST_SECRET" => Some("s3cr3t-value".to_owned()),
        _ => None,
    }
}

/// Loads a file from tests/configs with the test environment; the configuration must be invalid.
fn errors_of(name: &str) -> ConfigErrors {
    match config::from_str_with_env(&read(name), &test_env) {
        Ok(_) => panic!("{name} should be rejected"),
        Err(errors) => errors,
    }
}

fn paths(errors: &ConfigErrors) -> Vec<&str> {
    errors.errors.iter().map(|e| e.path.as_str()).collect()
}

/// The one error of a file that has exactly one mistake.
fn single_error(name: &str) -> (String, String) {
    let errors = errors_of(name);
    assert_eq!(
        errors.errors.len(),
        1,
        "{name}: expected one error, got:\n{errors}"
    );
    (
        errors.errors[0].path.clone(),
        errors.errors[0].message.clone(),
    )
}

#[test]
fn interface_example_is_valid_with_its_variables_set() {
    // The documented example names these variables; `load` reads the real environment.
    std::env::set_var("O365_CLIENT_SECRET", "example-client-secret");
    std::env::set_var("CERT_DIR", "/etc/msgtrace/certs");
    std::env::set_var("KEY_PASS", "example-passphrase");
    let config =
        config::load(&config_path("interface_example.toml")).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.state_dir, PathBuf::from("/var/lib/msgtrace"));
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.metrics_listen, None);

    let source = &config.sources["contoso"];
    assert_eq!(source.description.as_deref(), Some("Contoso mail flow"));
    assert_eq!(source.api, Api::Graph);
    assert_eq!(source.url.as_str(), config::GRAPH_URL);
    assert_eq!(source.schedule, Schedule::Interval { mins: 15 });
    assert_eq!(
        source.quota,
        Some(Quota {
            requests: 100,
            per: Duration::from_secs(300)
        })
    );
    assert_eq!(source.tags, ["mail", "prod"]);
    assert_eq!(source.fields["env"], serde_json::json!("prod"));
    assert_eq!(source.log_level, Some(LogLevel::Info));
    assert_eq!(source.job_timeout, None);
    match &source.auth {
        AuthConfig::OAuth { app, client_secret } => {
            assert_eq!(app.tenant_id, "…");
            assert_eq!(client_secret.expose(), "example-client-secret");
            assert_eq!(app.resource, "https://graph.microsoft.com");
        }
        other => panic!("expected oauth, got {other:?}"),
    }
    assert_eq!(source.retry.codes, [429, 503]);

    let cert = &config.certificates["contoso-cert"];
    assert_eq!(cert.cert_path, PathBuf::from("/etc/msgtrace/certs/app.pem"));
    assert_eq!(
        cert.passphrase.as_ref().map(|p| p.expose()),
        Some("example-passphrase")
    );

    assert!(
        matches!(&config.sinks["out"].kind, SinkKind::File { path, .. } if path == Path::new("/var/log/msgtrace/events.ndjson"))
    );
    let SinkKind::Http(siem) = &config.sinks["siem"].kind else {
        panic!("siem should be http")
    };
    assert_eq!(siem.format, HttpFormat::SplunkHec);
    assert_eq!(
        siem.url.as_str(),
        "https://splunk.example.com:8088/services/collector/event"
    );
    assert_eq!(config.sinks["siem"].inputs, ["contoso"]);

    // Allowed but worth saying: the certificate is unused, HEC has no token.
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("certificates.contoso-cert: ")),
        "{:?}",
        config.warnings
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("sinks.siem.token: ")),
        "{:?}",
        config.warnings
    );

    // Secrets never show in Debug output.
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("example-client-secret") && !debug.contains("example-passphrase"),
        "{debug}"
    );
}

#[test]
fn minimal_config_gets_every_default() {
    let config = config::from_str_with_env(&read("minimal.toml"), &test_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.state_dir, PathBuf::from("./msgtrace-state"));
    assert_eq!(config.log_level, LogLevel::Info);
    assert_eq!(config.log_format, LogFormat::Text);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let s = &config.sources["contoso"];
    assert_eq!(s.id, "contoso");
    assert_eq!(s.api, Api::Graph);
    assert_eq!(s.plan, Plan::Enterprise);
    assert_eq!(
        s.url.as_str(),
        "https://graph.microsoft.com/v1.0/admin/exchange/tracing/messageTraces"
    );
    assert_eq!(s.poll_interval_mins(), Some(15));
    assert_eq!(s.start.as_str(), "-3h@h");
    assert_eq!(s.end.as_str(), "-2h@h");
    assert_eq!(s.page_size, 1000);
    assert_eq!(s.reread, Duration::ZERO);
    assert_eq!(
        s.quota,
        Some(Quota {
            requests: 100,
            per: Duration::from_secs(300)
        })
    );
    assert!(s.tags.is_empty() && s.fields.is_empty() && s.local_domains.is_empty());
    assert!(!s.disable_time_filter);
    assert_eq!(s.details, msgtrace::config::DetailsMode::None);
    assert_eq!(s.normalize, None);
    assert_eq!(s.log_level, None);
    assert_eq!(s.request_timeout, Some(Duration::from_secs(300)));
    assert_eq!(s.job_timeout, None);
    assert!(s.reschedule_tasks);
    assert_eq!(s.task_reschedule_limit, 1);
    assert_eq!(s.ttl, Duration::from_secs(4 * 3600));
    assert!(s.proxy_url.is_none());

    let AuthConfig::OAuth { app, client_secret } = &s.auth else {
        panic!("expected oauth")
    };
    assert_eq!(client_secret.expose(), "s3cr3t-value");
    assert_eq!(format!("{client_secret:?} {client_secret}"), "*** ***");
    assert_eq!(app.login_url.as_str(), "https://login.microsoftonline.com/");
    assert_eq!(app.resource, "https://graph.microsoft.com");
    assert_eq!(app.token_endpoint, TokenEndpoint::V2);
    assert_eq!(
        app.token_url(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );

    let r = &s.retry;
    assert_eq!(r.kind, RetryKind::Backoff);
    assert_eq!(r.initial, Duration::from_millis(1000));
    assert_eq!(r.limit, 5);
    assert_eq!(r.multiplier, 2.0);
    assert_eq!(r.codes, [429, 503]);
    assert!(r.honor_retry_after && r.retry_connect_timeout && r.retry_connect_reset);

    assert!(matches!(config.sinks["out"].kind, SinkKind::Stdout));
}

#[test]
fn reporting_on_gcc_high_uses_the_us_hosts_and_no_quota() {
    let text = read("minimal.toml").replace(
        "[sources.contoso.auth]",
        "[sources.contoso]\napi = \"reporting\"\nplan = \"gcc_high\"\n\n[sources.contoso.auth]",
    );
    let config = config::from_str_with_env(&text, &test_env).unwrap_or_else(|e| panic!("{e}"));
    let s = &config.sources["contoso"];
    assert_eq!(s.url.as_str(), config::RWS_URL_US);
    assert_eq!(s.quota, None);
    let app = s.auth.oauth().unwrap();
    assert_eq!(app.login_url.as_str(), "https://login.microsoftonline.us/");
    assert_eq!(app.resource, "https://outlook.office365.us");
}

#[test]
fn oauth_cert_with_a_named_certificate_and_cron_schedule() {
    let text = r#"
        [sources.a]
        schedule = "*/15 * * * 1-5"
        start = 1720536960
        end = "now"
        [sources.a.auth]
        method = "oauth_cert"
        tenant_id = "t"
        client_id = "c"
        certificate = "app"
        assertion_alg = "RS256"
        token_endpoint = "v1"
        [sources.a.retry]
        type = "static"
        multiplier = 1
        [certificates.app]
        cert_path = "$CERTS/app.pem"
        key_path = "${CERTS}/app.key"
        [sinks.http]
        type = "http"
        inputs = ["a"]
        url = "http://127.0.0.1:8088/collector"
        format = "ndjson"
        compression = "gzip"
        headers = { "X-Team" = "secops" }
        batch = { max_rows = 10, timeout_secs = 2 }
    "#;
    let env = |n: &str| (n == "CERTS").then(|| "/certs".to_owned());
    let config = config::from_str_with_env(text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.warnings.is_empty(),
        "loopback http is not worth a warning: {:?}",
        config.warnings
    );
    let s = &config.sources["a"];
    assert_eq!(
        s.schedule,
        Schedule::Cron {
            written: "*/15 * * * 1-5".into(),
            expr: "0 */15 * * * Mon-Fri".into()
        }
    );
    assert_eq!(s.retry.kind, RetryKind::Static);
    let AuthConfig::OAuthCert {
        app,
        certificate,
        certificate_name,
        assertion_alg,
    } = &s.auth
    else {
        panic!("expected oauth_cert")
    };
    assert_eq!(
        app.token_url(),
        "https://login.microsoftonline.com/t/oauth2/token"
    );
    assert_eq!(certificate.cert_path, PathBuf::from("/certs/app.pem"));
    assert_eq!(certificate.key_path, PathBuf::from("/certs/app.key"));
    assert_eq!(certificate_name.as_deref(), Some("app"));
    assert_eq!(*assertion_alg, AssertionAlg::Rs256);
    let SinkKind::Http(http) = &config.sinks["http"].kind else {
        panic!("http sink")
    };
    assert_eq!(http.compression, Compression::Gzip);
    assert_eq!(http.batch.max_rows, 10);
    assert_eq!(http.batch.max_bytes, 4_000_000);
    assert_eq!(http.batch.timeout, Duration::from_secs(2));
    assert_eq!(http.headers["X-Team"].expose(), "secops");
}

#[test]
fn unknown_top_level_key() {
    let (path, message) = single_error("unknown_top_key.toml");
    assert_eq!(path, "colour");
    assert!(
        message.contains("unknown key `colour`")
            && message.contains("accepted keys: state_dir, log_level"),
        "{message}"
    );
}

#[test]
fn unknown_source_key_suggests_the_right_one() {
    let (path, message) = single_error("unknown_source_key.toml");
    assert_eq!(path, "sources.contoso.poll_intervall_mins");
    assert!(
        message.contains("did you mean `poll_interval_mins`?"),
        "{message}"
    );
    assert!(
        message.contains("proxy_url"),
        "the accepted keys are listed: {message}"
    );
}

#[test]
fn unknown_auth_key() {
    let (path, message) = single_error("unknown_auth_key.toml");
    assert_eq!(path, "sources.contoso.auth.client_secert");
    assert!(
        message.contains("did you mean `client_secret`?"),
        "{message}"
    );
}

#[test]
fn interval_that_does_not_divide_an_hour() {
    let (path, message) = single_error("bad_interval.toml");
    assert_eq!(path, "sources.contoso.poll_interval_mins");
    assert!(
        message.contains("45 does not divide 60")
            && message.contains("1 2 3 4 5 6 10 12 15 20 30 60"),
        "{message}"
    );
}

#[test]
fn bad_time_expression() {
    let (path, message) = single_error("bad_time.toml");
    assert_eq!(path, "sources.contoso.start");
    assert!(message.contains("-3x"), "{message}");
}

#[test]
fn missing_auth_field() {
    let (path, message) = single_error("missing_auth_field.toml");
    assert_eq!(path, "sources.contoso.auth.client_id");
    assert!(message.contains("required"), "{message}");
}

#[test]
fn sink_input_that_names_no_source() {
    let (path, message) = single_error("unknown_sink_input.toml");
    assert_eq!(path, "sinks.out.inputs[1]");
    assert!(
        message.contains("`fabrikam`") && message.contains("known sources: contoso"),
        "{message}"
    );
}

#[test]
fn retry_limit_above_twenty() {
    let (path, message) = single_error("retry_limit.toml");
    assert_eq!(path, "sources.contoso.retry.limit");
    assert!(
        message.contains("25") && message.contains("0 to 20"),
        "{message}"
    );
}

#[test]
fn retry_initial_interval_above_twenty_seconds() {
    let (path, message) = single_error("retry_interval.toml");
    assert_eq!(path, "sources.contoso.retry.initial_interval_ms");
    assert!(
        message.contains("30000") && message.contains("20000"),
        "{message}"
    );
}

#[test]
fn graph_on_gcc_high_is_explained() {
    let (path, message) = single_error("graph_gcc_high.toml");
    assert_eq!(path, "sources.contoso.api");
    assert!(
        message.contains("no Graph message trace API") && message.contains("gcc_high"),
        "{message}"
    );
    // With an explicit url (a compatible endpoint) it is accepted.
    let text = read("graph_gcc_high.toml").replace(
        "plan = \"gcc_high\"",
        "plan = \"gcc_high\"\nurl = \"https://proxy.example/trace\"",
    );
    let config = config::from_str_with_env(&text, &test_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.sources["contoso"].auth.oauth().unwrap().resource,
        "https://graph.microsoft.us"
    );
}

#[test]
fn several_errors_are_all_reported_with_paths() {
    let errors = errors_of("many_errors.toml");
    let found = paths(&errors);
    let expected = [
        "extra_top",
        "sources.contoso.tags",
        "log_level",
        "metrics_listen",
        "sources.bad.id",
        "sources.bad.id.auth",
        "sources.contoso.poll_interval_mins",
        "sources.contoso.start",
        "sources.contoso.page_size",
        "sources.contoso.ttl",
        "sources.contoso.job_timeout",
        "sources.contoso.auth.password",
        "sources.contoso.auth.client_secret_ref",
        "sources.contoso.retry.type",
        "sources.contoso.retry.initial_interval_ms",
        "sources.contoso.retry.limit",
        "sources.contoso.retry.multiplier",
        "sources.contoso.retry.codes[1]",
        "sources.contoso.retry.codes[2]",
        "sinks.out.inputs[1]",
        "sinks.out.url",
        "sinks.out.path",
        "sinks.siem.url",
        "sinks.siem.format",
    ];
    for path in expected {
        assert!(found.contains(&path), "{path} not reported; got:\n{errors}");
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "unexpected extra errors:\n{errors}"
    );
    // One line per error, `<path>: <message>`.
    let text = errors.to_string();
    assert_eq!(text.lines().count(), expected.len());
    for (line, error) in text.lines().zip(&errors.errors) {
        assert_eq!(line, format!("{}: {}", error.path, error.message));
    }
    assert!(
        text.contains(
            "sources.contoso.page_size: 3000 is out of range; use 1 to 2000 for api reporting"
        ),
        "{text}"
    );
}

#[test]
fn unset_variable_names_key_and_variable_but_no_value() {
    let text = read("minimal.toml");
    let errors = config::from_str_with_env(&text, &|_| None).unwrap_err();
    assert_eq!(
        paths(&errors),
        ["sources.contoso.auth.client_secret"],
        "{errors}"
    );
    assert!(
        errors.errors[0]
            .message
            .contains("`MSGTRACE_TEST_SECRET` is not set"),
        "{errors}"
    );

    // A value from the environment is never repeated in a message.
    let text = text.replace(
        "[sinks.out]",
        "[sinks.out]\npath = \"${MSGTRACE_TEST_SECRET}\"",
    );
    let text = text.replace(
        "[sources.contoso.auth]",
        "[sources.contoso]\nstart = \"${MSGTRACE_TEST_SECRET}\"\n[sources.contoso.auth]",
    );
    let errors = config::from_str_with_env(&text, &test_env).unwrap_err();
    assert_eq!(
        paths(&errors),
        ["sources.contoso.start", "sinks.out.path"],
        "{errors}"
    );
    assert!(!errors.to_string().contains("s3cr3t"), "{errors}");
}

#[test]
fn syntax_errors_and_unreadable_files() {
    let errors = config::from_str("[sources.a]\npage_size = = 3\n").unwrap_err();
    assert_eq!(paths(&errors), ["sources.a.page_size"]);
    assert!(
        errors.errors[0].message.contains("line 2, column"),
        "{errors}"
    );

    let missing = config_path("does-not-exist.toml");
    let errors = config::load(&missing).unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(errors.errors[0].path, missing.display().to_string());
    assert!(errors.errors[0].message.contains("cannot read"), "{errors}");
}

#[test]
fn auth_methods_check_their_own_keys() {
    let with_auth = |auth: &str| {
        format!("[sources.a]\napi = \"reporting\"\n[sources.a.auth]\n{auth}\n[sinks.s]\ntype = \"stdout\"\ninputs = [\"a\"]\n")
    };
    let cases: &[(&str, &[&str])] = &[
        (
            "method = \"basic\"\nusername = \"u\"",
            &["sources.a.auth.password"],
        ),
        (
            "method = \"basic\"\nusername = \"u\"\npassword = \"p\"\ntenant_id = \"t\"",
            &["sources.a.auth.tenant_id"],
        ),
        (
            "method = \"basic_secret\"",
            &["sources.a.auth.credentials_secret"],
        ),
        (
            "method = \"oauth_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"",
            &["sources.a.auth.client_secret_ref"],
        ),
        (
            "method = \"oauth_cert\"\ntenant_id = \"t\"\nclient_id = \"c\"",
            &["sources.a.auth.cert_path", "sources.a.auth.key_path"],
        ),
        (
            "method = \"oauth_cert\"\ntenant_id = \"t\"\nclient_id = \"c\"\ncertificate = \"nope\"",
            &["sources.a.auth.certificate"],
        ),
        ("method = \"kerberos\"", &["sources.a.auth.method"]),
        ("tenant_id = \"t\"", &["sources.a.auth.method"]),
    ];
    for (auth, expected) in cases {
        let errors = config::from_str(&with_auth(auth)).unwrap_err();
        assert_eq!(paths(&errors), *expected, "{auth}:\n{errors}");
    }
    for ok in [
        "method = \"basic\"\nusername = \"u\"\npassword = \"p\"",
        "method = \"basic_secret\"\ncredentials_secret = \"rws\"",
        "method = \"oauth_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_ref = \"r\"",
        "method = \"oauth_cert\"\ntenant_id = \"t\"\nclient_id = \"c\"\ncert_path = \"a.pem\"\nkey_path = \"a.key\"",
    ] {
        if let Err(e) = config::from_str(&with_auth(ok)) {
            panic!("{ok}:\n{e}");
        }
    }
}

#[test]
fn missing_sources_and_dangling_sources() {
    let errors = config::from_str("").unwrap_err();
    assert_eq!(paths(&errors), ["sources"]);

    let text =
        read("minimal.toml").replace("[sinks.out]\ntype = \"stdout\"\ninputs = [\"contoso\"]", "");
    let config = config::from_str_with_env(&text, &test_env).unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].starts_with("sources.contoso: feeds no sink"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn plain_http_to_a_remote_host_is_a_warning() {
    let text = read("minimal.toml").replace(
        "[sources.contoso.auth]",
        "[sources.contoso]\nurl = \"http://sim.example:8080/trace\"\n[sources.contoso.auth]\nlogin_url = \"http://localhost:8080\"",
    );
    let config = config::from_str_with_env(&text, &test_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("sources.contoso.url: plain http://"));
}

#[test]
fn nothing_panics_on_odd_input() {
    for text in [
        "sources = 5",
        "sources = []",
        "[sources]\na = 1",
        "[[sources]]\nx = 1",
        "[sources.a]\nfields = { nested = { x = 1 } }",
        "[sources.a]\nstart = 1.5\nend = true",
        "[sources.a]\nstart = -5\nreread = -3",
        "[sources.a]\npage_size = 9223372036854775807\nquota = { requests = 0 }",
        "[sources.a.retry]\nmultiplier = nan\ncodes = [-1]",
        "[sinks.a]\ntype = \"http\"\nheaders = { \"bad header\" = \"x\" }\nbatch = { max_rows = -1 }",
        "[sources.\"\"]\n[sinks.\"\"]\n[certificates.\"\"]",
        "log_level = \"${\"",
        "\u{0}",
    ] {
        let errors = config::from_str(text).unwrap_err();
        assert!(!errors.errors.is_empty(), "{text}");
        for e in &errors.errors {
            assert!(!e.path.is_empty() && !e.message.is_empty(), "{text}: {e:?}");
        }
    }
}

#[test]
fn file_sink_rotation_keys() {
    let base = read("minimal.toml");
    let with = |extra: &str| {
        config::from_str_with_env(&format!("{base}\n[sinks.file]\ntype = \"file\"\ninputs = [\"contoso\"]\npath = \"/tmp/x.ndjson\"\n{extra}\n"), &test_env)
    };
    let c = with("rotate_max_bytes = 1048576").unwrap();
    match &c.sinks["file"].kind {
        SinkKind::File { rotate, .. } => assert_eq!(
            *rotate,
            Some(msgtrace::config::Rotation {
                max_bytes: 1_048_576,
                keep: 5
            })
        ),
        other => panic!("{other:?}"),
    }
    let e = with("rotate_max_bytes = 10").unwrap_err().to_string();
    assert!(
        e.contains("sinks.file.rotate_max_bytes: 10 is out of range"),
        "{e}"
    );
    let e = with("rotate_keep = 3").unwrap_err().to_string();
    assert!(
        e.contains("sinks.file.rotate_keep: has no effect without rotate_max_bytes"),
        "{e}"
    );
}

#[test]
fn url_keys_that_take_a_host_refuse_a_path_with_the_fix() {
    let base = read("minimal.toml");
    let with = |source: &str, auth: &str| {
        let text = base.replace(
            "[sources.contoso.auth]",
            &format!("{source}\n[sources.contoso.auth]\n{auth}"),
        );
        config::from_str_with_env(&text, &test_env)
    };
    // The token URL in login_url (later an HTTP 404 at …/token/<tenant>/oauth2/v2.0/token).
    let e = with(
        "",
        "login_url = \"https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token\"",
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["sources.contoso.auth.login_url"], "{e}");
    let m = &e.errors[0].message;
    assert!(
        m.contains("/contoso.onmicrosoft.com/oauth2/v2.0/token")
            && m.contains("authority host only")
            && m.contains("https://login.microsoftonline.com"),
        "{m}"
    );
    for ok in [
        "login_url = \"https://login.microsoftonline.com\"",
        "login_url = \"https://login.microsoftonline.com/\"",
        "login_url = \"http://127.0.0.1:8465\"",
    ] {
        with("", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // A proxy is a host and port: a path after it would be ignored.
    let e = with(
        "[sources.contoso]\nproxy_url = \"http://user:pw@proxy.example.com:3128/corp\"",
        "",
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["sources.contoso.proxy_url"], "{e}");
    assert!(!e.to_string().contains("pw"), "no proxy password in {e}");
    with(
        "[sources.contoso]\nproxy_url = \"http://proxy.example.com:3128\"",
        "",
    )
    .unwrap();
    // The audience with /.default (msgtrace adds it: the scope would end /.default/.default).
    let e = with("", "resource = \"https://graph.microsoft.com/.default\"").unwrap_err();
    assert_eq!(paths(&e), ["sources.contoso.auth.resource"], "{e}");
    // The endpoint is a full URL: a bare host is a 404 at the first request.
    let e = with(
        "[sources.contoso]\nurl = \"https://graph.microsoft.com\"",
        "",
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["sources.contoso.url"], "{e}");
    assert!(
        e.errors[0].message.contains(config::GRAPH_URL),
        "the fix names the endpoint: {e}"
    );
}

#[test]
fn metrics_listen_off_loopback_is_a_warning() {
    let base = read("minimal.toml");
    let with = |listen: &str| {
        config::from_str_with_env(&format!("metrics_listen = \"{listen}\"\n{base}"), &test_env)
            .unwrap()
            .warnings
    };
    for open in ["0.0.0.0:9464", "[::]:9464", "192.0.2.10:9464"] {
        let w = with(open);
        assert!(
            w.iter()
                .any(|w| w.starts_with("metrics_listen: ")
                    && w.contains("reachable from the network")),
            "{open}: {w:?}"
        );
    }
    for local in ["127.0.0.1:9464", "[::1]:9464"] {
        assert!(with(local).is_empty(), "{local}: {:?}", with(local));
    }
}

#[test]
fn file_sink_mode_key() {
    let base = read("minimal.toml");
    let with = |extra: &str| {
        config::from_str_with_env(&format!("{base}\n[sinks.file]\ntype = \"file\"\ninputs = [\"contoso\"]\npath = \"/tmp/x.ndjson\"\n{extra}\n"), &test_env)
    };
    let mode_of = |c: msgtrace::config::Config| match &c.sinks["file"].kind {
        SinkKind::File { mode, .. } => *mode,
        other => panic!("{other:?}"),
    };
    assert_eq!(mode_of(with("").unwrap()), 0o640, "the default");
    assert_eq!(mode_of(with("mode = \"0600\"").unwrap()), 0o600);
    for (bad, says) in [
        ("\"rw-r-----\"", "octal"),
        ("\"0999\"", "octal"),
        ("\"0666\"", "every user write"),
        ("\"0440\"", "owner read and write"),
    ] {
        let e = with(&format!("mode = {bad}")).unwrap_err().to_string();
        assert!(
            e.contains("sinks.file.mode:") && e.contains(says),
            "{bad}: {e}"
        );
    }
}

#[test]
fn control_listen_takes_an_address_or_a_bare_port_for_loopback() {
    let base = read("minimal.toml");
    let parse = |line: &str| config::from_str_with_env(&format!("{line}\n{base}"), &test_env);
    assert_eq!(parse("").unwrap().control_listen, None, "off by default");
    let c = parse("control_listen = \"9465\"").unwrap();
    assert_eq!(c.control_listen, Some("127.0.0.1:9465".parse().unwrap()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = parse("control_listen = \"0.0.0.0:9465\"").unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("control_listen: ") && w.contains("reachable from the network")),
        "{:?}",
        c.warnings
    );
    let e = parse("control_listen = \"localhost:9465\"").unwrap_err();
    assert!(
        e.errors
            .iter()
            .any(|e| e.to_string().starts_with("control_listen: ")
                && e.to_string().contains("IP:PORT")),
        "{e:?}"
    );
}

#[test]
fn cluster_is_absent_by_default_and_takes_its_defaults() {
    let base = read("minimal.toml");
    let parse = |table: &str| config::from_str_with_env(&format!("{table}\n{base}"), &test_env);
    assert_eq!(parse("").unwrap().cluster, None, "single-instance mode");
    let c = parse("[cluster]\netcd = [\"http://127.0.0.1:2379\", \"https://etcd-1:2379/\"]\nprefix = \"/msgtrace/prod\"\n")
        .unwrap();
    let cluster = c.cluster.expect("[cluster] given");
    let urls: Vec<&str> = cluster.etcd.iter().map(|u| u.as_str()).collect();
    assert_eq!(urls, ["http://127.0.0.1:2379/", "https://etcd-1:2379/"]);
    assert_eq!(cluster.prefix, "/msgtrace/prod");
    assert_eq!(cluster.lease, Duration::from_secs(15));
    assert!(!cluster.name.is_empty(), "the host name by default");
    let c = parse("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/m\"\nname = \"collector-0\"\nlease_secs = 5\n")
        .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(
        (cluster.name.as_str(), cluster.lease),
        ("collector-0", Duration::from_secs(5))
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn cluster_errors_name_the_key_and_the_fix() {
    let base = read("minimal.toml");
    let errors = |table: &str| {
        let e = config::from_str_with_env(&format!("[cluster]\n{table}\n{base}"), &test_env)
            .expect_err(table);
        e.errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
    };
    let e = errors("");
    assert!(
        e.iter()
            .any(|e| e.starts_with("cluster.etcd: is required; list the etcd client URLs")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("cluster.prefix: is required;")),
        "{e:?}"
    );
    let ok = "etcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/m\"\n";
    for (bad, path, says) in [
        ("etcd = []\nprefix = \"/m\"", "cluster.etcd", "is required"),
        (
            "etcd = [\"http://127.0.0.1:2379/v3\"]\nprefix = \"/m\"",
            "cluster.etcd[0]",
            "write the client URL only",
        ),
        (
            "etcd = [\"ftp://h:1\"]\nprefix = \"/m\"",
            "cluster.etcd[0]",
            "scheme `ftp`",
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nprefix = \"m/\"",
            "cluster.prefix",
            "not a key prefix",
        ),
        (
            "etcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/a b\"",
            "cluster.prefix",
            "not a key prefix",
        ),
        (
            &format!("{ok}name = \"a/b\""),
            "cluster.name",
            "not a member name",
        ),
        (
            &format!("{ok}lease_secs = 1"),
            "cluster.lease_secs",
            "use 2 to 3600",
        ),
        (&format!("{ok}leases = 1"), "cluster.leases", "unknown key"),
    ] {
        let e = errors(bad);
        assert!(
            e.iter()
                .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(says)),
            "{bad}: {e:?}"
        );
    }
}
