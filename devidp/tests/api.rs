//! The dev IdP and echo server over real HTTP, through the public API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use okta_dev_idp::{
    EchoHandle, Endpoint, Fault, FaultAnswer, IdpHandle, IdpOptions, Signing, TokenRequestRecord,
    TokenSpec,
};
use serde_json::{json, Value};

const FORM: &str = "application/x-www-form-urlencoded";

fn get(url: &str) -> Answer {
    to_answer(agent().get(url).call())
}

fn post_form(url: &str, authorization: Option<&str>, body: &str) -> Answer {
    let mut req = agent().post(url).content_type(FORM);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    to_answer(req.send(body))
}

fn post_json(url: &str, body: &Value) -> Answer {
    to_answer(
        agent()
            .post(url)
            .content_type("application/json")
            .send(body.to_string()),
    )
}

fn token_url(idp: &IdpHandle) -> String {
    format!("{}/v1/token", idp.issuer())
}

fn introspect_url(idp: &IdpHandle) -> String {
    format!("{}/v1/introspect", idp.issuer())
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Whether `token` is an RS256 JWS that verifies under the key its `kid` names in `jwks`.
fn rs256_verifies(jwks: &Value, token: &str) -> bool {
    use rsa::{BoxedUint, Pkcs1v15Sign, PublicKey};
    use sha2::{Digest, Sha256};
    let header = jwt_part(token, 0);
    if header["alg"] != "RS256" {
        return false;
    }
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    let number = |name: &str| {
        BoxedUint::from_be_slice_vartime(
            &URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap(),
        )
    };
    let key = PublicKey::new(number("n"), number("e")).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    key.verify(
        Pkcs1v15Sign::new::<Sha256>(),
        &Sha256::digest(input.as_bytes()),
        &signature,
    )
    .is_ok()
}

fn idp_with_client() -> IdpHandle {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.register_client("0oaApp", "s3cret", &["api:read", "api:write"]);
    idp.register_client("0oaGateway", "gw-secret", &[]);
    idp
}

fn client_credentials(idp: &IdpHandle, auth: Option<&str>, scope: Option<&str>) -> Answer {
    let body = match scope {
        Some(s) => format!(
            "grant_type=client_credentials&scope={}",
            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        ),
        None => "grant_type=client_credentials".to_string(),
    };
    post_form(&token_url(idp), auth, &body)
}

fn introspect(idp: &IdpHandle, token: &str) -> Answer {
    post_form(
        &introspect_url(idp),
        Some(&basic("0oaGateway", "gw-secret")),
        &format!("token={token}&token_type_hint=access_token"),
    )
}

fn assert_oauth_error(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let body = a.json();
    assert_eq!(body["error"], error, "{}", a.body);
    assert!(body["error_description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert_eq!(a.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(a.header("pragma"), Some("no-cache"));
    if status == 401 {
        assert!(a
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic realm=")));
    }
}

#[test]
fn token_success_is_okta_shaped() {
    let idp = idp_with_client();
    let a = client_credentials(&idp, Some(&basic("0oaApp", "s3cret")), Some("api:read"));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(a.header("cache-control"), Some("no-cache, no-store"));
    assert_eq!(a.header("pragma"), Some("no-cache"));
    let body = a.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "api:read");
    let token = body["access_token"].as_str().unwrap();
    let header = jwt_part(token, 0);
    assert_eq!(header, json!({"kid": idp.signing_kid(), "alg": "RS256"}));
    assert!(rs256_verifies(&idp.jwks(), token));
    let claims = jwt_part(token, 1);
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], "api://default");
    assert_eq!(claims["cid"], "0oaApp");
    assert_eq!(claims["sub"], "0oaApp");
    assert_eq!(claims["app_id"], "0oaApp");
    assert_eq!(claims["scp"], json!(["api:read"]));
    assert!(claims["jti"].as_str().unwrap().starts_with("AT."));
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 3600);
    assert!((iat - now()).abs() < 5);

    // Several scopes, duplicates and extra spaces collapse.
    let a = client_credentials(
        &idp,
        Some(&basic("0oaApp", "s3cret")),
        Some("api:write  api:read api:write"),
    );
    assert_eq!(a.json()["scope"], "api:write api:read");

    assert_eq!(idp.calls(Endpoint::Token), 2);
    assert_eq!(
        idp.token_requests()[0],
        TokenRequestRecord {
            client_id: "0oaApp".into(),
            client_secret: "s3cret".into(),
            grant_type: "client_credentials".into(),
            scope: Some("api:read".into()),
            authorization_scheme: "Basic".into(),
        }
    );
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
    assert!(idp.issuer().ends_with("/oauth2/default"));
    assert_eq!(
        idp.issuer(),
        format!("http://{}/oauth2/default", idp.addr())
    );
}

