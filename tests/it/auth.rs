//! Authentication end to end: every method against the simulated tenant, the client assertion
//! verified by a second implementation (the `openssl` CLI), Entra errors turned into messages,
//! certificate problems reported at validation, and no secret in logs, `jobs --json` or the dump.
//!
//! Certificates and keys are made at test time with `openssl`; without it these tests print a
//! note and pass without checking.

use crate::common::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use msgtrace::actors::assertion::{AssertionAlg, ClientCertificate};
use msgtrace::actors::dialect::Api;
use msgtrace::actors::spec::{TokenEndpoint, TokenSpec};
use msgtrace::actors::token::{self, AuthError};
use msgtrace_simulator::{SimConfig, SimServer, GRAPH_PATH, RWS_PATH};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BASIC_USER: &str = "rws-user";
const BASIC_PASSWORD: &str = "Basic-Pw-7c1e5a";
const CLIENT_SECRET: &str = "App-Secret-3b9d2f";
const KEY_PASSPHRASE: &str = "Key-Pass-51d0";

fn has_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: `openssl` not found: certificate tests skipped");
    }
    ok
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Test credentials made by openssl in `dir`.
struct Certs {
    dir: PathBuf,
    /// Certificate (PEM) of `key.pem`.
    cert: PathBuf,
    /// PKCS#8 key.
    key: PathBuf,
    /// The same key as PKCS#1 (`RSA PRIVATE KEY`).
    key_pkcs1: PathBuf,
    /// The same key as encrypted PKCS#8 (PBES2, AES-256-CBC), passphrase `KEY_PASSPHRASE`.
    key_encrypted: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-subj",
            "/CN=msgtrace-test",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "rsa",
            "-in",
            "key.pem",
            "-traditional",
            "-out",
            "key-pkcs1.pem",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "key.pem",
            "-out",
            "key-enc.pem",
            "-passout",
            &format!("pass:{KEY_PASSPHRASE}"),
        ],
    );
    Certs {
        dir: dir.to_path_buf(),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        key_pkcs1: dir.join("key-pkcs1.pem"),
        key_encrypted: dir.join("key-enc.pem"),
    }
}

fn q(p: impl AsRef<str>) -> String {
    serde_json::to_string(p.as_ref()).unwrap()
}

