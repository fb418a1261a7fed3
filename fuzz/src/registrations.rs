//! `registrations`: `registrations::Registrations::parse` (the registrations document, inline
//! or fetched), `lookup`, and the compact shared form (`encode` / `decode`).
//!
//! Input: the first line is the product, the rest the document (seeds are readable:
//! `payments-v1\n{"applications":[...]}`). Without a newline, the product is `p`.
//!
//! Properties: never panics; a refusal's description is one of the fixed texts (with numbers
//! only: no value from the document); an accepted document is valid JSON, and every client id
//! in it has the standing an independent reading (serde_json's `Value`) gives: unknown for an
//! entry without a usable id, ambiguous for an id listed twice, approved only when every
//! registration for the product says exactly `approved` (else the first refusal), with the
//! context values that are header-safe; ids not in the document are unknown; the compact form
//! round-trips canonically, answers alike, and refuses another product.

use std::collections::HashMap;

use okta_dcr_auth_core::registrations::{
    valid_client_id, AppContext, NotApproved, Registrations, Standing, MAX_ID_LEN,
};
use serde_json::Value;

use crate::checked;

pub fn check(data: &[u8]) {
    let (product, doc) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("p".to_string(), data),
    };
    match Registrations::parse(doc, &product) {
        Err(e) => {
            if checked("error-is-fixed-text") {
                let text: String = e
                    .describe()
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect();
                assert!(fixed_text(&text), "refusal {text:?}");
            }
        }
        Ok(regs) => accepted(&regs, doc, &product),
    }
}

fn fixed_text(text: &str) -> bool {
    const WHAT: [&str; 7] = [
        "not valid JSON",
        "not UTF-8",
        "truncated JSON",
        "unreadable",
        "the `applications` array is missing",
        "`applications` is given twice",
        "a field has the wrong type (`applications` must be an array of objects; ids, names, products and statuses strings; `registrations` an array of objects)",
    ];
    let no_digits = |s: String| -> String { s.chars().filter(|c| !c.is_ascii_digit()).collect() };
    WHAT.iter().any(|w| {
        text == no_digits(format!(
            "is not a registrations document: {w} (line , column )"
        ))
    }) || text == "is too large ( bytes; at most )"
}

fn header_value_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The standing an application entry gives, read independently.
fn expected<'a>(app: &'a Value, product: &str) -> Standing<'a> {
    let mut standing: Option<Option<NotApproved>> = None;
    for reg in app["registrations"].as_array().into_iter().flatten() {
        if reg["product"].as_str() != Some(product) {
            continue;
        }
        let this = match reg["status"].as_str() {
            Some("approved") => None,
            Some("pending") => Some(NotApproved::Pending),
            Some("revoked") => Some(NotApproved::Revoked),
            Some("rejected") => Some(NotApproved::Rejected),
            _ => Some(NotApproved::UnknownStatus),
        };
        standing = Some(match standing {
            None | Some(None) => this,
            Some(refused) => refused,
        });
    }
    match standing {
        None => Standing::NotApproved(NotApproved::Unregistered),
        Some(Some(why)) => Standing::NotApproved(why),
        Some(None) => {
            let ctx = |name: &str| app[name].as_str().filter(|s| header_value_ok(s));
            Standing::Approved(AppContext {
                application_id: ctx("application_id"),
                developer_id: ctx("developer_id"),
            })
        }
    }
}

fn accepted(regs: &Registrations, doc: &[u8], product: &str) {
    let value: Value = serde_json::from_slice(doc).expect("an accepted document is JSON");
    let apps = value["applications"]
        .as_array()
        .expect("an accepted document has an applications array");
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut invalid = Vec::new();
    for app in apps {
        match app["client_id"].as_str() {
            Some(id) if valid_client_id(id) => by_id.entry(id).or_default().push(app),
            Some(id) => invalid.push(id),
            None => {}
        }
    }
    assert_eq!(regs.len(), by_id.len(), "distinct usable ids");
    for (id, entries) in &by_id {
        let want = match entries.as_slice() {
            [one] => expected(one, product),
            _ => Standing::NotApproved(NotApproved::Ambiguous),
        };
        assert_eq!(regs.lookup(id), want, "client id {id:?}");
    }
    for id in invalid {
        if !by_id.contains_key(id) {
            assert_eq!(regs.lookup(id), Standing::Unknown, "unusable id {id:?}");
        }
    }
    for probe in ["", "0oaNotInTheDocument", "p"] {
        if !by_id.contains_key(probe) {
            assert_eq!(regs.lookup(probe), Standing::Unknown);
        }
    }
    let bytes = regs.encode(7);
    let (generation, back) = Registrations::decode(&bytes, product).expect("round trip");
    assert_eq!(generation, 7);
    assert_eq!(back.encode(7), bytes, "canonical");
    assert_eq!(back.summary(), regs.summary());
    for id in by_id.keys() {
        assert_eq!(back.lookup(id), regs.lookup(id));
    }
    let other = format!("{product}-other");
    assert!(Registrations::decode(&bytes, &other).is_none());
}