#[test]
fn invalid_client_answers() {
    let idp = idp_with_client();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("wrong secret", Some(basic("0oaApp", "wrong"))),
        ("secret prefix", Some(basic("0oaApp", "s3cre"))),
        ("unknown client", Some(basic("0oaNobody", "s3cret"))),
        ("missing auth", None),
        ("bad base64", Some("Basic !!!notbase64".into())),
        (
            "no colon",
            Some(format!("Basic {}", STANDARD.encode("0oaApps3cret"))),
        ),
        ("bearer", Some("Bearer abc".into())),
        ("raw unencoded", Some("Basic 0oaApp:s3cret".into())),
    ];
    for (name, auth) in cases {
        let a = client_credentials(&idp, auth.as_deref(), Some("api:read"));
        assert_oauth_error(&a, 401, "invalid_client");
        assert!(!a.body.contains("s3cret"), "{name}");
    }
    // Rotation and removal.
    idp.set_client_secret("0oaApp", "n3w");
    let a = client_credentials(&idp, Some(&basic("0oaApp", "s3cret")), Some("api:read"));
    assert_oauth_error(&a, 401, "invalid_client");
    let a = client_credentials(&idp, Some(&basic("0oaApp", "n3w")), Some("api:read"));
    assert_eq!(a.status, 200);
    idp.remove_client("0oaApp");
    let a = client_credentials(&idp, Some(&basic("0oaApp", "n3w")), Some("api:read"));
    assert_oauth_error(&a, 401, "invalid_client");
}

#[test]
fn invalid_scope_answers() {
    let idp = idp_with_client();
    let auth = basic("0oaApp", "s3cret");
    for scope in [
        Some("api:admin"),
        Some("api:read api:admin"),
        Some("openid"),
        Some("openid api:read"),
        None,
        Some(""),
    ] {
        let a = client_credentials(&idp, Some(&auth), scope);
        assert_oauth_error(&a, 400, "invalid_scope");
    }

    // With default scopes configured, a request without scope gets those the client may have.
    let idp = IdpHandle::spawn_with(
        "127.0.0.1:0",
        IdpOptions {
            default_scopes: vec!["api:read".into(), "api:other".into()],
            ..IdpOptions::default()
        },
    )
    .unwrap();
    idp.register_client("0oaApp", "s3cret", &["api:read"]);
    idp.register_client("0oaNone", "s3cret", &["x"]);
    let a = client_credentials(&idp, Some(&auth), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["scope"], "api:read");
    let a = client_credentials(&idp, Some(&basic("0oaNone", "s3cret")), None);
    assert_oauth_error(&a, 400, "invalid_scope");
}

#[test]
fn grant_type_method_and_content_type() {
    let idp = idp_with_client();
    let auth = basic("0oaApp", "s3cret");
    let a = post_form(
        &token_url(&idp),
        Some(&auth),
        "grant_type=password&scope=api:read",
    );
    assert_oauth_error(&a, 400, "unsupported_grant_type");
    let a = post_form(&token_url(&idp), Some(&auth), "scope=api:read");
    assert_oauth_error(&a, 400, "invalid_request");
    let a = post_form(
        &token_url(&idp),
        Some(&auth),
        "grant_type=client_credentials&grant_type=client_credentials",
    );
    assert_oauth_error(&a, 400, "invalid_request");
    let a = to_answer(
        agent()
            .post(&token_url(&idp))
            .header("authorization", &auth)
            .content_type("application/json")
            .send(r#"{"grant_type":"client_credentials"}"#),
    );
    assert_oauth_error(&a, 400, "invalid_request");
    let a = get(&token_url(&idp));
    assert_eq!(a.status, 405);
    assert_eq!(a.json()["errorCode"], "E0000022");
    // Content type parameters are fine.
    let a = to_answer(
        agent()
            .post(&token_url(&idp))
            .header("authorization", &auth)
            .content_type("application/x-www-form-urlencoded; charset=UTF-8")
            .send("grant_type=client_credentials&scope=api%3Aread"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(idp.calls(Endpoint::Token), 6);
    assert_eq!(idp.token_requests().len(), 6);
    assert_eq!(idp.token_requests()[1].grant_type, "");
}

#[test]
fn credentials_are_form_decoded_after_base64() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let secret = "a:b+c%d/e f=g&h";
    idp.register_client("0oa id+x", secret, &["s"]);
    // Encoded per RFC 6749 2.3.1: ' ' as '+', '+' as %2B, ':' as %3A, ...
    let a = client_credentials(&idp, Some(&basic("0oa id+x", secret)), Some("s"));
    assert_eq!(a.status, 200, "{}", a.body);
    let record = idp.token_requests().pop().unwrap();
    assert_eq!(record.client_id, "0oa id+x");
    assert_eq!(record.client_secret, secret);
    assert_eq!(record.authorization_scheme, "Basic");

    // Spelled by hand: %3A and %2B decode, '+' is a space; the scheme is case-insensitive.
    let hand = format!(
        "bAsIc {}",
        STANDARD.encode("0oa+id%2Bx:a%3Ab%2Bc%25d%2Fe+f%3Dg%26h")
    );
    let a = client_credentials(&idp, Some(&hand), Some("s"));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        idp.token_requests().pop().unwrap().authorization_scheme,
        "bAsIc"
    );

    // Not form-encoded: '+' becomes a space, so the secret no longer matches.
    let raw = format!("Basic {}", STANDARD.encode(format!("0oa+id%2Bx:{secret}")));
    let a = client_credentials(&idp, Some(&raw), Some("s"));
    assert_oauth_error(&a, 401, "invalid_client");
    assert_eq!(
        idp.token_requests().pop().unwrap().client_secret,
        "a:b c%d/e f=g&h"
    );
}

#[test]
fn fault_status_garbage_html_empty_custom() {
    let idp = idp_with_client();
    let auth = basic("0oaApp", "s3cret");

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(500)));
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_eq!(a.status, 500);
    assert_eq!(a.json()["errorCode"], "E0000009");

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(503)));
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        503
    );

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(401)));
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_oauth_error(&a, 401, "invalid_client");

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Garbage));
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(serde_json::from_str::<Value>(&a.body).is_err());
    assert!(!a.body.is_empty());

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Html));
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert!(a.body.contains("<html>"));

    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::EmptyOk));
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());

    idp.set_fault(
        Endpoint::Token,
        Fault::answer(FaultAnswer::Custom {
            status: 418,
            content_type: "text/plain".into(),
            body: "teapot".into(),
            headers: vec![("x-custom".into(), "1".into())],
        }),
    );
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert_eq!(a.status, 418);
    assert_eq!(a.body, "teapot");
    assert_eq!(a.header("x-custom"), Some("1"));
    assert_eq!(a.header("content-type"), Some("text/plain"));

    // Faults are per endpoint, persist, and count.
    assert_eq!(get(&format!("{}/v1/keys", idp.issuer())).status, 200);
    assert_eq!(idp.calls(Endpoint::Token), 7);
    assert_eq!(idp.token_requests().len(), 7);

    idp.clear_fault(Endpoint::Token);
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        200
    );

    idp.set_fault(Endpoint::Keys, Fault::answer(FaultAnswer::Status(404)));
    idp.set_fault(Endpoint::Discovery, Fault::answer(FaultAnswer::Status(502)));
    assert_eq!(get(&format!("{}/v1/keys", idp.issuer())).status, 404);
    let disco = format!("{}/.well-known/oauth-authorization-server", idp.issuer());
    assert_eq!(get(&disco).status, 502);
    idp.clear_faults();
    assert_eq!(get(&disco).status, 200);
    assert_eq!(get(&format!("{}/v1/keys", idp.issuer())).status, 200);
}

