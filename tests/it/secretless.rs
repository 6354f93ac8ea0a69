//! Secretless sign-in (issue 20 section 2): `oauth_federated` with a workload identity token
//! file that the platform rotates, and `managed_identity` against the simulated instance metadata
//! endpoint; their configuration errors.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use msgtrace::config;
use msgtrace_simulator::SimServer;

const ISSUER: &str = "https://oidc.sim.example/cluster";
const SUBJECT: &str = "system:serviceaccount:mail:msgtrace";

/// The harness's configuration with `auth` (TOML lines) as its auth table.
fn with_auth(h: &Harness, auth: &str) -> String {
    let toml = &h.toml;
    let start = toml.find("[sources.src.auth]").unwrap();
    let end = toml.find("[sources.src.retry]").unwrap();
    format!(
        "{}[sources.src.auth]\n{auth}\n\n{}",
        &toml[..start],
        &toml[end..]
    )
}

/// Replaces `path` at once, as the kubelet does (a reader never sees it half-written).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_federated_token_rotated_mid_collection_keeps_the_collection_going() {
    // Tokens live one second: every page asks for a new one, so every page after the rotation
    // needs the new workload token.
    let h = Harness::graph()
        .rate(600)
        .sim(|c| c.token_lifetime_secs = 1)
        .page_size(50)
        .build();
    let sim = h.sim();
    let identity = sim.config().identity.clone();
    let token_file = h.path("azure-identity-token");
    write_atomically(&token_file, &identity.federate(ISSUER, SUBJECT));

    // At the 5th page the platform rotates the token; the simulator refuses the old one from
    // then on, so only token requests that read the file again succeed.
    let requests = Arc::new(AtomicUsize::new(0));
    let (seen, file) = (requests.clone(), token_file.clone());
    sim.on_data_request(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) == 5 {
            write_atomically(&file, &identity.rotate_federated_token());
        }
    });

    let toml = with_auth(
        &h,
        &format!(
            "method = \"oauth_federated\"\ntenant_id = \"sim-tenant\"\nclient_id = \"sim-client\"\n\
             login_url = \"{}\"\ntoken_file = {:?}",
            sim.base_url(),
            token_file.to_str().unwrap()
        ),
    );
    let report = run_once(&parse(&toml), opts());
    assert!(
        requests.load(Ordering::SeqCst) >= 15,
        "pages after the rotation: {requests:?}"
    );
    h.assert_exactly_once(&report);
}

#[test]
fn a_managed_identity_collects_a_window_from_the_metadata_endpoint() {
    let h = Harness::graph().rate(120).build();
    let sim = h.sim();
    sim.config()
        .identity
        .assign_managed_identity(Some("mi-client"), true);
    let toml = with_auth(
        &h,
        &format!(
            "method = \"managed_identity\"\nclient_id = \"mi-client\"\nimds_url = \"{}\"",
            sim.base_url()
        ),
    );
    let report = run_once(&parse(&toml), opts());
    h.assert_exactly_once(&report);
}

/// The first job's error of a run with `auth`, against a simulator set up by `setup`.
fn run_error(setup: impl FnOnce(&SimServer), auth: impl FnOnce(&SimServer) -> String) -> String {
    let h = Harness::graph().build();
    setup(h.sim());
    let toml = with_auth(&h, &auth(h.sim()));
    let report = run_once(&parse(&toml), opts());
    assert!(!report.all_succeeded(), "{report:?}");
    report.jobs[0].1.error.clone().unwrap_or_default()
}

#[test]
fn managed_identity_errors_name_the_fix() {
    let imds = |sim: &SimServer| {
        format!(
            "method = \"managed_identity\"\nimds_url = \"{}\"",
            sim.base_url()
        )
    };
    let none = run_error(|_| {}, imds);
    assert!(
        none.contains("no managed identity is assigned") && none.contains("az vm identity assign"),
        "{none}"
    );
    let user_assigned = run_error(
        |sim| sim.config().identity.assign_managed_identity(None, true),
        |sim| format!("{}\nclient_id = \"other\"", imds(sim)),
    );
    assert!(
        user_assigned.contains("no identity with client_id other"),
        "{user_assigned}"
    );
    let no_role = run_error(
        |sim| sim.config().identity.assign_managed_identity(None, false),
        imds,
    );
    assert!(
        no_role.contains("carries no app role")
            && no_role.contains("ExchangeMessageTrace.Read.All"),
        "{no_role}"
    );
}

