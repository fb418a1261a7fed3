//! The Dev Portal side: applications (by DCR client id), their registrations for API products,
//! and the registrations document okta-dcr-auth reads (`GET /_portal/registrations`, with a
//! strong `ETag` and `If-None-Match` → 304). What a portal admin does (register, approve,
//! revoke, reject) goes through the admin API or [`IdpHandle`](super::IdpHandle) methods.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /_portal/registrations` | | 200 the document, `ETag`; 304 when `If-None-Match` names it. Counts as [`Endpoint::Registrations`](super::Endpoint) (faults, rate limits) |
//! | `GET /_dev/registrations` | | 200 the document (not counted) |
//! | `POST /_dev/applications` | `{"client_id","application_id"?,"developer_id"?,"name"?}` | 201 the application |
//! | `DELETE /_dev/applications/{client_id}` | | 204 |
//! | `POST /_dev/registrations` | `{"client_id","product","status"?}` (default `pending`; the app is created if unknown) | 201 |
//! | `POST /_dev/registrations/approve`, `/revoke`, `/reject` | `{"client_id","product"}` | 204; 404 without such a registration |
//! | `DELETE /_dev/registrations?client_id=..&product=..` | | 204 |
//! | `PUT /_dev/registrations/document` | any bytes (up to 96 MiB): served verbatim instead of the generated document | 204; 400 when the body could not be read whole |
//! | `DELETE /_dev/registrations/document` | | 204 (the generated document again) |

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Req, Shared};
use crate::serve::Resp;
use crate::util::{self, json_response, method_not_allowed, response};

/// Where a document to serve verbatim is uploaded (`PUT`).
pub(super) const DOCUMENT_ADMIN_PATH: &str = "/_dev/registrations/document";
/// The largest document that upload takes: above the filter's 64 MiB cap, so that a document
/// too large for the filter can be served.
pub(super) const MAX_DOCUMENT_UPLOAD: usize = 96 << 20;

/// An application of the portal, as the document lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub client_id: String,
    pub application_id: String,
    pub developer_id: Option<String>,
    pub name: String,
}