#[test]
fn fault_rate_limited_is_okta_429() {
    let idp = idp_with_client();
    idp.set_fault(
        Endpoint::Token,
        Fault::answer(FaultAnswer::RateLimited { reset_in_secs: 30 }),
    );
    let a = client_credentials(&idp, Some(&basic("0oaApp", "s3cret")), Some("api:read"));
    assert_eq!(a.status, 429);
    assert!(
        a.header("x-rate-limit-limit")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(a.header("x-rate-limit-remaining"), Some("0"));
    let reset: i64 = a.header("x-rate-limit-reset").unwrap().parse().unwrap();
    assert!((reset - (now() + 30)).abs() <= 2, "{reset}");
    let body = a.json();
    assert_eq!(body["errorCode"], "E0000047");
    assert_eq!(
        body["errorSummary"],
        "API call exceeded rate limit due to too many requests."
    );
    assert_eq!(body["errorLink"], "E0000047");
    assert!(body["errorId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(body["errorCauses"], json!([]));
}

#[test]
fn fault_delay_comes_before_the_answer() {
    let idp = idp_with_client();
    let auth = basic("0oaApp", "s3cret");
    idp.set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(400)));
    let start = Instant::now();
    let a = client_credentials(&idp, Some(&auth), Some("api:read"));
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(a.status, 200);

    idp.set_fault(
        Endpoint::Token,
        Fault {
            delay: Duration::from_millis(300),
            answer: FaultAnswer::Status(500),
        },
    );
    let start = Instant::now();
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        500
    );
    assert!(start.elapsed() >= Duration::from_millis(300));

    // A client that gives up does not stop the server; the call still counts.
    idp.set_fault(Endpoint::Token, Fault::delay(Duration::from_secs(5)));
    let impatient = agent_with(Duration::from_millis(200));
    assert!(impatient
        .post(&token_url(&idp))
        .content_type(FORM)
        .send("grant_type=client_credentials")
        .is_err());
    idp.clear_faults();
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        200
    );
    assert_eq!(idp.calls(Endpoint::Token), 4);
}

