//! The admin API under `/_dev/`, for out-of-process use (`make run`, soak, bench). JSON in, JSON
//! out; it never answers with a secret.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /_dev/clients` | `{"id","secret","scopes":[..]}` | 201 `{"id","scopes"}` |
//! | `GET /_dev/clients` | | 200 `[{"id","scopes"}]` |
//! | `DELETE /_dev/clients/{id}` | | 204 |
//! | `GET /_dev/stats` | | 200 `{"discovery","token","introspect","keys","registrations","token_requests","registrations_not_modified"}` |
//! | `POST /_dev/fault` | see [`FaultDto`] | 204 |
//! | `DELETE /_dev/fault[?endpoint=token]` | | 204 (all endpoints without `endpoint`) |
//! | `POST /_dev/tokens` | a [`TokenSpec`](super::TokenSpec) as JSON, see [`TokenSpecDto`] | 200 `{"access_token","token_type","expires_in"}` |
//! | `GET /_dev/keys` | | 200 `{"signing_kid","published":[..]}` |
//! | `POST /_dev/keys/publish` | | 200 `{"kid"}`: rotation step 1, the next key is published |
//! | `POST /_dev/keys/switch` | | 200 `{"kid"}`: step 2, tokens are signed with the newest key |
//! | `POST /_dev/keys/retire` | | 200 `{"retired":[..]}`: step 3, only the signing key stays |
//! | `POST /_dev/keys/rotate` | | 200 `{"kid","retired":[..]}`: the three steps at once |
//! | `POST /_dev/revoke` | `{"token"}` | 204 |
//! | `POST /_dev/reset` | | 204 (counters, as `IdpHandle::reset_counters`) |
//! | `GET`, `POST`, `DELETE /_dev/rate_limit` | see the `ratelimit` module | |
//! | `GET`, `POST`, `DELETE /_dev/concurrency` | see the `ratelimit` module | |
//! | `POST /_dev/latency` | `{"ms":150}` | 204: every Okta endpoint answers that much later (`IdpHandle::set_latency`) |
//! | `DELETE /_dev/latency` | | 204 (no latency) |
//! | `/_dev/registrations…`, `/_dev/applications…` | | the Dev Portal: see the `portal` module |
//! | `GET /_dev/latency` | | 200 `{"ms"}` |

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{Endpoint, Fault, FaultAnswer, Req, Shared, Signing, TokenSpec};
use crate::serve::Resp;
use crate::util::{json_response, method_not_allowed, not_found, response};

/// `POST /_dev/clients`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientDto {
    id: String,
    secret: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// `POST /_dev/fault`: `{"endpoint":"token","delay_ms":0,"answer":"status","status":500}`.
///
/// `answer` is one of `normal` (default), `status` (needs `status`), `garbage`, `html`,
/// `empty_ok`, `rate_limited` (`reset_in_secs`, default 60), `custom` (`status`, `content_type`
/// default `application/json`, `body`, `headers` as `[[name, value], ..]`), `reset_connection`,
/// `padded` (`bytes`: the usual answer padded with spaces to that size). `endpoint` is one of
/// `discovery`, `token`, `introspect`, `keys`, `registrations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultDto {
    endpoint: String,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reset_in_secs: Option<u64>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    bytes: Option<usize>,
}

/// `POST /_dev/tokens`: the fields of [`TokenSpec`]; only `client_id` is required. Defaults are
/// those of [`TokenSpec::for_client`] (`claims` default `{"app_id": client_id}`). `signing` is
/// `genuine` (default), `unpublished_key`, `hs256_public_key`, `hs256` (with `hs256_secret`)
/// or `none`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpecDto {
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<i64>,
    #[serde(default)]
    claims: Option<Map<String, Value>>,
    #[serde(default)]
    introspect_active_even_if_expired: bool,
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    signing: Option<String>,
    #[serde(default)]
    hs256_secret: Option<String>,
}