fn qp(p: &Path) -> String {
    q(p.to_string_lossy())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn msgtrace(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgtrace"));
    cmd.args(args)
        .env_remove("MSGTRACE_SECRET_KEY")
        .env_remove("MSGTRACE_SECRET_KEY_FILE")
        .env_remove("MSGTRACE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("msgtrace runs");
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// The tenant's own credentials: its client secret, a Basic user and password.
fn auth_tenant(c: &mut SimConfig) {
    c.client_secret = CLIENT_SECRET.into();
    c.username = Some(BASIC_USER.into());
    c.password = Some(BASIC_PASSWORD.into());
}

fn sim_for_auth(certs: Option<&Certs>) -> SimServer {
    sim(60, |c| {
        auth_tenant(c);
        if let Some(certs) = certs {
            let pem = std::fs::read_to_string(&certs.cert).unwrap();
            assert_eq!(c.register_certificate_pem(&pem), 1);
        }
    })
}

/// One source table per method, each feeding its own file sink.
fn every_method_config(sim: &SimServer, state: &Path, out: &Path, certs: &Certs) -> String {
    let base = sim.base_url();
    // Tokens are shared per (authority, tenant, client, audience, endpoint): give each OAuth
    // source its own, so that each method really asks for its own token.
    let localhost = base.replace("127.0.0.1", "localhost");
    let graph = q(format!("{base}{GRAPH_PATH}"));
    let rws = q(format!("{base}{RWS_PATH}"));
    let source = |id: &str, url: &str, auth: &str| {
        format!(
            "[sources.{id}]\nurl = {url}\napi = \"{api}\"\nstart = \"-3h@h\"\nend = \"-1h@h\"\npage_size = 50\n\
             [sources.{id}.retry]\ninitial_interval_ms = 50\n[sources.{id}.auth]\n{auth}\n\
             [sinks.{id}]\ntype = \"file\"\ninputs = [\"{id}\"]\npath = {path}\n\n",
            api = if url == rws { "reporting" } else { "graph" },
            path = qp(&out.join(format!("{id}.ndjson"))),
        )
    };
    let app = "tenant_id = \"sim-tenant\"\nclient_id = \"sim-client\"\n";
    let mut toml = format!(
        "state_dir = {}\nlog_level = \"debug\"\n\n[certificates.app]\ncert_path = {}\nkey_path = {}\npassphrase = {}\n\n",
        qp(state),
        qp(&certs.cert),
        qp(&certs.key_encrypted),
        q(KEY_PASSPHRASE),
    );
    toml += &source(
        "basic",
        &rws,
        &format!(
            "method = \"basic\"\nusername = {}\npassword = {}",
            q(BASIC_USER),
            q(BASIC_PASSWORD)
        ),
    );
    toml += &source(
        "basic_secret",
        &rws,
        "method = \"basic_secret\"\ncredentials_secret = \"rws-creds\"",
    );
    toml += &source(
        "oauth",
        &graph,
        &format!(
            "method = \"oauth\"\n{app}client_secret = {}\nlogin_url = {}",
            q(CLIENT_SECRET),
            q(&base)
        ),
    );
    toml += &source(
        "oauth_secret",
        &graph,
        &format!("method = \"oauth_secret\"\n{app}client_secret_ref = \"app-secret\"\nlogin_url = {}\ntoken_endpoint = \"v1\"", q(&base)),
    );
    toml += &source(
        "oauth_cert",
        &graph,
        &format!(
            "method = \"oauth_cert\"\n{app}certificate = \"app\"\nlogin_url = {}",
            q(&localhost)
        ),
    );
    toml += &source(
        "oauth_cert_rs256",
        &graph,
        &format!(
            "method = \"oauth_cert\"\n{app}cert_path = {}\nkey_path = {}\nassertion_alg = \"RS256\"\nlogin_url = {}\ntoken_endpoint = \"v1\"",
            qp(&certs.cert),
            qp(&certs.key_pkcs1),
            q(&localhost)
        ),
    );
    // The secretless methods: a federated token the simulator issued (in `out/../fed-token`), and
    // the simulator's metadata endpoint. The Graph app id as audience keeps the federated
    // source's token its own.
    let fed_token = out.parent().unwrap().join("fed-token");
    std::fs::write(
        &fed_token,
        sim.config().identity.federate(FED_ISSUER, FED_SUBJECT),
    )
    .unwrap();
    sim.config().identity.assign_managed_identity(None, true);
    toml += &source(
        "oauth_federated",
        &graph,
        &format!(
            "method = \"oauth_federated\"\n{app}token_file = {}\nlogin_url = {}\nresource = \"00000003-0000-0000-c000-000000000000\"",
            qp(&fed_token),
            q(&base)
        ),
    );
    toml += &source(
        "managed_identity",
        &graph,
        &format!("method = \"managed_identity\"\nimds_url = {}", q(&base)),
    );
    toml
}

const FED_ISSUER: &str = "https://oidc.sim.example";
const FED_SUBJECT: &str = "system:serviceaccount:mail:msgtrace";

#[test]
fn every_method_collects_every_row_and_no_secret_leaks() {
    if !has_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let sim = sim_for_auth(Some(&certs));
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = dir.path().join("msgtrace.toml");
    std::fs::write(&cfg, every_method_config(&sim, &state, &out, &certs)).unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // The store secrets, from stdin.
    let o = msgtrace(
        &[
            "secrets",
            "set",
            "rws-creds",
            "-c",
            cfg_s,
            "--kind",
            "credentials",
        ],
        Some(&format!("{BASIC_USER}\n{BASIC_PASSWORD}\n")),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("secret rws-creds (credentials) stored"),
        "{stdout}"
    );
    assert!(stdout.contains("state.key (created"), "{stdout}");
    let o = msgtrace(
        &["secrets", "set", "app-secret", "-c", cfg_s],
        Some(&format!("{CLIENT_SECRET}\n")),
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msgtrace(
        &["secrets", "set", "scratch", "-c", cfg_s],
        Some("x\n"),
        &[],
    );
    assert!(o.status.success());
    let o = msgtrace(&["secrets", "rm", "scratch", "-c", cfg_s], None, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = msgtrace(&["secrets", "list", "-c", cfg_s], None, &[]);
    let listed = text(&o.stdout);
    assert_eq!(listed, "app-secret\ttext\nrws-creds\tcredentials\n");
    let key_file = dir.path().join("state.key");
    let key_hex = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(key_hex.len(), 64);

    let o = msgtrace(&["validate", "-c", cfg_s], None, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // One collection, every method, logs at debug level.
    let run = msgtrace(
        &["run", "--once", "-c", cfg_s],
        None,
        &[("MSGTRACE_LOG", "debug")],
    );
    let logs = text(&run.stderr);
    assert!(run.status.success(), "{logs}");
    let jobs = msgtrace(&["jobs", "-c", cfg_s, "--json"], None, &[]);
    assert!(jobs.status.success(), "{}", text(&jobs.stderr));
    let jobs_json = text(&jobs.stdout);
    let jobs_v: Vec<serde_json::Value> = serde_json::from_str(&jobs_json).unwrap();
    let now = chrono::Utc::now();
    let ids = [
        ("basic", Api::Reporting),
        ("basic_secret", Api::Reporting),
        ("oauth", Api::Graph),
        ("oauth_secret", Api::Graph),
        ("oauth_cert", Api::Graph),
        ("oauth_cert_rs256", Api::Graph),
        ("oauth_federated", Api::Graph),
        ("managed_identity", Api::Graph),
    ];
    for (id, api) in ids {
        let job = jobs_v
            .iter()
            .find(|j| j["source"] == id)
            .unwrap_or_else(|| panic!("a job for {id}: {jobs_json}"));
        assert_eq!(job["state"], "succeeded", "{id}: {job}");
        let t = |k: &str| {
            job[k]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        };
        let expected = sim
            .model()
            .expected(t("window_start"), t("window_end"), now);
        assert!(!expected.is_empty());
        let got = identities(&out.join(format!("{id}.ndjson")), api);
        assert_eq!(compare(&got, &expected), (0, 0, 0), "{id}");
    }
    // Six token sources, six tokens: the certificate and federated sources got theirs with
    // assertions, the managed identity from the metadata endpoint.
    let stats = sim.stats();
    assert!(stats.tokens_issued >= 6, "{stats:?}");
    assert!(logs.contains("token refreshed"), "debug logs were captured");

    let dump = Command::new(env!("CARGO_BIN_EXE_msgtrace-dump"))
        .arg(&state)
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    let dump_text = text(&dump.stdout);
    assert!(
        dump_text.contains("== tree secrets (2 records)"),
        "{dump_text}"
    );
    let dump_json = Command::new(env!("CARGO_BIN_EXE_msgtrace-dump"))
        .arg(&state)
        .arg("--json")
        .output()
        .unwrap();
    let dump_json = text(&dump_json.stdout);

    let key_pem = std::fs::read_to_string(&certs.key).unwrap();
    let key_line = key_pem.lines().nth(3).unwrap().to_string();
    let basic_header = STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    let secrets = [
        BASIC_PASSWORD,
        CLIENT_SECRET,
        KEY_PASSPHRASE,
        &key_hex,
        &key_line,
        &basic_header,
        // Any bearer token the simulator issued, or any client assertion or federated token (JWT
        // header prefixes).
        "eyJ0eXAiOiJKV1Qi",
        "eyJhbGciOi",
    ];
    // Debug output of the validated configuration and of the engine's source specs (with the
    // store secrets resolved and the certificates loaded).
    let config = msgtrace::config::load(&cfg).unwrap();
    let debug = {
        let store = open_store(&state);
        let secrets = msgtrace::secrets::SecretStore::new(store);
        let specs: Vec<_> = config
            .sources
            .values()
            .map(|s| {
                msgtrace::engine::source_spec(
                    s,
                    true,
                    msgtrace::engine::SecretAccess::Store(&secrets),
                )
                .unwrap()
            })
            .collect();
        format!("{config:?}\n{specs:?}\n{secrets:?}")
    };
    assert!(debug.contains("oauth_cert_rs256") && debug.contains("***"));
    for (what, haystack) in [
        ("Debug output", &debug),
        ("debug logs", &logs),
        ("jobs --json", &jobs_json),
        ("msgtrace-dump", &dump_text),
        ("msgtrace-dump --json", &dump_json),
        ("secrets list", &listed),
        ("the state directory's files", &state_files(&state)),
    ] {
        for s in secrets {
            assert!(!haystack.contains(s), "{what} contains a secret ({s:.6}…)");
        }
    }
}

/// Every file of the state directory, as lossy text (the database at rest).
fn state_files(dir: &Path) -> String {
    let mut all = String::new();
    for entry in walk(dir) {
        all.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The JWT's header and claims as JSON, and its signature bytes.
fn split_jwt(jwt: &str) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let json = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    (
        json(parts[0]),
        json(parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
}

#[test]
fn client_assertions_verify_with_openssl() {
    if !has_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let d = &certs.dir;
    openssl(
        d,
        &[
            "x509", "-in", "cert.pem", "-pubkey", "-noout", "-out", "pub.pem",
        ],
    );
    openssl(
        d,
        &[
            "x509", "-in", "cert.pem", "-outform", "der", "-out", "cert.der",
        ],
    );
    // Thumbprints computed by openssl.
    let digest = |alg: &str| {
        let o = Command::new("openssl")
            .current_dir(d)
            .args(["dgst", alg, "-binary", "cert.der"])
            .output()
            .unwrap();
        URL_SAFE_NO_PAD.encode(o.stdout)
    };
    let (x5t_s256, x5t) = (digest("-sha256"), digest("-sha1"));
    let fingerprint = text(
        &Command::new("openssl")
            .current_dir(d)
            .args(["x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha1"])
            .output()
            .unwrap()
            .stdout,
    );
    let token_url = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";
    let now = chrono::Utc::now();
    let mut jtis = std::collections::HashSet::new();
    for key in [&certs.key, &certs.key_pkcs1, &certs.key_encrypted] {
        let pass = msgtrace::config::Secret::new(KEY_PASSPHRASE);
        let cert = ClientCertificate::load(&certs.cert, key, Some(&pass), now).unwrap();
        assert_eq!(
            fingerprint
                .trim()
                .rsplit('=')
                .next()
                .unwrap()
                .replace(':', ""),
            cert.thumbprint()
        );
        for alg in [AssertionAlg::Ps256, AssertionAlg::Rs256] {
            let jwt = cert
                .client_assertion(alg, "app-id", token_url, now)
                .unwrap();
            let (header, claims, signed, sig) = split_jwt(jwt.expose());
            assert_eq!(header["typ"], "JWT");
            match alg {
                AssertionAlg::Ps256 => {
                    assert_eq!(header["alg"], "PS256");
                    assert_eq!(header["x5t#S256"], x5t_s256.as_str());
                    assert!(header.get("x5t").is_none());
                }
                AssertionAlg::Rs256 => {
                    assert_eq!(header["alg"], "RS256");
                    assert_eq!(header["x5t"], x5t.as_str());
                }
            }
            assert_eq!(claims["aud"], token_url);
            assert_eq!(claims["iss"], "app-id");
            assert_eq!(claims["sub"], "app-id");
            let iat = claims["iat"].as_i64().unwrap();
            assert_eq!(iat, now.timestamp());
            assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
            assert_eq!(claims["exp"].as_i64().unwrap() - iat, 600);
            assert!(jtis.insert(claims["jti"].as_str().unwrap().to_string()));
            // The second implementation: openssl checks the signature against the certificate.
            std::fs::write(d.join("signed.txt"), &signed).unwrap();
            std::fs::write(d.join("sig.bin"), &sig).unwrap();
            let mut args = vec![
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "sig.bin",
            ];
            if alg == AssertionAlg::Ps256 {
                args.extend([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:32",
                ]);
            }
            args.push("signed.txt");
            let o = Command::new("openssl")
                .current_dir(d)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                o.status.success() && text(&o.stdout).contains("Verified OK"),
                "{alg:?}: {}{}",
                text(&o.stdout),
                text(&o.stderr)
            );
            // A tampered claim set does not verify.
            std::fs::write(d.join("signed.txt"), signed.replace('.', "x.")).unwrap();
            let o = Command::new("openssl")
                .current_dir(d)
                .args(&args)
                .output()
                .unwrap();
            assert!(!o.status.success());
        }
    }
}

#[test]
fn certificate_problems_are_one_clear_line_at_validation() {
    if !has_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let d = dir.path();
    // A second key (not the certificate's), an expired certificate, a legacy encrypted key.
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other = make_certs(&other);
    openssl(
        d,
        &[
            "x509",
            "-in",
            "cert.pem",
            "-signkey",
            "key.pem",
            "-days",
            "-1",
            "-out",
            "expired.pem",
        ],
    );
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "key.pem",
            "-traditional",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            "legacy.pem",
        ],
    );
    std::fs::write(d.join("garbage.pem"), "not a key\n").unwrap();
    let p = |name: &str| d.join(name).to_string_lossy().into_owned();
    let cert = certs.cert.to_string_lossy().into_owned();
    let enc = certs.key_encrypted.to_string_lossy().into_owned();
    let cases: Vec<(String, String, Option<&str>, &str)> = vec![
        (
            p("missing.pem"),
            p("key.pem"),
            None,
            "cannot read the certificate file",
        ),
        (
            cert.clone(),
            p("missing.key"),
            None,
            "cannot read the private key file",
        ),
        (
            cert.clone(),
            p("garbage.pem"),
            None,
            "holds no usable RSA private key",
        ),
        (
            cert.clone(),
            enc.clone(),
            None,
            "is encrypted: set passphrase",
        ),
        (
            cert.clone(),
            enc.clone(),
            Some("wrong"),
            "cannot be decrypted with the passphrase",
        ),
        (
            cert.clone(),
            other.key.to_string_lossy().into_owned(),
            None,
            "does not match the certificate",
        ),
        (p("expired.pem"), p("key.pem"), None, "expired on"),
        (cert.clone(), p("legacy.pem"), Some("x"), "legacy format"),
    ];
    for (cert_path, key_path, pass, want) in cases {
        let pass = pass
            .map(|p| format!("passphrase = {}\n", q(p)))
            .unwrap_or_default();
        let toml = format!(
            "state_dir = {}\n[sources.s.auth]\nmethod = \"oauth_cert\"\ntenant_id = \"t\"\nclient_id = \"c\"\n\
             cert_path = {}\nkey_path = {}\n{pass}\n[sinks.o]\ntype = \"stdout\"\ninputs = [\"s\"]\n",
            qp(&d.join("state")),
            q(&cert_path),
            q(&key_path),
        );
        let cfg = d.join("c.toml");
        std::fs::write(&cfg, toml).unwrap();
        let o = msgtrace(&["validate", "-c", cfg.to_str().unwrap()], None, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{want}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("{want}: {err}"));
        assert!(
            line.starts_with("msgtrace: sources.s.auth: cert_path: "),
            "{line}"
        );
        let named = if want.contains("certificate file") || want == "expired on" {
            &cert_path
        } else {
            &key_path
        };
        assert!(line.contains(named.as_str()), "{line}");
        assert!(
            !line.contains("wrong") || want.contains("passphrase"),
            "{line}"
        );
    }
    // Store secrets that are missing are validation errors too, and stop `run` with exit 1.
    let toml = format!(
        "state_dir = {}\n[sources.s]\napi = \"reporting\"\n[sources.s.auth]\nmethod = \"basic_secret\"\ncredentials_secret = \"nope\"\n\
         [sinks.o]\ntype = \"stdout\"\ninputs = [\"s\"]\n",
        qp(&d.join("state")),
    );
    let cfg = d.join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    let o = msgtrace(&["validate", "-c", cfg.to_str().unwrap()], None, &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sources.s.auth: credentials_secret: no secret named `nope`")
            && err.contains("msgtrace secrets set nope -c CONFIG --kind credentials"),
        "{err}"
    );
    let o = msgtrace(&["run", "--once", "-c", cfg.to_str().unwrap()], None, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no secret named `nope`"));
}

fn spec(sim: &SimServer) -> TokenSpec {
    TokenSpec {
        login_url: url::Url::parse(&sim.base_url()).unwrap(),
        tenant_id: "sim-tenant".into(),
        client_id: "sim-client".into(),
        audience: "https://graph.microsoft.com".into(),
        endpoint: TokenEndpoint::V2,
        proxy: None,
    }
}

/// Posts a token request to the simulator and turns the answer into the engine's message.
fn token_error(spec: &TokenSpec, form: Vec<(&'static str, String)>) -> String {
    let url = spec.token_url();
    let r = actix_rt::System::new()
        .block_on(async move {
            msgtrace::actors::http::post_form(
                &url,
                &form,
                Some(std::time::Duration::from_secs(10)),
                None,
            )
            .await
        })
        .unwrap();
    assert_ne!(r.status, 200, "{}", text(&r.body));
    let e = token::entra_error(r.status, &r.body, spec);
    assert!(matches!(e, AuthError::Rejected(_)), "{e:?}");
    e.to_string()
}

#[test]
fn entra_errors_of_every_method_name_the_cause_and_the_fix() {
    let sim = sim_for_auth(None);
    let good = spec(&sim);
    let msg = token_error(&good, token::secret_form(&good, &"wrong".into()));
    assert!(
        msg.contains("AADSTS7000215") && msg.contains("copy the secret's Value"),
        "{msg}"
    );
    let stranger = TokenSpec {
        client_id: "stranger".into(),
        ..good.clone()
    };
    let msg = token_error(
        &stranger,
        token::secret_form(&stranger, &CLIENT_SECRET.into()),
    );
    assert!(
        msg.contains("AADSTS700016") && msg.contains("check client_id and tenant_id"),
        "{msg}"
    );
    let elsewhere = TokenSpec {
        tenant_id: "elsewhere".into(),
        ..good.clone()
    };
    let msg = token_error(
        &elsewhere,
        token::secret_form(&elsewhere, &CLIENT_SECRET.into()),
    );
    assert!(
        msg.contains("AADSTS90002") && msg.contains("tenant elsewhere does not exist"),
        "{msg}"
    );
    if !has_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let now = chrono::Utc::now();
    let cert = ClientCertificate::load(&certs.cert, &certs.key, None, now).unwrap();
    let url = good.token_url();
    let sign = |client: &str, aud: &str, at: chrono::DateTime<chrono::Utc>| {
        cert.client_assertion(AssertionAlg::Ps256, client, aud, at)
            .unwrap()
    };
    // Not registered: the key is not found.
    let msg = token_error(
        &good,
        token::assertion_form(&good, &sign("sim-client", &url, now)),
    );
    assert!(
        msg.contains("AADSTS700027") && msg.contains("upload the certificate"),
        "{msg}"
    );
    // Registered on a second server: signature, issuer, audience, time and replay are checked.
    let sim2 = sim_for_auth(Some(&certs));
    let good = spec(&sim2);
    let url = good.token_url();
    let ok = sign("sim-client", &url, now);
    let cases = [
        (
            sign("other-app", &url, now),
            "AADSTS700021",
            "check client_id",
        ),
        (
            sign(
                "sim-client",
                "https://login.example/x/oauth2/v2.0/token",
                now,
            ),
            "AADSTS700023",
            "check login_url",
        ),
        (
            sign("sim-client", &url, now - chrono::Duration::hours(1)),
            "AADSTS700024",
            "check this machine's clock",
        ),
    ];
    for (assertion, code, fix) in cases {
        let msg = token_error(&good, token::assertion_form(&good, &assertion));
        assert!(msg.contains(code) && msg.contains(fix), "{code}: {msg}");
    }
    // A forged signature (claims changed after signing).
    let (_, _, signed, sig) = split_jwt(ok.expose());
    let mut parts: Vec<String> = signed.split('.').map(str::to_string).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap())
            .unwrap()
            .replace("\"jti\":\"", "\"jti\":\"f"),
    );
    let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    let msg = token_error(&good, token::assertion_form(&good, &forged.into()));
    assert!(
        msg.contains("AADSTS700027") && msg.contains("did not match"),
        "{msg}"
    );
    // The good one works once, then is a replay.
    let url2 = url.clone();
    let form = token::assertion_form(&good, &ok);
    let status = actix_rt::System::new()
        .block_on(async move { msgtrace::actors::http::post_form(&url2, &form, None, None).await })
        .unwrap()
        .status;
    assert_eq!(status, 200);
    let msg = token_error(&good, token::assertion_form(&good, &ok));
    assert!(
        msg.contains("AADSTS7000274") && msg.contains("jti"),
        "{msg}"
    );
}

#[test]
fn an_unregistered_certificate_fails_the_job_with_its_thumbprint() {
    if !has_openssl() {
        return;
    }
    // No certificate registered with the tenant.
    let h = Harness::graph()
        .sim(auth_tenant)
        .window("-2h@h", "-1h@h")
        .build();
    let certs = make_certs(h.dir.path());
    let toml = h
        .toml
        .replace(
            "method = \"oauth\"",
            &format!(
                "method = \"oauth_cert\"\ncert_path = {}\nkey_path = {}",
                qp(&certs.cert),
                qp(&certs.key)
            ),
        )
        .replace("client_secret = \"sim-secret\"\n", "");
    let report = run_once(&parse(&toml), opts());
    let (_, job) = &report.jobs[0];
    let err = job.error.clone().unwrap_or_default();
    let thumb = ClientCertificate::load(&certs.cert, &certs.key, None, chrono::Utc::now())
        .unwrap()
        .thumbprint()
        .to_string();
    assert!(err.contains("AADSTS700027"), "{err}");
    assert!(err.contains(&format!("thumbprint {thumb}")), "{err}");
}

#[test]
fn graph_without_the_service_principal_names_the_app_to_provision() {
    let h = Harness::graph()
        .sim(|c| c.graph_service_principal_missing = true)
        .window("-2h@h", "-1h@h")
        .build();
    let report = h.run_once();
    let err = report.jobs[0].1.error.clone().unwrap_or_default();
    assert!(
        err.contains("Service principal-less Authentication failed")
            && err.contains("8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"),
        "{err}"
    );
}

#[test]
fn the_secret_key_can_come_from_the_environment_and_a_wrong_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {}\n[sources.s]\napi = \"reporting\"\n[sources.s.auth]\nmethod = \"basic_secret\"\n\
             credentials_secret = \"creds\"\n[sinks.o]\ntype = \"stdout\"\ninputs = [\"s\"]\n",
            qp(&state)
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let key = STANDARD.encode([9u8; 32]);
    let env = [("MSGTRACE_SECRET_KEY", key.as_str())];
    // Argument errors: no value on the command line, a bad name, an unknown kind.
    let o = msgtrace(
        &["secrets", "set", "bad name", "-c", cfg],
        Some("x\n"),
        &env,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = msgtrace(
        &["secrets", "set", "creds", "-c", cfg, "--kind", "other"],
        Some("x\n"),
        &env,
    );
    assert_eq!(o.status.code(), Some(2));
    let o = msgtrace(
        &[
            "secrets",
            "set",
            "creds",
            "-c",
            cfg,
            "--kind",
            "credentials",
        ],
        Some("only-a-user\n"),
        &env,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("password on the second"),
        "{}",
        text(&o.stderr)
    );
    let o = msgtrace(
        &[
            "secrets",
            "set",
            "creds",
            "-c",
            cfg,
            "--kind",
            "credentials",
        ],
        Some("user\npass-w0rd\n"),
        &env,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("MSGTRACE_SECRET_KEY"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        !dir.path().join("state.key").exists(),
        "no key file when the key is given"
    );
    let o = msgtrace(&["validate", "-c", cfg], None, &env);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Another key: the secret is there but cannot be opened, and the message says why.
    let other = "ab".repeat(32);
    let o = msgtrace(
        &["validate", "-c", cfg],
        None,
        &[("MSGTRACE_SECRET_KEY", &other)],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("secret `creds` cannot be decrypted with the key from the environment variable MSGTRACE_SECRET_KEY"),
        "{err}"
    );
    // No key at all.
    let o = msgtrace(&["validate", "-c", cfg], None, &[]);
    let err = text(&o.stderr);
    assert!(err.contains("state.key does not exist"), "{err}");
    // A key file named by MSGTRACE_SECRET_KEY_FILE.
    let key_file = dir.path().join("k");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let o = msgtrace(
        &["validate", "-c", cfg],
        None,
        &[("MSGTRACE_SECRET_KEY_FILE", key_file.to_str().unwrap())],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!err.contains("pass-w0rd"));
}