#[test]
fn a_call_abandoned_during_its_delay_is_received_but_not_answered() {
    let idp = idp_with_client();
    let auth = basic("0oaApp", "s3cret");
    idp.set_fault(Endpoint::Token, Fault::delay(Duration::from_millis(600)));
    let impatient = agent_with(Duration::from_millis(100));
    assert!(impatient
        .post(&token_url(&idp))
        .content_type(FORM)
        .send("grant_type=client_credentials")
        .is_err());
    // Past the delay: the abandoned call was dropped, not answered late.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(idp.calls(Endpoint::Token), 1);
    assert_eq!(idp.answered(Endpoint::Token), 0);
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        200
    );
    assert_eq!(idp.calls(Endpoint::Token), 2);
    assert_eq!(idp.answered(Endpoint::Token), 1);
    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::Status(500)));
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("api:read")).status,
        500
    );
    assert_eq!(
        idp.answered(Endpoint::Token),
        2,
        "a faulted answer is an answer"
    );
    idp.set_fault(Endpoint::Token, Fault::answer(FaultAnswer::ResetConnection));
    assert!(client_credentials_result_is_err(&idp, &auth));
    assert_eq!(idp.calls(Endpoint::Token), 4);
    assert_eq!(idp.answered(Endpoint::Token), 2, "a reset is no answer");
    idp.reset_counters();
    assert_eq!(idp.answered(Endpoint::Token), 0);
}

fn client_credentials_result_is_err(idp: &IdpHandle, auth: &str) -> bool {
    agent()
        .post(&token_url(idp))
        .header("authorization", auth)
        .content_type(FORM)
        .send("grant_type=client_credentials&scope=api%3Aread")
        .is_err()
}

fn raw_exchange(
    addr: std::net::SocketAddr,
    request: &str,
) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, None),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return (received, Some(e.kind())),
        }
    }
}

#[test]
fn fault_reset_connection_drops_tcp_without_answer() {
    let idp = idp_with_client();
    idp.set_fault(
        Endpoint::Token,
        Fault {
            delay: Duration::from_millis(100),
            answer: FaultAnswer::ResetConnection,
        },
    );
    let body = "grant_type=client_credentials&scope=api%3Aread";
    let request = format!(
        "POST /oauth2/default/v1/token HTTP/1.1\r\nHost: idp\r\nAuthorization: {}\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n{body}",
        basic("0oaApp", "s3cret"),
        body.len()
    );
    let start = Instant::now();
    let (received, error) = raw_exchange(idp.addr(), &request);
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(error, Some(std::io::ErrorKind::ConnectionReset));

    // An HTTP client sees a transport error, not an answer.
    assert!(agent()
        .post(&token_url(&idp))
        .header("authorization", &basic("0oaApp", "s3cret"))
        .content_type(FORM)
        .send(body)
        .is_err());
    assert_eq!(idp.calls(Endpoint::Token), 2);
    assert_eq!(idp.token_requests().len(), 2);

    // The server itself goes on.
    idp.clear_fault(Endpoint::Token);
    let (received, _) = raw_exchange(
        idp.addr(),
        &request.replacen("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n", 1),
    );
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
}

#[test]
fn introspection_active_token() {
    let idp = idp_with_client();
    let mut spec = TokenSpec::for_client("0oaApp", &["api:read", "api:write"]);
    spec.claims.insert("tier".into(), json!("gold"));
    let token = idp.mint_token(spec);
    let a = introspect(&idp, &token);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("cache-control"), Some("no-cache, no-store"));
    let body = a.json();
    assert_eq!(body["active"], true);
    assert_eq!(body["scope"], "api:read api:write");
    assert_eq!(body["client_id"], "0oaApp");
    assert_eq!(body["username"], "0oaApp");
    assert_eq!(body["sub"], "0oaApp");
    assert_eq!(body["iss"], idp.issuer());
    assert_eq!(body["aud"], "api://default");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["app_id"], "0oaApp");
    assert_eq!(body["tier"], "gold");
    assert!(body["jti"].as_str().unwrap().starts_with("AT."));
    let exp = body["exp"].as_i64().unwrap();
    assert_eq!(exp - body["iat"].as_i64().unwrap(), 3600);
    assert!(body.get("scp").is_none() && body.get("cid").is_none());

    introspect(&idp, &token);
    assert_eq!(idp.introspections(&token), 2);
    assert_eq!(idp.introspections("other"), 0);
    assert_eq!(idp.calls(Endpoint::Introspect), 2);

    // A token from /v1/token introspects too.
    let issued = client_credentials(&idp, Some(&basic("0oaApp", "s3cret")), Some("api:write"));
    let issued = issued.json()["access_token"].as_str().unwrap().to_string();
    let body = introspect(&idp, &issued).json();
    assert_eq!(body["active"], true);
    assert_eq!(body["scope"], "api:write");
    assert_eq!(body["app_id"], "0oaApp");
}

#[test]
fn introspection_custom_issuer_audience_and_claims() {
    let idp = idp_with_client();
    let mut spec = TokenSpec::for_client("0oaApp", &["api:read"]);
    spec.issuer = Some("https://evil.example/oauth2/default".into());
    spec.audience = Some("api://other".into());
    spec.claims.insert("app_id".into(), Value::Null);
    spec.claims.insert("cid".into(), json!("0oaOverride"));
    let body = introspect(&idp, &idp.mint_token(spec)).json();
    assert_eq!(body["active"], true);
    assert_eq!(body["iss"], "https://evil.example/oauth2/default");
    assert_eq!(body["aud"], "api://other");
    assert_eq!(body["client_id"], "0oaOverride");
    assert!(body.get("app_id").is_none());

    let mut spec = TokenSpec::for_client("0oaApp", &[]);
    spec.audience = None;
    spec.expires_in_secs = 2;
    let body = introspect(&idp, &idp.mint_token(spec)).json();
    assert_eq!(body["aud"], "api://default");
    assert_eq!(body["scope"], "");
    let exp = body["exp"].as_i64().unwrap();
    assert!((exp - now() - 2).abs() <= 1);
}

