use super::record::*;
use super::*;

// The benchmark (`benches/registrations.rs`) parses the same document.
#[path = "konnect_document.rs"]
mod konnect_document;
use konnect_document::konnect_document;

const DOC: &str = r#"{"version": 3, "applications": [
  {"client_id": "0oa1b2c3d4EXAMPLE", "application_id": "app-123", "developer_id": "dev-9",
   "name": "Payments dashboard", "labels": {"x": 1},
   "registrations": [{"product": "payments-v1", "status": "approved", "id": "r1"},
                     {"product": "orders-v2", "status": "pending"}]},
  {"client_id": "0oaPending", "registrations": [{"product": "payments-v1", "status": "pending"}]},
  {"client_id": "0oaRevoked", "registrations": [{"product": "payments-v1", "status": "revoked"}]},
  {"client_id": "0oaRejected", "registrations": [{"product": "payments-v1", "status": "rejected"}]},
  {"client_id": "0oaOdd", "registrations": [{"product": "payments-v1", "status": "suspended"}]},
  {"client_id": "0oaCaps", "registrations": [{"product": "payments-v1", "status": "Approved"}]},
  {"client_id": "0oaOther", "registrations": [{"product": "orders-v2", "status": "approved"}]},
  {"client_id": "0oaNone"},
  {"client_id": "0oaNoContext", "application_id": null,
   "registrations": [{"product": "payments-v1", "status": "approved"}]}
]}"#;

fn parse(doc: &str, product: &str) -> Registrations {
    Registrations::parse(doc.as_bytes(), product).unwrap()
}

#[test]
fn each_status_gives_its_standing() {
    let r = parse(DOC, "payments-v1");
    assert_eq!(
        r.lookup("0oa1b2c3d4EXAMPLE"),
        Standing::Approved(AppContext {
            application_id: Some("app-123"),
            developer_id: Some("dev-9"),
        })
    );
    for (id, why) in [
        ("0oaPending", NotApproved::Pending),
        ("0oaRevoked", NotApproved::Revoked),
        ("0oaRejected", NotApproved::Rejected),
        ("0oaOdd", NotApproved::UnknownStatus),
        ("0oaCaps", NotApproved::UnknownStatus),
        ("0oaOther", NotApproved::Unregistered),
        ("0oaNone", NotApproved::Unregistered),
    ] {
        assert_eq!(r.lookup(id), Standing::NotApproved(why), "{id}");
    }
    assert_eq!(
        r.lookup("0oaNoContext"),
        Standing::Approved(AppContext::default())
    );
    assert_eq!(r.lookup("0oaUnknown"), Standing::Unknown);
    assert_eq!(r.len(), 9);
    assert_eq!(r.summary().approved, 2);
    assert_eq!(r.product(), "payments-v1");
    // The same document for the other product.
    let o = parse(DOC, "orders-v2");
    assert_eq!(
        o.lookup("0oa1b2c3d4EXAMPLE"),
        Standing::NotApproved(NotApproved::Pending)
    );
    assert!(matches!(o.lookup("0oaOther"), Standing::Approved(_)));
    assert_eq!(
        o.lookup("0oaPending"),
        Standing::NotApproved(NotApproved::Unregistered)
    );
}

#[test]
fn client_ids_match_exactly() {
    let r = parse(DOC, "payments-v1");
    for spelling in [
        "0OA1B2C3D4EXAMPLE",
        "0oa1b2c3d4example",
        " 0oa1b2c3d4EXAMPLE",
        "0oa1b2c3d4EXAMPLE ",
        "0oa1b2c3d4EXAMPL",
        "0oa1b2c3d4EXAMPLEE",
        "0oa1b2c3d4%45XAMPLE",
        "0oa1b2c3d4EXAMPLE\0",
        "",
    ] {
        assert_eq!(r.lookup(spelling), Standing::Unknown, "{spelling:?}");
    }
    // Escapes in the document are JSON escapes: `\u0045` is `E`; a `%` is a `%`.
    let d = parse(
        r#"{"applications":[{"client_id":"0oa\u0045sc","registrations":[{"product":"p","status":"approved"}]},
                            {"client_id":"0oa%41","registrations":[{"product":"p","status":"approved"}]}]}"#,
        "p",
    );
    assert!(matches!(d.lookup("0oaEsc"), Standing::Approved(_)));
    assert!(matches!(d.lookup("0oa%41"), Standing::Approved(_)));
    assert_eq!(d.lookup("0oaA"), Standing::Unknown);
    // What the Basic path looks up: the id after its form decoding.
    let decoded = crate::credentials::form_decode("0oa%2541").unwrap();
    assert!(matches!(d.lookup(&decoded), Standing::Approved(_)));
}