#[test]
fn federated_token_errors_name_the_fix() {
    let h = Harness::graph().build();
    let missing = h.path("missing-token");
    let auth = |sim: &SimServer, file: &Path| {
        format!(
            "method = \"oauth_federated\"\ntenant_id = \"sim-tenant\"\nclient_id = \"sim-client\"\n\
             login_url = \"{}\"\ntoken_file = {:?}",
            sim.base_url(),
            file.to_str().unwrap()
        )
    };
    // Checked before a run starts (and by `msgtrace validate`).
    let config = parse(&with_auth(&h, &auth(h.sim(), &missing)));
    let err = msgtrace::preflight::check(&config).unwrap_err().to_string();
    assert!(
        err.starts_with("sources.src.auth.token_file: the federated token file")
            && err.contains("does not exist")
            && err.contains("azure.workload.identity/use"),
        "{err}"
    );

    // A token from an issuer the app registration has no federated credential for.
    let foreign = h.path("foreign-token");
    let err = run_error(
        |sim| {
            sim.config().identity.federate(ISSUER, SUBJECT);
            let other = msgtrace_simulator::SimIdentity::default();
            write_atomically(&foreign, &other.federate("https://other.example", SUBJECT));
        },
        |sim| auth(sim, &foreign),
    );
    assert!(
        err.contains("AADSTS700211") && err.contains("az ad app federated-credential create"),
        "{err}"
    );
}

#[test]
fn secretless_configuration_takes_the_azure_variables_and_checks_imds_url() {
    let sink = "[sinks.s]\ntype = \"stdout\"\ninputs = [\"a\"]\n";
    let with_auth = |auth: &str| format!("[sources.a]\n[sources.a.auth]\n{auth}\n{sink}");
    let azure = |name: &str| match name {
        "AZURE_TENANT_ID" => Some("env-tenant".to_owned()),
        "AZURE_CLIENT_ID" => Some("env-client".to_owned()),
        "AZURE_FEDERATED_TOKEN_FILE" => {
            Some("/var/run/secrets/azure/tokens/azure-identity-token".to_owned())
        }
        _ => None,
    };
    let federated = "method = \"oauth_federated\"";
    let config = config::from_str_with_env(&with_auth(federated), &azure).unwrap();
    let config::AuthConfig::OAuthFederated { app, token_file } = &config.sources["a"].auth else {
        panic!("{:?}", config.sources["a"].auth);
    };
    assert_eq!(
        (app.tenant_id.as_str(), app.client_id.as_str()),
        ("env-tenant", "env-client")
    );
    assert_eq!(
        token_file,
        Path::new("/var/run/secrets/azure/tokens/azure-identity-token")
    );
    // The file's keys win over the environment.
    let config = config::from_str_with_env(
        &with_auth(&format!(
            "{federated}\ntenant_id = \"t\"\ntoken_file = \"/t\""
        )),
        &azure,
    )
    .unwrap();
    assert_eq!(config.sources["a"].auth.oauth().unwrap().tenant_id, "t");

    let errors = config::from_str_with_env(&with_auth(federated), &|_| None).unwrap_err();
    let paths: Vec<_> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "sources.a.auth.tenant_id",
            "sources.a.auth.client_id",
            "sources.a.auth.token_file"
        ],
        "{errors}"
    );
    assert!(
        errors
            .to_string()
            .contains("or AZURE_FEDERATED_TOKEN_FILE in the environment"),
        "{errors}"
    );

    let mi = |extra: &str| {
        config::from_str_with_env(
            &with_auth(&format!("method = \"managed_identity\"\n{extra}")),
            &azure,
        )
    };
    let config = mi("").unwrap();
    let config::AuthConfig::ManagedIdentity {
        client_id,
        resource,
        imds_url,
    } = &config.sources["a"].auth
    else {
        panic!()
    };
    assert_eq!(imds_url.as_str(), "http://169.254.169.254/");
    assert_eq!(resource, "https://graph.microsoft.com");
    assert_eq!(*client_id, None, "AZURE_CLIENT_ID is for workload identity");
    for ok in [
        "http://127.0.0.1:40342",
        "http://[::1]:8080",
        "http://169.254.169.254",
        "https://imds.example",
    ] {
        if let Err(e) = mi(&format!("imds_url = \"{ok}\"")) {
            panic!("{ok}: {e}");
        }
    }
    for bad in [
        "http://10.0.0.5",
        "http://imds.example",
        "https://imds.example/metadata",
        "ftp://127.0.0.1",
    ] {
        let errors = mi(&format!("imds_url = \"{bad}\"")).unwrap_err();
        assert_eq!(errors.errors.len(), 1, "{bad}: {errors}");
        assert_eq!(errors.errors[0].path, "sources.a.auth.imds_url", "{errors}");
    }
    let errors = mi("token_file = \"/t\"\ntenant_id = \"t\"").unwrap_err();
    assert_eq!(
        errors.to_string(),
        "sources.a.auth.tenant_id: not used by method managed_identity (it belongs to oauth, oauth_secret, \
         oauth_cert, oauth_federated); remove it or change method\n\
         sources.a.auth.token_file: not used by method managed_identity (it belongs to oauth_federated); \
         remove it or change method"
    );
}