#[test]
fn introspection_inactive_tokens() {
    let idp = idp_with_client();
    let inactive = json!({ "active": false });

    let a = introspect(&idp, "not-a-token");
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), inactive);

    let mut spec = TokenSpec::for_client("0oaApp", &["api:read"]);
    spec.expires_in_secs = -10;
    assert_eq!(
        introspect(&idp, &idp.mint_token(spec.clone())).json(),
        inactive
    );

    spec.introspect_active_even_if_expired = true;
    let body = introspect(&idp, &idp.mint_token(spec)).json();
    assert_eq!(body["active"], true);
    assert!(body["exp"].as_i64().unwrap() < now());

    let token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    assert_eq!(introspect(&idp, &token).json()["active"], true);
    idp.revoke(&token);
    assert_eq!(introspect(&idp, &token).json(), inactive);

    // Revocation through /v1/revoke, authenticated.
    let token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    let revoke_url = format!("{}/v1/revoke", idp.issuer());
    let a = post_form(&revoke_url, None, &format!("token={token}"));
    assert_oauth_error(&a, 401, "invalid_client");
    assert_eq!(introspect(&idp, &token).json()["active"], true);
    let a = post_form(
        &revoke_url,
        Some(&basic("0oaApp", "s3cret")),
        &format!("token={token}&token_type_hint=access_token"),
    );
    assert_eq!(a.status, 200);
    assert!(a.body.is_empty());
    assert_eq!(introspect(&idp, &token).json(), inactive);
}

#[test]
fn introspection_needs_an_authenticated_caller() {
    let idp = idp_with_client();
    let token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    let body = format!("token={token}&token_type_hint=access_token");
    for auth in [
        None,
        Some(basic("0oaGateway", "wrong")),
        Some(basic("0oaX", "gw-secret")),
    ] {
        let a = post_form(&introspect_url(&idp), auth.as_deref(), &body);
        assert_oauth_error(&a, 401, "invalid_client");
        assert!(!a.body.contains(&token));
    }
    // Counted all the same.
    assert_eq!(idp.introspections(&token), 3);
    let a = post_form(
        &introspect_url(&idp),
        Some(&basic("0oaGateway", "gw-secret")),
        "token_type_hint=access_token",
    );
    assert_oauth_error(&a, 400, "invalid_request");
    assert_eq!(get(&introspect_url(&idp)).status, 405);

    // Faults apply to introspection as to the token endpoint.
    idp.set_fault(
        Endpoint::Introspect,
        Fault::answer(FaultAnswer::Status(500)),
    );
    assert_eq!(introspect(&idp, &token).status, 500);
    idp.set_fault(
        Endpoint::Introspect,
        Fault::answer(FaultAnswer::ResetConnection),
    );
    assert!(agent()
        .post(&introspect_url(&idp))
        .content_type(FORM)
        .send(body.as_str())
        .is_err());
    idp.clear_faults();
    assert_eq!(introspect(&idp, &token).json()["active"], true);
    assert_eq!(idp.introspections(&token), 6);
    assert_eq!(idp.calls(Endpoint::Introspect), 8);

    idp.reset_counters();
    assert_eq!(idp.introspections(&token), 0);
    assert_eq!(idp.calls(Endpoint::Introspect), 0);
    assert!(idp.token_requests().is_empty());
}