fn signing_from(dto: &TokenSpecDto) -> Result<Signing, Box<Resp>> {
    Ok(match dto.signing.as_deref().unwrap_or("genuine") {
        "genuine" => Signing::Genuine,
        "unpublished_key" => Signing::UnpublishedKey,
        "hs256_public_key" => Signing::Hs256WithPublicKey,
        "none" => Signing::None,
        "hs256" => match &dto.hs256_secret {
            Some(secret) => Signing::Hs256(secret.as_bytes().to_vec()),
            None => {
                return Err(Box::new(bad_request(
                    "signing 'hs256' needs 'hs256_secret'",
                )))
            }
        },
        _ => {
            return Err(Box::new(bad_request(
                "'signing' must be one of genuine, unpublished_key, hs256_public_key, hs256, none",
            )))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeDto {
    token: String,
}

/// `POST /_dev/latency`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyDto {
    ms: u64,
}

fn bad_request(message: &str) -> Resp {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

fn no_content() -> Resp {
    response(StatusCode::NO_CONTENT, None, "")
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Req) -> Result<T, Box<Resp>> {
    let body = req.body.as_deref().unwrap_or_default();
    // The serde error names the field and position; it never quotes a value back.
    serde_json::from_slice(body).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(i) = msg.find(" at line") {
            msg.truncate(i);
        }
        Box::new(bad_request(&format!(
            "invalid JSON body: {}",
            msg.replace('`', "'")
        )))
    })
}

pub(super) fn handle(shared: &Shared, req: &Req) -> Resp {
    if let Some(resp) = super::portal::admin(shared, req) {
        return resp;
    }
    let path = req.path.as_str();
    match (path, &req.method) {
        ("/_dev/clients", &Method::POST) => match parse::<ClientDto>(req) {
            Ok(c) if c.id.is_empty() || c.secret.is_empty() => {
                bad_request("'id' and 'secret' must not be empty")
            }
            Ok(c) => {
                shared.register_client(&c.id, &c.secret, &c.scopes);
                json_response(
                    StatusCode::CREATED,
                    &json!({ "id": c.id, "scopes": c.scopes }),
                )
            }
            Err(resp) => *resp,
        },
        ("/_dev/clients", &Method::GET) => {
            let state = shared.lock();
            let mut clients: Vec<Value> = state
                .clients
                .values()
                .map(|c| json!({ "id": c.id, "scopes": c.scopes }))
                .collect();
            clients.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            json_response(StatusCode::OK, &Value::Array(clients))
        }
        ("/_dev/clients", _) => method_not_allowed("GET, POST"),
        (p, m) if p.starts_with("/_dev/clients/") => {
            if m != Method::DELETE {
                return method_not_allowed("DELETE");
            }
            let raw = &p["/_dev/clients/".len()..];
            let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
            shared.lock().clients.remove(id.as_ref());
            no_content()
        }
        ("/_dev/stats", &Method::GET) => {
            let state = shared.lock();
            let mut stats = Map::new();
            for ep in Endpoint::ALL {
                stats.insert(ep.name().into(), json!(state.calls[ep.index()]));
            }
            stats.insert("token_requests".into(), json!(state.token_requests.len()));
            stats.insert(
                "registrations_not_modified".into(),
                json!(state.portal.not_modified),
            );
            json_response(StatusCode::OK, &Value::Object(stats))
        }
        ("/_dev/stats", _) => method_not_allowed("GET"),
        ("/_dev/fault", &Method::POST) => match parse::<FaultDto>(req).and_then(fault_from) {
            Ok((ep, fault)) => {
                shared.lock().faults.insert(ep, fault);
                no_content()
            }
            Err(resp) => *resp,
        },
        ("/_dev/fault", &Method::DELETE) => {
            let endpoint = req.query.as_deref().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "endpoint")
                    .map(|(_, v)| v.into_owned())
            });
            match endpoint {
                None => shared.lock().faults.clear(),
                Some(name) => match Endpoint::from_name(&name) {
                    Some(ep) => {
                        shared.lock().faults.remove(&ep);
                    }
                    None => return bad_request("unknown endpoint"),
                },
            }
            no_content()
        }
        ("/_dev/fault", _) => method_not_allowed("POST, DELETE"),
        ("/_dev/tokens", &Method::POST) => match parse::<TokenSpecDto>(req)
            .and_then(|dto| signing_from(&dto).map(|signing| (dto, signing)))
        {
            Ok((dto, signing)) => {
                let mut spec = TokenSpec::for_client(&dto.client_id, &[]);
                spec.scopes = dto.scopes;
                if dto.audience.is_some() {
                    spec.audience = dto.audience;
                }
                spec.issuer = dto.issuer;
                if let Some(e) = dto.expires_in_secs {
                    spec.expires_in_secs = e;
                }
                if let Some(claims) = dto.claims {
                    spec.claims = claims;
                }
                spec.introspect_active_even_if_expired = dto.introspect_active_even_if_expired;
                spec.header = dto.header.unwrap_or_default();
                spec.signing = signing;
                let expires_in = spec.expires_in_secs;
                let token = shared.issue(&spec);
                json_response(
                    StatusCode::OK,
                    &json!({ "access_token": token, "token_type": "Bearer", "expires_in": expires_in }),
                )
            }
            Err(resp) => *resp,
        },
        ("/_dev/tokens", _) => method_not_allowed("POST"),
        ("/_dev/keys", &Method::GET) => {
            let state = shared.lock();
            json_response(
                StatusCode::OK,
                &json!({
                    "signing_kid": state.keys.signing_kid(),
                    "published": state.keys.published_kids(),
                }),
            )
        }
        ("/_dev/keys", _) => method_not_allowed("GET"),
        (
            "/_dev/keys/publish" | "/_dev/keys/switch" | "/_dev/keys/retire" | "/_dev/keys/rotate",
            m,
        ) if m != Method::POST => method_not_allowed("POST"),
        ("/_dev/keys/publish", _) => {
            let kid = shared.lock().keys.publish_next();
            json_response(StatusCode::OK, &json!({ "kid": kid }))
        }
        ("/_dev/keys/switch", _) => {
            let kid = shared.lock().keys.switch_to_newest();
            json_response(StatusCode::OK, &json!({ "kid": kid }))
        }
        ("/_dev/keys/retire", _) => {
            let retired = shared.lock().keys.retire_others();
            json_response(StatusCode::OK, &json!({ "retired": retired }))
        }
        ("/_dev/keys/rotate", _) => {
            let (kid, retired) = shared.lock().keys.rotate();
            json_response(StatusCode::OK, &json!({ "kid": kid, "retired": retired }))
        }
        ("/_dev/revoke", &Method::POST) => match parse::<RevokeDto>(req) {
            Ok(dto) => {
                if let Some(t) = shared.lock().tokens.get_mut(&dto.token) {
                    t.revoked = true;
                }
                no_content()
            }
            Err(resp) => *resp,
        },
        ("/_dev/revoke", _) => method_not_allowed("POST"),
        ("/_dev/reset", &Method::POST) => {
            let mut state = shared.lock();
            state.calls = [0; Endpoint::ALL.len()];
            state.answered = [0; Endpoint::ALL.len()];
            state.token_requests.clear();
            state.introspections.clear();
            state.concurrency.reset_max();
            state.portal.not_modified = 0;
            no_content()
        }
        ("/_dev/reset", _) => method_not_allowed("POST"),
        ("/_dev/rate_limit", _) => super::ratelimit::admin(shared, req),
        ("/_dev/concurrency", _) => super::ratelimit::concurrency_admin(shared, req),
        ("/_dev/latency", &Method::POST) => match parse::<LatencyDto>(req) {
            Ok(dto) => {
                shared.lock().latency = Duration::from_millis(dto.ms);
                no_content()
            }
            Err(resp) => *resp,
        },
        ("/_dev/latency", &Method::DELETE) => {
            shared.lock().latency = Duration::ZERO;
            no_content()
        }
        ("/_dev/latency", &Method::GET) => {
            let ms = u64::try_from(shared.lock().latency.as_millis()).unwrap_or(u64::MAX);
            json_response(StatusCode::OK, &json!({ "ms": ms }))
        }
        ("/_dev/latency", _) => method_not_allowed("GET, POST, DELETE"),
        _ => not_found(path),
    }
}

