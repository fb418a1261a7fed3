//! The harness itself, without the filter: Envoy starts on free ports, the raw client's odd
//! requests arrive as sent, the echo and the IdP answer. When these fail, the filter tests cannot
//! say anything.

use okta_dcr_auth_tests::*;

#[test]
fn envoy_without_the_filter_proxies_odd_headers_to_the_echo() {
    let stack = Stack::start_without_filter();
    let r = stack.get(
        "/plain?q=1",
        &[
            ("X-Dup", "one"),
            ("x-dup", "two"),
            ("x-tab", "a\tb"),
            ("x_under_score", "kept"),
            ("authorization", "Basic Zm9vOmJhcg=="),
        ],
    );
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(r.json()["method"], "GET");
    let req = stack.single_upstream_request();
    assert!(req.path.starts_with("/plain"), "{req:#?}");
    assert_eq!(upstream_header(&req, "x-dup"), vec!["one", "two"]);
    assert_eq!(upstream_header(&req, "x-tab"), vec!["a\tb"]);
    assert_eq!(upstream_header(&req, "x_under_score"), vec!["kept"]);
    assert_eq!(
        upstream_header(&req, "authorization"),
        vec!["Basic Zm9vOmJhcg=="]
    );

    if on_ngx() {
        assert!(stack.host_log().contains("start worker process"));
    } else {
        assert_eq!(stack.admin("/ready").status, 200);
        assert!(stack.envoy_log().contains("starting main dispatch loop"));
    }
}

#[test]
fn the_dev_idp_issues_tokens_to_registered_clients() {
    // Through Envoy's own cluster to the IdP would need a route; talk to it directly.
    let stack = Stack::start_without_filter();
    let app = stack.client("0oa8harnessApp", "harness-Secret_0123abcd", &[SCOPE]);
    let body = format!("grant_type=client_credentials&scope={}", form_encode(SCOPE));
    let len = body.len().to_string();
    let r = client::send_raw(
        stack.idp.addr(),
        format!(
            "POST /oauth2/default/v1/token HTTP/1.1\r\nhost: idp\r\nauthorization: {}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {len}\r\n\
             connection: close\r\n\r\n{body}",
            app.basic()
        )
        .as_bytes(),
        client::DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:#?}");
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(stack.token_calls(), 1);
    let claims = jwt_claims(v["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["cid"], "0oa8harnessApp");
}

/// What the filter has to work with: Envoy's header map keeps `authorization` as an inline
/// header, so a repeated `Authorization` reaches the filter as ONE comma-joined value (an empty
/// repeat vanishes); other repeated headers stay separate entries. nginx refuses a repeated
/// `Authorization` with its own 400 (it is a unique header there) and logs the header line at
/// `info`.
#[test]
fn envoy_folds_repeated_authorization_headers_into_one_value() {
    let stack = Stack::start_without_filter();
    if on_ngx() {
        let r = stack.get(
            "/",
            &[
                ("authorization", "Basic AAA"),
                ("Authorization", "Basic BBB"),
            ],
        );
        assert_eq!(r.status, 400, "{r:#?}");
        assert_eq!(stack.echo.count(), 0);
        assert!(
            stack
                .host_log()
                .lines()
                .any(|l| is_nginx_client_error_line(l) && l.contains("Basic BBB")),
            "nginx logs the repeated header line at info"
        );
        return;
    }
    stack.get(
        "/",
        &[
            ("authorization", "Basic AAA"),
            ("Authorization", "Basic BBB"),
            ("x-other", "1"),
            ("x-other", "2"),
            ("authorization", ""),
        ],
    );
    let req = stack.single_upstream_request();
    assert_eq!(
        upstream_header(&req, "authorization"),
        vec!["Basic AAA,Basic BBB"]
    );
    assert_eq!(upstream_header(&req, "x-other"), vec!["1", "2"]);
}