#[test]
fn discovery_and_keys() {
    let idp = idp_with_client();
    let iss = idp.issuer();
    for path in [
        format!("{iss}/.well-known/oauth-authorization-server"),
        format!("{iss}/.well-known/openid-configuration"),
    ] {
        let a = get(&path);
        assert_eq!(a.status, 200, "{path}");
        let doc = a.json();
        assert_eq!(doc["issuer"], iss);
        assert_eq!(doc["token_endpoint"], format!("{iss}/v1/token"));
        assert_eq!(
            doc["introspection_endpoint"],
            format!("{iss}/v1/introspect")
        );
        assert_eq!(doc["revocation_endpoint"], format!("{iss}/v1/revoke"));
        assert_eq!(doc["jwks_uri"], format!("{iss}/v1/keys"));
        assert!(doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials")));
    }
    assert_eq!(idp.calls(Endpoint::Discovery), 2);
    let a = get(&format!("{iss}/v1/keys"));
    assert_eq!(a.status, 200);
    let jwks = a.json();
    assert_eq!(jwks, idp.jwks());
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], idp.signing_kid());
    assert_eq!(
        (
            &keys[0]["kty"],
            &keys[0]["alg"],
            &keys[0]["use"],
            &keys[0]["e"]
        ),
        (
            &json!("RSA"),
            &json!("RS256"),
            &json!("sig"),
            &json!("AQAB")
        )
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(keys[0]["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );
    assert!(keys[0].get("d").is_none() && keys[0].get("p").is_none());
    assert_eq!(idp.calls(Endpoint::Keys), 1);
    assert_eq!(idp.jwks_fetches(), 1);
    let a = get(&format!("{iss}/v1/nothing"));
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["errorCode"], "E0000007");
}

#[test]
fn admin_api() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let base = format!("http://{}", idp.addr());
    let a = post_json(
        &format!("{base}/_dev/clients"),
        &json!({"id": "0oaAdmin", "secret": "adm:in+secret", "scopes": ["s1"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(!a.body.contains("adm:in+secret"));
    let auth = basic("0oaAdmin", "adm:in+secret");
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("s1")).status,
        200
    );
    let listed = get(&format!("{base}/_dev/clients"));
    assert_eq!(listed.json(), json!([{"id": "0oaAdmin", "scopes": ["s1"]}]));

    let a = post_json(
        &format!("{base}/_dev/fault"),
        &json!({"endpoint": "token", "delay_ms": 50, "answer": "status", "status": 503}),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("s1")).status,
        503
    );
    post_json(
        &format!("{base}/_dev/fault"),
        &json!({"endpoint": "token", "answer": "rate_limited", "reset_in_secs": 5}),
    );
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("s1")).status,
        429
    );
    let a = to_answer(
        agent()
            .delete(&format!("{base}/_dev/fault?endpoint=token"))
            .call(),
    );
    assert_eq!(a.status, 204);
    assert_eq!(
        client_credentials(&idp, Some(&auth), Some("s1")).status,
        200
    );
    post_json(
        &format!("{base}/_dev/fault"),
        &json!({"endpoint": "keys", "answer": "garbage"}),
    );
    to_answer(agent().delete(&format!("{base}/_dev/fault")).call());
    assert_eq!(get(&format!("{}/v1/keys", idp.issuer())).json(), idp.jwks());

    let stats = get(&format!("{base}/_dev/stats")).json();
    assert_eq!(stats["token"], 4);
    assert_eq!(stats["keys"], 1);
    assert_eq!(stats["discovery"], 0);
    assert_eq!(stats["introspect"], 0);

    let minted = post_json(
        &format!("{base}/_dev/tokens"),
        &json!({"client_id": "0oaAdmin", "scopes": ["s1"], "claims": {"app_id": "app-1"}}),
    );
    assert_eq!(minted.status, 200, "{}", minted.body);
    let token = minted.json()["access_token"].as_str().unwrap().to_string();
    let introspected = post_form(
        &introspect_url(&idp),
        Some(&auth),
        &format!("token={token}"),
    );
    let body = introspected.json();
    assert_eq!(body["active"], true);
    assert_eq!(body["app_id"], "app-1");
    assert_eq!(body["scope"], "s1");
    assert_eq!(idp.introspections(&token), 1);

    let a = post_json(&format!("{base}/_dev/revoke"), &json!({"token": token}));
    assert_eq!(a.status, 204);
    let introspected = post_form(
        &introspect_url(&idp),
        Some(&auth),
        &format!("token={token}"),
    );
    assert_eq!(introspected.json(), json!({"active": false}));

    let a = to_answer(agent().post(&format!("{base}/_dev/reset")).send_empty());
    assert_eq!(a.status, 204);
    assert_eq!(get(&format!("{base}/_dev/stats")).json()["token"], 0);

    for bad in [
        json!({"endpoint": "nowhere"}),
        json!({"endpoint": "token", "answer": "status"}),
        json!({"endpoint": "token", "answer": "explode"}),
        json!({"endpoint": "token", "surprise": 1}),
    ] {
        let a = post_json(&format!("{base}/_dev/fault"), &bad);
        assert_eq!(a.status, 400, "{bad}");
    }
    let a = to_answer(
        agent()
            .post(&format!("{base}/_dev/clients"))
            .content_type("application/json")
            .send("{not json"),
    );
    assert_eq!(a.status, 400);

    let a = to_answer(
        agent()
            .delete(&format!("{base}/_dev/clients/0oaAdmin"))
            .call(),
    );
    assert_eq!(a.status, 204);
    let a = client_credentials(&idp, Some(&auth), Some("s1"));
    assert_oauth_error(&a, 401, "invalid_client");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<IdpHandle>();
    check::<EchoHandle>();
}