#[test]
fn odd_values_affect_only_their_entry() {
    let d = parse(
        r#"{"applications":[
            {"client_id":"","registrations":[{"product":"p","status":"approved"}]},
            {"registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"bad\nid","registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"twice","application_id":"a1","registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"twice","application_id":"a2","registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"twice","registrations":[]},
            {"client_id":"mixed","registrations":[{"product":"p","status":"approved"},{"product":"p","status":"revoked"}]},
            {"client_id":"mixed2","registrations":[{"product":"p","status":"pending"},{"product":"p","status":"approved"}]},
            {"client_id":"both","registrations":[{"product":"p","status":"approved"},{"product":"p","status":"approved"}]},
            {"client_id":"ctx","application_id":"has space","developer_id":"ok-1","registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"ctx2","application_id":"","developer_id":"é","registrations":[{"product":"p","status":"approved"}]},
            {"client_id":"fine","registrations":[{"product":"p","status":"approved"}]}
        ]}"#,
        "p",
    );
    let s = d.summary();
    assert_eq!(s.skipped, 3);
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.dropped_context, 3);
    assert_eq!(
        d.lookup("twice"),
        Standing::NotApproved(NotApproved::Ambiguous)
    );
    assert_eq!(
        d.lookup("mixed"),
        Standing::NotApproved(NotApproved::Revoked)
    );
    assert_eq!(
        d.lookup("mixed2"),
        Standing::NotApproved(NotApproved::Pending)
    );
    assert!(matches!(d.lookup("both"), Standing::Approved(_)));
    assert_eq!(
        d.lookup("ctx"),
        Standing::Approved(AppContext {
            application_id: None,
            developer_id: Some("ok-1")
        })
    );
    assert_eq!(d.lookup("ctx2"), Standing::Approved(AppContext::default()));
    assert!(matches!(d.lookup("fine"), Standing::Approved(_)));
    assert_eq!(d.lookup("bad\nid"), Standing::Unknown);
    assert_eq!(d.len(), 7);
    let long = "x".repeat(MAX_ID_LEN + 1);
    let d = parse(
        &format!(
            r#"{{"applications":[{{"client_id":"{long}"}},{{"client_id":"{}"}}]}}"#,
            &long[1..]
        ),
        "p",
    );
    assert_eq!(d.summary().skipped, 1);
    assert_eq!(d.lookup(&long), Standing::Unknown);
    assert!(matches!(d.lookup(&long[1..]), Standing::NotApproved(_)));
}