impl Application {
    /// An application with a generated `application_id` (`app-` and 12 random characters).
    pub fn new(client_id: &str) -> Application {
        Application {
            client_id: client_id.to_string(),
            application_id: format!("app-{}", util::random_id(12)),
            developer_id: None,
            name: client_id.to_string(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Portal {
    /// By client id; each with its registrations by product.
    apps: BTreeMap<String, (Application, BTreeMap<String, String>)>,
    /// Served instead of the generated document when set.
    raw: Option<Vec<u8>>,
    /// 304s answered.
    pub(super) not_modified: u64,
}

impl Portal {
    pub(super) fn add_application(&mut self, app: Application) {
        let regs = self
            .apps
            .remove(&app.client_id)
            .map(|(_, r)| r)
            .unwrap_or_default();
        self.apps.insert(app.client_id.clone(), (app, regs));
    }

    pub(super) fn remove_application(&mut self, client_id: &str) -> bool {
        self.apps.remove(client_id).is_some()
    }

    /// Sets (or creates) a registration; the application is created if unknown.
    pub(super) fn set_registration(&mut self, client_id: &str, product: &str, status: &str) {
        let entry = self
            .apps
            .entry(client_id.to_string())
            .or_insert_with(|| (Application::new(client_id), BTreeMap::new()));
        entry.1.insert(product.to_string(), status.to_string());
    }

    /// Changes an existing registration's status; false without one.
    pub(super) fn change_status(&mut self, client_id: &str, product: &str, status: &str) -> bool {
        match self
            .apps
            .get_mut(client_id)
            .and_then(|(_, regs)| regs.get_mut(product))
        {
            Some(s) => {
                *s = status.to_string();
                true
            }
            None => false,
        }
    }

    pub(super) fn remove_registration(&mut self, client_id: &str, product: &str) -> bool {
        self.apps
            .get_mut(client_id)
            .is_some_and(|(_, regs)| regs.remove(product).is_some())
    }

    pub(super) fn status(&self, client_id: &str, product: &str) -> Option<String> {
        self.apps
            .get(client_id)
            .and_then(|(_, regs)| regs.get(product).cloned())
    }

    pub(super) fn set_raw(&mut self, raw: Option<Vec<u8>>) {
        self.raw = raw;
    }

    /// The generated document (ordered by client id, then product: stable bytes, stable ETag).
    pub(super) fn document(&self) -> Value {
        let apps: Vec<Value> = self
            .apps
            .values()
            .map(|(app, regs)| {
                let registrations: Vec<Value> = regs
                    .iter()
                    .map(|(product, status)| json!({ "product": product, "status": status }))
                    .collect();
                json!({
                    "client_id": app.client_id,
                    "application_id": app.application_id,
                    "developer_id": app.developer_id,
                    "name": app.name,
                    "registrations": registrations,
                })
            })
            .collect();
        json!({ "applications": apps })
    }

    /// The bytes served and their strong `ETag`.
    pub(super) fn body_and_etag(&self) -> (Vec<u8>, String) {
        let body = match &self.raw {
            Some(raw) => raw.clone(),
            None => self.document().to_string().into_bytes(),
        };
        let digest = Sha256::digest(&body);
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        (body, format!("\"{hex}\""))
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, RFC 9110 13.1.2; `*`).
fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// `GET /_portal/registrations`.
pub(super) fn serve(shared: &Shared, req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::HEAD {
        return method_not_allowed("GET");
    }
    let mut state = shared.lock();
    let (body, etag) = state.portal.body_and_etag();
    let fresh = req
        .headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| matches(v, &etag));
    let mut resp = if fresh {
        state.portal.not_modified += 1;
        response(StatusCode::NOT_MODIFIED, None, "")
    } else {
        response(StatusCode::OK, Some(util::JSON), body)
    };
    util::set_header(&mut resp, "etag", &etag);
    util::set_header(&mut resp, "cache-control", "no-cache");
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationDto {
    client_id: String,
    #[serde(default)]
    application_id: Option<String>,
    #[serde(default)]
    developer_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationDto {
    client_id: String,
    product: String,
    #[serde(default)]
    status: Option<String>,
}

fn bad_request(message: &str) -> Resp {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

fn no_content() -> Resp {
    response(StatusCode::NO_CONTENT, None, "")
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, Box<Resp>> {
    serde_json::from_slice(req.body.as_deref().unwrap_or_default()).map_err(|_| {
        Box::new(bad_request(
            "invalid JSON body (see the portal module's table)",
        ))
    })
}

fn query_param(req: &Req, name: &str) -> Option<String> {
    req.query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

/// The admin API's portal part; `None` when the path is not one of its own.
pub(super) fn admin(shared: &Shared, req: &Req) -> Option<Resp> {
    let path = req.path.as_str();
    Some(match (path, &req.method) {
        ("/_dev/registrations", &Method::GET) => {
            json_response(StatusCode::OK, &shared.lock().portal.document())
        }
        ("/_dev/registrations", &Method::POST) => match parse::<RegistrationDto>(req) {
            Ok(r) if r.client_id.is_empty() || r.product.is_empty() => {
                bad_request("'client_id' and 'product' must not be empty")
            }
            Ok(r) => {
                let status = r.status.unwrap_or_else(|| "pending".into());
                shared
                    .lock()
                    .portal
                    .set_registration(&r.client_id, &r.product, &status);
                json_response(
                    StatusCode::CREATED,
                    &json!({ "client_id": r.client_id, "product": r.product, "status": status }),
                )
            }
            Err(resp) => *resp,
        },
        ("/_dev/registrations", &Method::DELETE) => {
            match (query_param(req, "client_id"), query_param(req, "product")) {
                (Some(id), Some(product)) => {
                    shared.lock().portal.remove_registration(&id, &product);
                    no_content()
                }
                _ => bad_request("'client_id' and 'product' query parameters are required"),
            }
        }
        ("/_dev/registrations", _) => method_not_allowed("GET, POST, DELETE"),
        ("/_dev/registrations/document", &Method::PUT) => match &req.body {
            Some(body) => {
                shared.lock().portal.set_raw(Some(body.clone()));
                no_content()
            }
            // Not an empty document: a body that could not be read whole.
            None => bad_request(&format!(
                "the document could not be read (at most {MAX_DOCUMENT_UPLOAD} bytes)"
            )),
        },
        ("/_dev/registrations/document", &Method::DELETE) => {
            shared.lock().portal.set_raw(None);
            no_content()
        }
        ("/_dev/registrations/document", _) => method_not_allowed("PUT, DELETE"),
        (
            "/_dev/registrations/approve"
            | "/_dev/registrations/revoke"
            | "/_dev/registrations/reject",
            m,
        ) => {
            if m != Method::POST {
                return Some(method_not_allowed("POST"));
            }
            let status = match path.rsplit('/').next() {
                Some("approve") => "approved",
                Some("revoke") => "revoked",
                _ => "rejected",
            };
            match parse::<RegistrationDto>(req) {
                Ok(r) if r.status.is_some() => bad_request("'status' is set by the path"),
                Ok(r) => {
                    if shared
                        .lock()
                        .portal
                        .change_status(&r.client_id, &r.product, status)
                    {
                        no_content()
                    } else {
                        json_response(
                            StatusCode::NOT_FOUND,
                            &json!({ "error": "no such registration (register it first: POST /_dev/registrations)" }),
                        )
                    }
                }
                Err(resp) => *resp,
            }
        }
        ("/_dev/applications", &Method::POST) => match parse::<ApplicationDto>(req) {
            Ok(a) if a.client_id.is_empty() => bad_request("'client_id' must not be empty"),
            Ok(a) => {
                let mut app = Application::new(&a.client_id);
                if let Some(id) = a.application_id {
                    app.application_id = id;
                }
                app.developer_id = a.developer_id;
                if let Some(name) = a.name {
                    app.name = name;
                }
                let out = json!({
                    "client_id": app.client_id, "application_id": app.application_id,
                    "developer_id": app.developer_id, "name": app.name,
                });
                shared.lock().portal.add_application(app);
                json_response(StatusCode::CREATED, &out)
            }
            Err(resp) => *resp,
        },
        ("/_dev/applications", _) => method_not_allowed("POST"),
        (p, m) if p.starts_with("/_dev/applications/") => {
            if m != Method::DELETE {
                return Some(method_not_allowed("DELETE"));
            }
            let raw = &p["/_dev/applications/".len()..];
            let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            shared.lock().portal.remove_application(id.as_ref());
            no_content()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let etag = "\"abc\"";
        for (header, hit) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
            ("abc", false),
            ("", false),
        ] {
            assert_eq!(matches(header, etag), hit, "{header}");
        }
    }

    #[test]
    fn the_document_is_stable_and_its_etag_follows_changes() {
        let mut p = Portal::default();
        let (_, empty) = p.body_and_etag();
        p.set_registration("b", "p1", "approved");
        p.set_registration("a", "p1", "pending");
        let (body, etag) = p.body_and_etag();
        assert_ne!(etag, empty);
        assert_eq!(p.body_and_etag(), (body.clone(), etag.clone()));
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["applications"][0]["client_id"], "a");
        assert_eq!(
            doc["applications"][1]["registrations"][0]["status"],
            "approved"
        );
        assert!(p.change_status("a", "p1", "approved"));
        assert!(!p.change_status("a", "p2", "approved"));
        assert!(!p.change_status("c", "p1", "approved"));
        assert_ne!(p.body_and_etag().1, etag);
        p.set_raw(Some(b"not json".to_vec()));
        assert_eq!(p.body_and_etag().0, b"not json");
        p.set_raw(None);
        assert!(p.remove_registration("a", "p1"));
        assert_eq!(p.status("a", "p1"), None);
        assert!(p.remove_application("a"));
        assert!(!p.remove_application("a"));
    }
}