#[test]
fn one_keep_alive_connection_serves_many_requests() {
    let idp = idp_with_client();
    let agent = agent();
    for _ in 0..3 {
        let a = to_answer(
            agent
                .post(&token_url(&idp))
                .header("authorization", &basic("0oaApp", "s3cret"))
                .content_type(FORM)
                .send("grant_type=client_credentials&scope=api%3Aread"),
        );
        assert_eq!(a.status, 200);
        let a = to_answer(agent.get(&format!("{}/v1/keys", idp.issuer())).call());
        assert_eq!(a.status, 200);
    }
    // Two requests pipelined on one raw connection.
    let one = "GET /oauth2/default/v1/keys HTTP/1.1\r\nHost: x\r\n\r\n";
    let two = "GET /oauth2/default/v1/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (received, error) = raw_exchange(idp.addr(), &format!("{one}{two}"));
    assert_eq!(error, None);
    assert_eq!(
        String::from_utf8_lossy(&received)
            .matches("HTTP/1.1 200 OK")
            .count(),
        2
    );
    assert_eq!(idp.calls(Endpoint::Token), 3);
    assert_eq!(idp.calls(Endpoint::Keys), 5);
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let addr = idp.addr();
    // A kept-alive connection and a request in a delay do not hold the shutdown up.
    let _idle = TcpStream::connect(addr).unwrap();
    idp.set_fault(Endpoint::Keys, Fault::delay(Duration::from_secs(30)));
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /oauth2/default/v1/keys HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    drop(idp);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn echo_records_every_request() {
    let echo = EchoHandle::spawn("127.0.0.1:0").unwrap();
    let url = format!("http://{}/some/path?q=1", echo.addr());
    let a = to_answer(
        agent()
            .post(&url)
            .header("X-Multi", "one")
            .header("x-multi", "two")
            .header("Authorization", "Bearer abc")
            .send("payload"),
    );
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = a.json();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/some/path?q=1");
    assert_eq!(body["headers"]["x-multi"], json!(["one", "two"]));
    assert_eq!(body["headers"]["authorization"], "Bearer abc");

    get(&format!("http://{}/", echo.addr()));
    assert_eq!(echo.count(), 2);
    let requests = echo.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].header_values("X-MULTI"), vec!["one", "two"]);
    assert_eq!(requests[0].header("authorization"), Some("Bearer abc"));
    assert!(requests[0]
        .headers
        .iter()
        .all(|(n, _)| *n == n.to_ascii_lowercase()));
    assert_eq!(requests[1].path, "/");
    assert_eq!(requests[1].method, "GET");
    echo.clear();
    assert_eq!(echo.count(), 0);
    assert!(echo.requests().is_empty());
}

