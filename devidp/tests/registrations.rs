//! The Dev Portal side of the dev IdP over real HTTP: the registrations document, its `ETag`
//! and 304s, the admin endpoints a portal admin uses, the demo seeding, and the faults. The
//! filter's own parser (okta-dcr-auth-core) reads every document served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use std::time::{Duration, Instant};

use okta_dcr_auth_core::registrations::{
    AppContext, DocumentError, NotApproved, Registrations, Standing, MAX_DOCUMENT_BYTES,
};
use okta_dev_idp::{
    seed_demo, Application, Endpoint, Fault, FaultAnswer, IdpHandle, DEMO_APPLICATION_ID,
    DEMO_CLIENT_ID, DEMO_DEVELOPER_ID, DEMO_PENDING_PRODUCT, DEMO_PRODUCT,
};
use serde_json::{json, Value};

fn fetch(idp: &IdpHandle, if_none_match: Option<&str>) -> Answer {
    let mut req = agent().get(idp.registrations_uri());
    if let Some(etag) = if_none_match {
        req = req.header("if-none-match", etag);
    }
    to_answer(req.call())
}

fn admin(idp: &IdpHandle, method: &str, path: &str, body: Option<Value>) -> Answer {
    let url = format!("http://{}{path}", idp.addr());
    let a = agent();
    to_answer(match (method, body) {
        ("GET", _) => a.get(&url).call(),
        ("DELETE", _) => a.delete(&url).call(),
        ("POST", Some(b)) => a
            .post(&url)
            .content_type("application/json")
            .send(b.to_string()),
        ("PUT", Some(b)) => a.put(&url).send(b.to_string()),
        _ => panic!("{method} {path}"),
    })
}

fn parsed(idp: &IdpHandle, product: &str) -> Registrations {
    let a = fetch(idp, None);
    assert_eq!(a.status, 200);
    Registrations::parse(&a.bytes, product).unwrap()
}

#[test]
fn the_demo_app_is_approved_for_one_product_and_pending_for_another() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    seed_demo(&idp);
    assert!(idp.registrations_uri().ends_with("/_portal/registrations"));
    assert_eq!(
        parsed(&idp, DEMO_PRODUCT).lookup(DEMO_CLIENT_ID),
        Standing::Approved(AppContext {
            application_id: Some(DEMO_APPLICATION_ID),
            developer_id: Some(DEMO_DEVELOPER_ID),
        })
    );
    assert_eq!(
        parsed(&idp, DEMO_PENDING_PRODUCT).lookup(DEMO_CLIENT_ID),
        Standing::NotApproved(NotApproved::Pending)
    );
    assert_eq!(
        parsed(&idp, "inventory-v1").lookup(DEMO_CLIENT_ID),
        Standing::NotApproved(NotApproved::Unregistered)
    );
    // The gateway's own introspection client is no portal app.
    assert_eq!(
        parsed(&idp, DEMO_PRODUCT).lookup(okta_dev_idp::DEMO_INTROSPECTION_CLIENT_ID),
        Standing::Unknown
    );
    // Approving the pending one (one curl in `make run`).
    let a = admin(
        &idp,
        "POST",
        "/_dev/registrations/approve",
        Some(json!({"client_id": DEMO_CLIENT_ID, "product": DEMO_PENDING_PRODUCT})),
    );
    assert_eq!(a.status, 204);
    assert!(matches!(
        parsed(&idp, DEMO_PENDING_PRODUCT).lookup(DEMO_CLIENT_ID),
        Standing::Approved(_)
    ));
}

#[test]
fn the_document_has_an_etag_and_unchanged_fetches_get_304() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.set_registration("0oaA", "p", "approved");
    let first = fetch(&idp, None);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert!(first.header("x-okta-request-id").is_none(), "not Okta");
    let etag = first.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    assert_eq!(etag, idp.registrations_etag());

    for header in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
    ] {
        let again = fetch(&idp, Some(&header));
        assert_eq!(again.status, 304, "{header}");
        assert!(again.bytes.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
    }
    assert_eq!(fetch(&idp, Some("\"stale\"")).status, 200);
    assert_eq!(idp.registrations_fetches(), 5);
    assert_eq!(idp.registrations_not_modified(), 3);

    // A change makes a new ETag: the old one gets the document again.
    assert!(idp.revoke_registration("0oaA", "p"));
    let changed = fetch(&idp, Some(&etag));
    assert_eq!(changed.status, 200);
    let new_etag = changed.header("etag").unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(
        Registrations::parse(&changed.bytes, "p")
            .unwrap()
            .lookup("0oaA"),
        Standing::NotApproved(NotApproved::Revoked)
    );
    // Counted in /_dev/stats and reset with the other counters.
    let stats: Value =
        serde_json::from_slice(&admin(&idp, "GET", "/_dev/stats", None).bytes).unwrap();
    assert_eq!(stats["registrations"], 6);
    assert_eq!(stats["registrations_not_modified"], 3);
    idp.reset_counters();
    assert_eq!(idp.calls(Endpoint::Registrations), 0);
    assert_eq!(idp.registrations_not_modified(), 0);
}

