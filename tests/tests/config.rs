//! Bad configuration is refused when the plugin starts (issue 2, CONTRACT "Plugin configuration").
//!
//! What Envoy 1.40 does with it: the filter's `on_configure` returns false on the main thread,
//! Envoy logs `Unable to create Wasm plugin <name>` (the filter is `FAIL_CLOSED`) and exits with
//! status 1 before the listener opens. So each case asserts that exit, and that the plugin logged
//! exactly one error line, naming the field, without the secret from the configuration.
//!
//! On ngx_wasm_module a false `on_configure` ends the nginx worker, which is not restarted: once
//! every worker is gone, every route of the server accepts connections nobody answers. There the
//! filter stays up unconfigured instead, and answers 503 on its route: each case asserts that
//! (with one worker, so one error line).

use okta_dcr_auth_tests::*;
use serde_json::{json, Value};

/// A secret in every refused configuration, to prove the refusal does not log it.
const CONFIG_SECRET: &str = "config-Introspection_Secret_0a1b2c";

fn refused(config: Value) -> StartFailure {
    refused_with(Stack::builder().route("/", config))
}

fn refused_with(builder: StackBuilder) -> StartFailure {
    if on_ngx() {
        return refused_on_ngx(builder);
    }
    match builder.try_start() {
        Ok(mut stack) => {
            let r = stack.get(
                "/",
                &[("authorization", &basic_header("0oa8x", "y-Secret_123456"))],
            );
            let running = stack.envoy_running();
            panic!(
                "Envoy started with a bad configuration (running: {running}); a request got {}: {r:#?}",
                r.status
            );
        }
        Err(failure) => failure,
    }
}

/// ngx_wasm_module: nginx runs, the filter's route answers 503 `filter not configured`, a route
/// without the filter still works, nothing went upstream through the filter. Returns the log.
fn refused_on_ngx(builder: StackBuilder) -> StartFailure {
    let stack = builder.open_route("/open").concurrency(1).start();
    let secret = "y-Secret_123456";
    stack.track_secret(secret);
    let r = stack.get("/", &[("authorization", &basic_header("0oa8x", secret))]);
    assert_local_503(&r);
    assert_eq!(r.message(), "filter not configured", "{r:#?}");
    assert_eq!(
        stack.echo.count(),
        0,
        "went upstream without a configuration"
    );
    let r = stack.get("/open", &[]);
    assert_eq!(
        r.status, 200,
        "a route without the filter still works: {r:#?}"
    );
    StartFailure {
        reason: "started unconfigured (ngx_wasm_module)".into(),
        status: None,
        log: stack.host_log(),
        dir: std::path::PathBuf::new(),
    }
}