#[test]
fn echo_skips_header_lines_that_are_not_http_and_records_the_request() {
    // What nginx forwards with `ignore_invalid_headers off`: a name that is not a token (here
    // not even UTF-8). A lenient upstream takes the request; so does the echo.
    let echo = EchoHandle::spawn("127.0.0.1:0").unwrap();
    let mut stream = TcpStream::connect(echo.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /odd HTTP/1.1\r\nhost: x\r\nX-\xff\xfe: 1\r\nx-odd: \xff\xfe\r\n\
              x-after: yes\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let requests = echo.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/odd");
    assert_eq!(requests[0].header("x-after"), Some("yes"));
    assert!(requests[0].header("x-odd").is_some(), "{:?}", requests[0]);
    assert_eq!(requests[0].headers.len(), 4, "{:?}", requests[0]);
}

#[test]
fn key_rotation_publishes_then_switches_then_retires() {
    let idp = idp_with_client();
    let iss = idp.issuer();
    let kids = |a: Answer| -> Vec<String> {
        a.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let first = idp.signing_kid();
    let old_token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    assert_eq!(idp.published_kids(), vec![first.clone()]);

    let next = idp.publish_next_key();
    assert_ne!(next, first);
    assert_eq!(idp.signing_kid(), first);
    assert_eq!(
        kids(get(&format!("{iss}/v1/keys"))),
        [first.clone(), next.clone()]
    );

    assert_eq!(idp.switch_signing_key(), next);
    let new_token = idp.mint_token(TokenSpec::for_client("0oaApp", &["api:read"]));
    assert_eq!(jwt_part(&new_token, 0)["kid"], next);
    let both = idp.jwks();
    assert!(rs256_verifies(&both, &old_token) && rs256_verifies(&both, &new_token));

    assert_eq!(idp.retire_old_keys(), vec![first.clone()]);
    let only_new = idp.jwks();
    assert_eq!(kids(get(&format!("{iss}/v1/keys"))), vec![next.clone()]);
    assert!(!rs256_verifies(&only_new, &old_token));
    assert!(rs256_verifies(&only_new, &new_token));
    // Introspection does not care about keys: the old token stays active until it expires.
    assert_eq!(introspect(&idp, &old_token).json()["active"], true);

    let third = idp.rotate_keys();
    assert_eq!(idp.published_kids(), vec![third.clone()]);
    assert_eq!(idp.jwks_fetches(), 2);

    // The same through the admin API.
    let base = format!("http://{}", idp.addr());
    let post = |path: &str| to_answer(agent().post(&format!("{base}{path}")).send_empty());
    let a = post("/_dev/keys/publish");
    assert_eq!(a.status, 200);
    let fourth = a.json()["kid"].as_str().unwrap().to_string();
    assert_eq!(
        get(&format!("{base}/_dev/keys")).json(),
        json!({"signing_kid": third, "published": [third, fourth]})
    );
    assert_eq!(post("/_dev/keys/switch").json(), json!({"kid": fourth}));
    assert_eq!(
        post("/_dev/keys/retire").json(),
        json!({"retired": [third]})
    );
    let rotated = post("/_dev/keys/rotate").json();
    assert_eq!(rotated["retired"], json!([fourth]));
    assert_eq!(rotated["kid"], idp.signing_kid());
    assert_eq!(get(&format!("{base}/_dev/keys/rotate")).status, 405);
    let token = client_credentials(&idp, Some(&basic("0oaApp", "s3cret")), Some("api:read")).json()
        ["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jwt_part(&token, 0)["kid"], idp.signing_kid());
    assert!(rs256_verifies(&idp.jwks(), &token));
}

#[test]
fn hostile_tokens_for_tests() {
    let idp = idp_with_client();
    let kid = idp.signing_kid();
    let jwks = idp.jwks();
    let spec = |signing: Signing| {
        let mut s = TokenSpec::for_client("0oaApp", &["api:read"]);
        s.signing = signing;
        s
    };

    // Forged: RS256 under the published kid, with a key never published.
    let forged = idp.mint_token(spec(Signing::UnpublishedKey));
    assert_eq!(jwt_part(&forged, 0), json!({"kid": kid, "alg": "RS256"}));
    assert!(!rs256_verifies(&jwks, &forged));
    // Never registered: introspection does not know it.
    assert_eq!(introspect(&idp, &forged).json(), json!({"active": false}));

    let none = idp.mint_token(spec(Signing::None));
    assert_eq!(jwt_part(&none, 0)["alg"], "none");
    assert!(none.ends_with('.'));

    let confused = idp.mint_token(spec(Signing::Hs256WithPublicKey));
    assert_eq!(jwt_part(&confused, 0)["alg"], "HS256");
    assert!(idp
        .public_key_pem()
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));

    // Header parameters: added, overridden, removed; genuine signatures stay genuine.
    let mut s = spec(Signing::Genuine);
    s.header
        .insert("jku".into(), json!("http://127.0.0.1:9/jwks"));
    s.header
        .insert("x5u".into(), json!("http://127.0.0.1:9/cert"));
    let with_jku = idp.mint_token(s);
    assert_eq!(jwt_part(&with_jku, 0)["jku"], "http://127.0.0.1:9/jwks");
    assert!(rs256_verifies(&jwks, &with_jku));
    assert_eq!(introspect(&idp, &with_jku).json()["active"], true);
    let mut s = spec(Signing::UnpublishedKey);
    s.header.insert("kid".into(), json!("no-such-kid"));
    assert_eq!(jwt_part(&idp.mint_token(s), 0)["kid"], "no-such-kid");
    let mut s = spec(Signing::Genuine);
    s.header.insert("kid".into(), Value::Null);
    assert_eq!(jwt_part(&idp.mint_token(s), 0), json!({"alg": "RS256"}));

    // Claims: wrong issuer and audience, expired, nbf in the future, a claim removed.
    let mut s = spec(Signing::Genuine);
    s.issuer = Some("https://evil.example.com/oauth2/default".into());
    s.audience = Some("api://other".into());
    s.expires_in_secs = -60;
    s.claims.insert("nbf".into(), json!(now() + 600));
    s.claims.insert("cid".into(), Value::Null);
    let claims = jwt_part(&idp.mint_token(s), 1);
    assert_eq!(claims["iss"], "https://evil.example.com/oauth2/default");
    assert_eq!(claims["aud"], "api://other");
    assert!(claims["exp"].as_i64().unwrap() < now());
    assert!(claims["nbf"].as_i64().unwrap() > now());
    assert!(claims.get("cid").is_none());

    // Anything at all, and a payload swapped after signing.
    let raw = idp.mint_raw(
        &json!({"alg": "RS256", "kid": kid, "crit": ["exp"]}),
        &json!([1, 2]),
        Signing::Genuine,
    );
    assert_eq!(jwt_part(&raw, 1), json!([1, 2]));
    assert!(rs256_verifies(&jwks, &raw));
    let genuine = idp.mint_token(spec(Signing::Genuine));
    let tampered = IdpHandle::with_payload(&genuine, &json!({"cid": "0oaAdmin"}));
    assert_eq!(jwt_part(&tampered, 1), json!({"cid": "0oaAdmin"}));
    assert_eq!(tampered.split('.').nth(2), genuine.split('.').nth(2));
    assert!(!rs256_verifies(&jwks, &tampered));

    // Through the admin API.
    let base = format!("http://{}", idp.addr());
    let a = post_json(
        &format!("{base}/_dev/tokens"),
        &json!({"client_id": "0oaApp", "signing": "hs256", "hs256_secret": "k", "header": {"kid": null}}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let t = a.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(jwt_part(&t, 0), json!({"alg": "HS256"}));
    for bad in [
        json!({"client_id": "0oaApp", "signing": "hs256"}),
        json!({"client_id": "0oaApp", "signing": "rot13"}),
    ] {
        assert_eq!(
            post_json(&format!("{base}/_dev/tokens"), &bad).status,
            400,
            "{bad}"
        );
    }
}