fn fault_from(dto: FaultDto) -> Result<(Endpoint, Fault), Box<Resp>> {
    let Some(ep) = Endpoint::from_name(&dto.endpoint) else {
        return Err(Box::new(bad_request(
            "'endpoint' must be one of discovery, token, introspect, keys, registrations",
        )));
    };
    let answer = match dto.answer.as_deref().unwrap_or("normal") {
        "normal" => FaultAnswer::Normal,
        "status" => match dto.status {
            Some(s) if (100..=999).contains(&s) => FaultAnswer::Status(s),
            _ => return Err(Box::new(bad_request("answer 'status' needs 'status' (100-999)"))),
        },
        "garbage" => FaultAnswer::Garbage,
        "html" => FaultAnswer::Html,
        "empty_ok" => FaultAnswer::EmptyOk,
        "rate_limited" => FaultAnswer::RateLimited {
            reset_in_secs: dto.reset_in_secs.unwrap_or(60),
        },
        "custom" => match dto.status {
            Some(status) if (100..=999).contains(&status) => FaultAnswer::Custom {
                status,
                content_type: dto
                    .content_type
                    .unwrap_or_else(|| crate::util::JSON.to_string()),
                body: dto.body.unwrap_or_default(),
                headers: dto.headers,
            },
            _ => return Err(Box::new(bad_request("answer 'custom' needs 'status' (100-999)"))),
        },
        "reset_connection" => FaultAnswer::ResetConnection,
        "padded" => match dto.bytes {
            Some(bytes) if bytes <= 256 * 1024 * 1024 => FaultAnswer::Padded { bytes },
            _ => return Err(Box::new(bad_request("answer 'padded' needs 'bytes' (at most 268435456)"))),
        },
        _ => return Err(Box::new(bad_request(
            "'answer' must be one of normal, status, garbage, html, empty_ok, rate_limited, custom, reset_connection, padded",
        ))),
    };
    Ok((
        ep,
        Fault {
            delay: Duration::from_millis(dto.delay_ms),
            answer,
        },
    ))
}