/// Envoy exited, naming the plugin (on ngx_wasm_module: see [`refused_on_ngx`]); the plugin
/// logged one error line that contains `field`.
fn assert_refused_naming(failure: &StartFailure, field: &str) {
    let log = &failure.log;
    if !on_ngx() {
        let exited = failure.status.map(|s| !s.success()).unwrap_or(false);
        assert!(exited, "Envoy should exit with an error status: {failure}");
        assert!(
            log.contains("Unable to create Wasm plugin okta-dcr-auth-0"),
            "Envoy should say which plugin failed: {failure}"
        );
    }
    let errors: Vec<&str> = plugin_log_lines(log)
        .into_iter()
        .filter(|l| l.contains("[error]") || l.contains("[critical]"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one plugin error line, got {errors:#?}\n{failure}"
    );
    assert!(
        errors[0].contains(field),
        "the plugin's error line should name `{field}`: {}",
        errors[0]
    );
    eprintln!("refused as expected: {}", errors[0]);
    let leaks = find_secrets_in_log(log, &[CONFIG_SECRET, GATEWAY_CLIENT_SECRET]);
    assert!(leaks.is_empty(), "secret in the log: {leaks:#?}");
    let _ = std::fs::remove_dir_all(&failure.dir);
}

fn with_secret(overrides: Value) -> Value {
    let mut config = filter_config(json!({ "introspection_client_secret": CONFIG_SECRET }));
    if let (Some(c), Value::Object(o)) = (config.as_object_mut(), overrides) {
        for (k, v) in o {
            c.insert(k, v);
        }
    }
    config
}

#[test]
fn openid_scope_is_refused_at_start() {
    let failure = refused(with_secret(json!({ "scopes": ["api:read", "openid"] })));
    assert_refused_naming(&failure, "scopes");
}

#[test]
fn unknown_field_is_refused_at_start() {
    let failure = refused(with_secret(json!({ "cache_ttl_seconds": 60 })));
    assert_refused_naming(&failure, "cache_ttl_seconds");
}

#[test]
fn zero_idp_timeout_is_refused_at_start() {
    let failure = refused(with_secret(json!({ "idp_timeout_ms": 0 })));
    assert_refused_naming(&failure, "idp_timeout_ms");
}

#[test]
fn plain_http_issuer_is_refused_for_a_non_loopback_host() {
    let failure = refused(with_secret(
        json!({ "issuer": "http://dev-123.okta.com/oauth2/default" }),
    ));
    assert_refused_naming(&failure, "issuer");
}

#[test]
fn missing_issuer_is_refused_at_start() {
    let failure = refused(with_secret(json!({ "issuer": null })));
    assert_refused_naming(&failure, "issuer");
}

#[test]
fn introspecting_bearer_without_an_introspection_client_is_refused() {
    let failure = refused(filter_config(json!({
        "accept": ["basic", "bearer"],
        "bearer_validation": "introspection",
        "introspection_client_id": null,
        "introspection_client_secret": null,
    })));
    assert_refused_naming(&failure, "introspection_client");
}

#[test]
fn checking_jwts_without_an_audience_is_refused() {
    let failure = refused(filter_config(json!({ "audience": null })));
    assert_refused_naming(&failure, "audience");
}

#[test]
fn an_hmac_algorithm_is_refused() {
    let failure = refused(filter_config(
        json!({ "jwt_algorithms": ["RS256", "HS256"] }),
    ));
    assert_refused_naming(&failure, "jwt_algorithms");
}

#[test]
fn unknown_accept_value_is_refused() {
    let failure = refused(with_secret(json!({ "accept": ["basic", "digest"] })));
    assert_refused_naming(&failure, "accept");
}

#[test]
fn configuration_that_is_not_json_is_refused() {
    let failure = refused_with(Stack::builder().route_raw_config("/", "{\"issuer\": "));
    let exited = failure.status.map(|s| !s.success()).unwrap_or(false);
    assert!(
        exited || on_ngx(),
        "Envoy should exit with an error status: {failure}"
    );
    let errors: Vec<&str> = plugin_log_lines(&failure.log)
        .into_iter()
        .filter(|l| l.contains("[error]"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one plugin error line: {errors:#?}\n{failure}"
    );
    let _ = std::fs::remove_dir_all(&failure.dir);
}

/// `introspection_client_secret_env` names a variable of the VM's environment that it does not
/// have: the configuration is refused at start, naming the field and the variable.
#[test]
fn an_introspection_secret_from_a_missing_environment_variable_is_refused() {
    let failure = refused(introspection_filter_config(json!({
        "introspection_client_secret": null,
        "introspection_client_secret_env": "OKTA_SECRET_NOBODY_SET",
    })));
    assert!(
        failure
            .log
            .contains("field `introspection_client_secret_env`"),
        "{}",
        failure.log
    );
    assert!(failure.log.contains("OKTA_SECRET_NOBODY_SET"));
}

/// A registrations configuration that cannot work is refused at start, naming the field: a
/// `product` without a document, and an inline document that is not one (the line says where,
/// never what).
#[test]
fn a_registrations_configuration_that_cannot_work_is_refused() {
    let failure = refused(filter_config(json!({ "product": "payments-v1" })));
    assert!(
        failure.log.contains("field `registrations`"),
        "{}",
        failure.log
    );
    let failure = refused(filter_config(json!({
        "product": "payments-v1",
        "registrations": { "applications": [{ "client_id": 5, "secret-marker": "x" }] },
    })));
    assert!(
        failure.log.contains("field `registrations`"),
        "{}",
        failure.log
    );
}