#[test]
fn a_portal_admin_registers_approves_revokes_and_rejects() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    let post = |path: &str, body: Value| admin(&idp, "POST", path, Some(body)).status;
    let reg = json!({"client_id": "0oaX", "product": "p"});
    // Nothing to approve yet.
    assert_eq!(post("/_dev/registrations/approve", reg.clone()), 404);
    assert_eq!(post("/_dev/registrations", reg.clone()), 201);
    assert_eq!(
        idp.registration_status("0oaX", "p").as_deref(),
        Some("pending")
    );
    assert_eq!(
        parsed(&idp, "p").lookup("0oaX"),
        Standing::NotApproved(NotApproved::Pending)
    );
    for (action, status, standing) in [
        ("approve", "approved", None),
        ("revoke", "revoked", Some(NotApproved::Revoked)),
        ("approve", "approved", None),
        ("reject", "rejected", Some(NotApproved::Rejected)),
    ] {
        assert_eq!(
            post(&format!("/_dev/registrations/{action}"), reg.clone()),
            204
        );
        assert_eq!(
            idp.registration_status("0oaX", "p").as_deref(),
            Some(status)
        );
        let regs = parsed(&idp, "p");
        let got = regs.lookup("0oaX");
        match standing {
            None => assert!(matches!(got, Standing::Approved(_)), "{action}: {got:?}"),
            Some(why) => assert_eq!(got, Standing::NotApproved(why), "{action}"),
        }
    }
    assert_eq!(
        post(
            "/_dev/registrations/approve",
            json!({"client_id": "0oaX", "product": "p", "status": "x"})
        ),
        400
    );
    assert_eq!(
        post(
            "/_dev/registrations",
            json!({"client_id": "", "product": "p"})
        ),
        400
    );
    assert_eq!(post("/_dev/registrations", json!({"nope": 1})), 400);
    // Any status string can be set (one the filter does not know).
    assert_eq!(
        post(
            "/_dev/registrations",
            json!({"client_id": "0oaY", "product": "p", "status": "suspended"})
        ),
        201
    );
    assert_eq!(
        parsed(&idp, "p").lookup("0oaY"),
        Standing::NotApproved(NotApproved::UnknownStatus)
    );
    // An application with its context, then its registration removed: known, unregistered.
    assert_eq!(
        post(
            "/_dev/applications",
            json!({"client_id": "0oaX", "application_id": "app-x", "developer_id": "dev-x", "name": "X"})
        ),
        201
    );
    assert_eq!(post("/_dev/registrations/approve", reg.clone()), 204);
    assert_eq!(
        parsed(&idp, "p").lookup("0oaX"),
        Standing::Approved(AppContext {
            application_id: Some("app-x"),
            developer_id: Some("dev-x"),
        })
    );
    assert_eq!(
        admin(
            &idp,
            "DELETE",
            "/_dev/registrations?client_id=0oaX&product=p",
            None
        )
        .status,
        204
    );
    assert_eq!(
        parsed(&idp, "p").lookup("0oaX"),
        Standing::NotApproved(NotApproved::Unregistered)
    );
    assert_eq!(
        admin(&idp, "DELETE", "/_dev/registrations", None).status,
        400
    );
    assert_eq!(
        admin(&idp, "DELETE", "/_dev/applications/0oaX", None).status,
        204
    );
    assert_eq!(parsed(&idp, "p").lookup("0oaX"), Standing::Unknown);
    let doc: Value =
        serde_json::from_slice(&admin(&idp, "GET", "/_dev/registrations", None).bytes).unwrap();
    assert_eq!(doc, idp.registrations_document());
    assert_eq!(doc["applications"].as_array().unwrap().len(), 1);
    // Handle methods.
    idp.add_application(Application::new("0oaZ"));
    assert_eq!(
        parsed(&idp, "p").lookup("0oaZ"),
        Standing::NotApproved(NotApproved::Unregistered)
    );
    idp.register("0oaZ", "p");
    assert!(idp.approve("0oaZ", "p"));
    assert!(idp.reject("0oaZ", "p"));
    assert!(idp.remove_registration("0oaZ", "p"));
    assert!(!idp.approve("0oaZ", "p"));
    assert!(idp.remove_application("0oaZ"));
}

