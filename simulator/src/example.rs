//! The configuration that `msgtrace simulate` prints at start: one Graph source collecting from
//! the simulated tenant into a file in the current directory. `examples/simulate.toml` is this
//! text for the default `--listen 127.0.0.1:8465` (a unit test keeps the two the same).

/// The environment variable that `msgtrace simulate` reads its accepted client secret from, and
/// that the printed configuration expands as its `client_secret`: one shell that exports it runs
/// both.
pub const SIM_SECRET_VAR: &str = "MSGTRACE_SIM_SECRET";

/// A ready configuration for the simulated tenant at `base_url` (`http://127.0.0.1:8465`) that
/// accepts `tenant_id` and `client_id`.
///
/// ```
/// let toml = msgtrace_simulator::example_config("http://127.0.0.1:8465", "sim-tenant", "sim-client");
/// let env = |name: &str| (name == "MSGTRACE_SIM_SECRET").then(|| "sim-secret".to_string());
/// let config = msgtrace::config::from_str_with_env(&toml, &env).unwrap();
/// assert_eq!(config.sources.len(), 1);
/// ```
pub fn example_config(base_url: &str, tenant_id: &str, client_id: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"# Collects from `msgtrace simulate` (the simulated tenant on loopback) into ./sim-events.ndjson.
# `msgtrace simulate` prints it for its --listen address at start (examples/simulate.toml is the
# one for the default, 127.0.0.1:8465). The client secret is read from {SIM_SECRET_VAR}, the
# variable the simulator reads it from too (its default secret is `sim-secret`):
#
#   msgtrace simulate &
#   {SIM_SECRET_VAR}=sim-secret msgtrace run -c simulate.toml --once

state_dir = "msgtrace-sim-state"

[sources.sim]
description = "the simulated tenant of msgtrace simulate"
api = "graph"
url = {url}
poll_interval_mins = 5
start = "-3h@h"
end = "-1h@h"

[sources.sim.auth]
method = "oauth"
tenant_id = {tenant_id}
client_id = {client_id}
client_secret = "${{{SIM_SECRET_VAR}}}"
login_url = {login_url}

[sinks.out]
type = "file"
inputs = ["sim"]
path = "sim-events.ndjson"
"#,
        url = quote(&format!("{base_url}{}", super::GRAPH_PATH)),
        tenant_id = quote(tenant_id),
        client_id = quote(client_id),
        login_url = quote(base_url),
    )
}

#[cfg(test)]
mod tests {
    use super::example_config;

    #[test]
    fn examples_simulate_toml_is_what_simulate_prints_for_its_default_address() {
        assert_eq!(
            include_str!("../../examples/simulate.toml"),
            example_config("http://127.0.0.1:8465", "sim-tenant", "sim-client"),
            "examples/simulate.toml is out of date: regenerate it from `msgtrace simulate`'s banner"
        );
    }
}