#[test]
fn a_malformed_document_is_refused_without_echoing_values() {
    for doc in [
        "",
        "not json",
        "[]",
        "{}",
        "null",
        r#"{"applications":{}}"#,
        r#"{"applications":[1]}"#,
        r#"{"applications":[["0oaA"]]}"#,
        r#"{"applications":[{"client_id":"a","registrations":[["p","approved"]]}]}"#,
        r#"{"applications":["secret-looking-value"]}"#,
        r#"{"applications":[{"client_id":5}]}"#,
        r#"{"applications":[{"client_id":"a","registrations":{}}]}"#,
        r#"{"applications":[{"client_id":"a","registrations":[{"product":"p"}]}]}"#,
        r#"{"applications":[{"client_id":"a","registrations":[{"status":"approved"}]}]}"#,
        r#"{"applications":[{"client_id":"a","registrations":[{"product":"p","status":true}]}]}"#,
        r#"{"applications":[{"client_id":"a","application_id":["secret-looking-value"]}]}"#,
        r#"{"applications":[],"applications":[]}"#,
        r#"{"applications":[]} trailing"#,
        r#"{"applications":[{"client_id":"a"}"#,
    ] {
        let e = Registrations::parse(doc.as_bytes(), "p").unwrap_err();
        let text = e.describe();
        assert!(
            matches!(e, DocumentError::Malformed { .. }),
            "{doc}: {text}"
        );
        assert!(!text.contains("secret-looking"), "{text}");
        assert!(!text.contains("trailing"), "{text}");
    }
    assert!(Registrations::parse(b"{\"applications\":[{\"client_id\":\"a\xff\"}]}", "p").is_err());
    // Even in a field that is skipped.
    let e = Registrations::parse(b"{\"applications\":[],\n \"note\":\"\xff\"}", "p").unwrap_err();
    assert_eq!(
        e,
        DocumentError::Malformed {
            line: 2,
            column: 10,
            what: "not UTF-8"
        }
    );
    let e = Registrations::parse(br#"{"x":1}"#, "p").unwrap_err();
    assert!(
        e.describe().contains("`applications` array is missing"),
        "{e}"
    );
    let e = Registrations::parse(br#"{"applications":[{"client_id":5}]}"#, "p").unwrap_err();
    assert!(e.describe().contains("wrong type"), "{e}");
}

#[test]
fn the_size_cap_holds() {
    let mut big = br#"{"applications":[]}"#.to_vec();
    big.resize(MAX_DOCUMENT_BYTES + 1, b' ');
    assert_eq!(
        Registrations::parse(&big, "p"),
        Err(DocumentError::TooLarge {
            bytes: MAX_DOCUMENT_BYTES + 1
        })
    );
    big.truncate(MAX_DOCUMENT_BYTES);
    assert!(Registrations::parse(&big, "p").unwrap().is_empty());
}

#[test]
fn an_empty_document_knows_nobody() {
    let r = parse(r#"{"applications":[]}"#, "p");
    assert!(r.is_empty());
    assert_eq!(r.lookup("a"), Standing::Unknown);
    assert_eq!(Registrations::empty("p").lookup("a"), Standing::Unknown);
}

#[test]
fn the_compact_form_round_trips_and_refuses_foreign_bytes() {
    let r = parse(DOC, "payments-v1");
    let bytes = r.encode(42);
    let (generation, back) = Registrations::decode(&bytes, "payments-v1").unwrap();
    assert_eq!(generation, 42);
    for id in [
        "0oa1b2c3d4EXAMPLE",
        "0oaPending",
        "0oaOdd",
        "0oaOther",
        "0oaNoContext",
        "nobody",
    ] {
        assert_eq!(back.lookup(id), r.lookup(id), "{id}");
    }
    assert_eq!(back.summary(), r.summary());
    assert_eq!(back.encode(42), bytes, "canonical");
    assert!(Registrations::decode(&bytes, "orders-v2").is_none());
    // Every truncation, and every single-byte change, is refused or decodes to something
    // consistent; none panics.
    for n in 0..bytes.len() {
        assert!(
            Registrations::decode(&bytes[..n], "payments-v1").is_none(),
            "{n}"
        );
        let mut changed = bytes.clone();
        changed[n] ^= 0x5a;
        if let Some((_, d)) = Registrations::decode(&changed, "payments-v1") {
            let _ = d.lookup("0oa1b2c3d4EXAMPLE");
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Registrations::decode(&longer, "payments-v1").is_none());
    assert!(Registrations::decode(b"", "p").is_none());
    // Duplicates survive as one ambiguous entry.
    let d = parse(
        r#"{"applications":[{"client_id":"a"},{"client_id":"a"}]}"#,
        "p",
    );
    let (_, back) = Registrations::decode(&d.encode(1), "p").unwrap();
    assert_eq!(
        back.lookup("a"),
        Standing::NotApproved(NotApproved::Ambiguous)
    );
    assert_eq!(back.len(), 1);
}

/// 100,000 applications: the document's size, the index's memory and the parse time (printed;
/// only the memory per application is asserted, timings vary with the machine).
#[test]
fn a_hundred_thousand_apps_fit() {
    let product = "0000000a-5b6d-4e7f-8a9b-000000000001";
    let doc = konnect_document(100_000, product);
    assert!(doc.len() < MAX_DOCUMENT_BYTES / 2, "{}", doc.len());
    let start = std::time::Instant::now();
    let r = Registrations::parse(&doc, product).unwrap();
    let parsed = start.elapsed();
    assert_eq!(r.len(), 100_000);
    assert_eq!(r.summary().approved, 25_000);
    let memory = r.memory_bytes();
    let compact = r.encode(1);
    let start = std::time::Instant::now();
    let (_, back) = Registrations::decode(&compact, product).unwrap();
    let decoded = start.elapsed();
    eprintln!(
        "100k apps: document {} bytes, parsed in {parsed:?}, index {memory} bytes ({} per app), compact form {} bytes, decoded in {decoded:?}",
        doc.len(),
        memory / 100_000,
        compact.len()
    );
    assert!(memory / 100_000 < 100, "{memory}");
    assert!(compact.len() < doc.len() / 3);
    assert_eq!(
        back.lookup("0oa00000000000000004"),
        r.lookup("0oa00000000000000004")
    );
    assert!(
        matches!(r.lookup("0oa00000000000000004"), Standing::Approved(c) if c.application_id.is_some())
    );
    assert_eq!(
        r.lookup("0oa00000000000000005"),
        Standing::NotApproved(NotApproved::Pending)
    );
}

// ---- the shared record ----

const NOW: u64 = 1_700_000_000_000;
const REFRESH: u64 = 10_000;
const DAY: u64 = 86_400_000;

#[test]
fn the_record_round_trips_and_refuses_foreign_bytes() {
    let r = RegistrationsRecord {
        generation: 1,
        validated_at_ms: 2,
        last_attempt_ms: 3,
        lease_until_ms: 4,
        etag: "\"abc\"".into(),
    };
    assert_eq!(RegistrationsRecord::decode(&r.encode()), Some(r.clone()));
    assert_eq!(
        RegistrationsRecord::decode(&RegistrationsRecord::default().encode()),
        Some(RegistrationsRecord::default())
    );
    assert_eq!(RegistrationsRecord::decode(b"\0"), None);
    let mut bad = r.encode();
    bad.push(b'\n');
    assert_eq!(RegistrationsRecord::decode(&bad), None);
    let mut bad = r.encode();
    bad.push(0xff);
    assert_eq!(RegistrationsRecord::decode(&bad), None);
}

#[test]
fn no_document_fetches_at_once_then_retries_and_fails_closed() {
    let r = RegistrationsRecord::default();
    assert!(r.may_fetch(NOW, REFRESH));
    assert!(r.if_none_match().is_none());
    let leased = r.leased(NOW + 3_000);
    assert!(!leased.may_fetch(NOW + 1, REFRESH), "single flight");
    let failed = leased.failed(NOW);
    assert!(
        !failed.serves(NOW + 1, DAY),
        "fail closed before the first document"
    );
    assert!(!failed.may_fetch(NOW + RETRY_WITHOUT_DOCUMENT_MS - 1, REFRESH));
    assert!(failed.may_fetch(NOW + RETRY_WITHOUT_DOCUMENT_MS, REFRESH));
    assert_eq!(
        failed.next_fetch_at(REFRESH),
        NOW + RETRY_WITHOUT_DOCUMENT_MS
    );
    // A refresh period shorter than the retry interval wins.
    assert!(failed.may_fetch(NOW + 1_000, 1_000));
    // A 304 without a document is a failure.
    let confused = leased.not_modified(NOW, NOW + 5);
    assert_eq!(confused.generation, 0);
    assert!(!confused.serves(NOW + 5, DAY));
}

#[test]
fn revalidation_every_period_with_the_etag() {
    let r =
        RegistrationsRecord::default()
            .leased(NOW + 3_000)
            .fetched(Some("\"v1\""), NOW, NOW + 20);
    assert_eq!(r.generation, NOW + 20);
    assert_eq!(r.if_none_match(), Some("\"v1\""));
    assert!(r.serves(NOW + 20, DAY));
    assert!(!r.may_fetch(NOW + REFRESH - 1, REFRESH));
    assert!(r.may_fetch(NOW + REFRESH, REFRESH));
    // 304: same generation (no body to copy), confirmed later.
    let t = NOW + REFRESH;
    let same = r.leased(t + 3_000).not_modified(t, t + 10);
    assert_eq!(same.generation, r.generation);
    assert_eq!(same.validated_at_ms, t + 10);
    assert_eq!(same.etag, r.etag);
    assert!(!same.in_flight(t + 11));
    assert!(!same.may_fetch(t + REFRESH - 1, REFRESH));
    // A new document: a new, strictly greater generation, even with a clock that went back.
    let newer = same.fetched(Some("\"v2\""), t + REFRESH, NOW);
    assert!(newer.generation > same.generation);
    assert_eq!(newer.etag, "\"v2\"");
    // An ETag that cannot be sent back is not kept.
    let odd = newer.fetched(Some("a\nb"), t, t + 1);
    assert_eq!(odd.if_none_match(), None);
    let none = newer.fetched(None, t, t + 1);
    assert_eq!(none.if_none_match(), None);
}

#[test]
fn a_failed_fetch_keeps_the_last_document_until_the_maximum_age() {
    let good = RegistrationsRecord::default().fetched(Some("\"v1\""), NOW, NOW);
    let mut r = good.clone();
    let mut t = NOW;
    // The source is down: an attempt every period, the document keeps serving.
    while t < NOW + DAY {
        t += REFRESH;
        assert!(r.may_fetch(t, REFRESH));
        r = r.leased(t + 3_000).failed(t);
        assert_eq!(r.generation, good.generation);
        assert_eq!(r.etag, good.etag);
        assert_eq!(r.serves(t, DAY), t - NOW <= DAY, "{}", t - NOW);
    }
    assert_eq!(r.age_ms(NOW + DAY + 1), Some(DAY + 1));
    assert!(!r.serves(NOW + DAY + 1, DAY), "503 past the maximum age");
    // Back: a 304 confirms the old document and it serves again.
    let back = r.leased(t + 3_000).not_modified(t, t + 1);
    assert!(back.serves(t + 1, DAY));
}

#[test]
fn a_fetch_that_never_completed_is_no_attempt() {
    let good = RegistrationsRecord::default().fetched(None, NOW, NOW);
    let t = NOW + REFRESH;
    let lost = good.leased(t + 3_000);
    assert!(!lost.may_fetch(t + 2_999, REFRESH));
    assert!(lost.may_fetch(t + 3_000, REFRESH), "the lease ran out");
    assert!(lost.released().may_fetch(t + 1, REFRESH));
}

#[test]
fn workers_adopt_newer_bodies_and_see_304s_without_one() {
    let product = "payments-v1";
    let regs = parse(DOC, product);
    let record = RegistrationsRecord::default().fetched(Some("\"v1\""), NOW, NOW);
    let body = regs.encode(record.generation);

    let mut held = Held::default();
    assert_eq!(
        held.lookup("0oaPending", NOW, DAY),
        Err(Unavailable::NoDocument)
    );
    assert!(held.wants_body(&record));
    assert_eq!(
        held.adopt(&body, product, &record),
        Adopted::New {
            generation: record.generation
        }
    );
    assert!(!held.wants_body(&record));
    assert_eq!(held.adopt(&body, product, &record), Adopted::Unchanged);
    assert_eq!(
        held.lookup("0oaPending", NOW, DAY),
        Ok(Standing::NotApproved(NotApproved::Pending))
    );
    // Another worker's 304 a day later keeps this copy usable without a body.
    let confirmed = record.not_modified(NOW + DAY, NOW + DAY);
    assert!(!held.wants_body(&confirmed));
    assert_eq!(
        held.lookup("0oaPending", NOW + DAY + 1, DAY),
        Err(Unavailable::Expired)
    );
    held.saw(&confirmed);
    assert!(held.lookup("0oaPending", NOW + DAY + 1, DAY).is_ok());
    // A revocation: a new generation, the body says revoked.
    let revoked_doc = DOC.replace(
        r#""payments-v1", "status": "approved", "id""#,
        r#""payments-v1", "status": "revoked", "id""#,
    );
    let newer = confirmed.fetched(Some("\"v2\""), NOW + DAY + 5, NOW + DAY + 10);
    let body2 = parse(&revoked_doc, product).encode(newer.generation);
    assert!(held.wants_body(&newer));
    assert_eq!(
        held.adopt(&body2, product, &newer),
        Adopted::New {
            generation: newer.generation
        }
    );
    assert_eq!(
        held.lookup("0oa1b2c3d4EXAMPLE", NOW + DAY + 10, DAY),
        Ok(Standing::NotApproved(NotApproved::Revoked))
    );
    // Foreign or other-product bodies are refused, the copy stays.
    assert_eq!(held.adopt(b"junk", product, &newer), Adopted::Unusable);
    assert_eq!(held.adopt(&body2, "orders-v2", &newer), Adopted::Unusable);
    assert_eq!(held.generation(), newer.generation);
    // An older body (read late) is not taken.
    assert_eq!(held.adopt(&body, product, &newer), Adopted::Unchanged);
    // install: what the fetching worker holds.
    let mut own = Held::default();
    own.install(parse(DOC, product), &record);
    assert_eq!(own.generation(), record.generation);
    assert!(own.registrations().is_some());
}