#[test]
fn faults_make_the_document_slow_failing_malformed_or_too_large() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.set_registration("0oaA", "p", "approved");
    // Failing.
    idp.set_fault(
        Endpoint::Registrations,
        Fault::answer(FaultAnswer::Status(503)),
    );
    assert_eq!(fetch(&idp, None).status, 503);
    // Malformed.
    idp.set_fault(Endpoint::Registrations, Fault::answer(FaultAnswer::Garbage));
    let a = fetch(&idp, None);
    assert_eq!(a.status, 200);
    assert!(matches!(
        Registrations::parse(&a.bytes, "p"),
        Err(DocumentError::Malformed { .. })
    ));
    // Slow.
    idp.set_fault(
        Endpoint::Registrations,
        Fault::delay(Duration::from_millis(300)),
    );
    let start = Instant::now();
    assert_eq!(fetch(&idp, None).status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    // Too large: still JSON, over the cap.
    idp.set_fault(
        Endpoint::Registrations,
        Fault::answer(FaultAnswer::Padded {
            bytes: MAX_DOCUMENT_BYTES + 1,
        }),
    );
    let a = fetch(&idp, None);
    assert_eq!(a.status, 200);
    assert_eq!(a.bytes.len(), MAX_DOCUMENT_BYTES + 1);
    assert_eq!(
        Registrations::parse(&a.bytes, "p"),
        Err(DocumentError::TooLarge {
            bytes: MAX_DOCUMENT_BYTES + 1
        })
    );
    // Padded below the cap: the same document.
    let r = admin(
        &idp,
        "POST",
        "/_dev/fault",
        Some(json!({"endpoint": "registrations", "answer": "padded", "bytes": 100_000})),
    );
    assert_eq!(r.status, 204);
    let a = fetch(&idp, None);
    assert_eq!(a.bytes.len(), 100_000);
    assert!(matches!(
        Registrations::parse(&a.bytes, "p").unwrap().lookup("0oaA"),
        Standing::Approved(_)
    ));
    idp.clear_fault(Endpoint::Registrations);
    // A body served verbatim.
    idp.set_registrations_body(Some(b"{\"applications\":[{\"client_id\":5}]}".to_vec()));
    assert!(Registrations::parse(&fetch(&idp, None).bytes, "p").is_err());
    let r = admin(
        &idp,
        "PUT",
        "/_dev/registrations/document",
        Some(json!({"applications": [{"client_id": "0oaRaw"}]})),
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        parsed(&idp, "p").lookup("0oaRaw"),
        Standing::NotApproved(NotApproved::Unregistered)
    );
    // Larger than any other admin body (1 MiB): `make bench` uploads 30 MB this way.
    let apps: Vec<Value> = (0..20_000)
        .map(|i| json!({"client_id": format!("0oaBig{i:014}"), "name": "a name long enough"}))
        .collect();
    let big = json!({ "applications": apps });
    assert!(big.to_string().len() > 1 << 20);
    let r = admin(&idp, "PUT", "/_dev/registrations/document", Some(big));
    assert_eq!(r.status, 204);
    assert_eq!(parsed(&idp, "p").len(), 20_000);
    assert_eq!(
        admin(&idp, "DELETE", "/_dev/registrations/document", None).status,
        204
    );
    assert!(matches!(
        parsed(&idp, "p").lookup("0oaA"),
        Standing::Approved(_)
    ));
}

#[test]
fn the_portal_is_outside_okta_latency() {
    let idp = IdpHandle::spawn("127.0.0.1:0").unwrap();
    idp.set_latency(Duration::from_secs(3));
    let start = Instant::now();
    assert_eq!(fetch(&idp, None).status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
}
