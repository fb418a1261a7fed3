//! What the filter decides about a request and how each decision is answered: a grant that
//! becomes upstream headers, or a denial that becomes exactly one local reply (contract,
//! "Responses").

use crate::credentials::Accepted;

/// What a grant puts in an upstream header: no control characters (CR, LF, NUL, ...).
pub fn header_safe(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// What one configuration's replies say besides the denial: its realm, the schemes it
/// accepts (challenges), and the scopes it requires.
#[derive(Debug, Clone)]
pub struct ReplyTerms {
    pub realm: String,
    pub accepted: Accepted,
    /// The required scopes, space-separated.
    pub scope: String,
}

/// A positive verdict: who is calling and what they may do.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// The DCR app (`x-credential-identifier`).
    pub identity: String,
    /// Granted scopes, space-separated (`x-authenticated-scope`).
    pub scope: String,
    /// Basic path: the token Okta issued, forwarded upstream when configured.
    pub access_token: Option<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("identity", &self.identity)
            .field("scope", &self.scope)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Every way a request is refused. Each maps to one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No usable `Authorization` (none, empty, or a scheme not accepted).
    NoCredentials,
    /// Basic credentials malformed or refused by Okta (`invalid_client`).
    InvalidClient,
    /// Bearer token malformed, inactive, expired, or for another issuer or audience.
    InvalidToken,
    /// Valid credentials without a required scope (or Okta `invalid_scope`).
    InsufficientScope,
    /// More than one `Authorization` header.
    DuplicateAuthorization,
    /// Client-sent identity headers the host cannot take out of the request (ngx_wasm_module:
    /// several copies of one, or a spelling nginx cannot edit): their values would reach the
    /// upstream.
    UnremovableHeaders,
    /// The IdP could not give a verdict and no usable cached one exists.
    IdpUnavailable,
    /// `product` set: the application holds no approved registration for this API (a Bearer
    /// token's app, or a Basic client id in the registrations document).
    NotRegistered,
    /// `product` set: no registrations document may answer (none yet, or too old).
    RegistrationsUnavailable,
}

impl Denial {
    pub const ALL: [Denial; 9] = [
        Denial::NoCredentials,
        Denial::InvalidClient,
        Denial::InvalidToken,
        Denial::InsufficientScope,
        Denial::DuplicateAuthorization,
        Denial::UnremovableHeaders,
        Denial::IdpUnavailable,
        Denial::NotRegistered,
        Denial::RegistrationsUnavailable,
    ];

    /// A short name for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::NoCredentials => "no_credentials",
            Denial::InvalidClient => "invalid_client",
            Denial::InvalidToken => "invalid_token",
            Denial::InsufficientScope => "insufficient_scope",
            Denial::DuplicateAuthorization => "duplicate_authorization",
            Denial::UnremovableHeaders => "unremovable_identity_headers",
            Denial::IdpUnavailable => "idp_unavailable",
            Denial::NotRegistered => "not_registered",
            Denial::RegistrationsUnavailable => "registrations_unavailable",
        }
    }

    pub fn reply(self, terms: &ReplyTerms) -> LocalReply {
        let realm = &terms.realm;
        let basic = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
        let (status, challenges, message) = match self {
            Denial::NoCredentials => {
                let mut challenges = Vec::new();
                if terms.accepted.bearer {
                    challenges.push(format!("Bearer realm=\"{realm}\""));
                }
                if terms.accepted.basic {
                    challenges.push(basic);
                }
                (401, challenges, "missing credentials")
            }
            Denial::InvalidClient => (401, vec![basic], "invalid client credentials"),
            Denial::InvalidToken => (
                401,
                vec![format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")],
                "invalid token",
            ),
            Denial::InsufficientScope => (
                403,
                vec![format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                    terms.scope
                )],
                "insufficient scope",
            ),
            Denial::DuplicateAuthorization => (
                400,
                vec![format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_request\""
                )],
                "more than one Authorization header",
            ),
            Denial::UnremovableHeaders => (
                400,
                vec![format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_request\""
                )],
                "x-credential-identifier or x-authenticated-scope sent by the client",
            ),
            Denial::IdpUnavailable => (503, Vec::new(), "identity provider unavailable"),
            // Not a problem with the credential: no challenge.
            Denial::NotRegistered => (
                403,
                Vec::new(),
                "the application is not registered, or not approved, for this API",
            ),
            Denial::RegistrationsUnavailable => (503, Vec::new(), "registrations unavailable"),
        };
        LocalReply {
            status,
            challenges,
            body: format!("{{\"message\":\"{message}\"}}"),
        }
    }
}

/// A reply the filter sends itself instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// One `WWW-Authenticate` header each.
    pub challenges: Vec<String>,
    /// `application/json`.
    pub body: String,
}

/// Every reply one configuration can send, built once when the plugin starts, so that a
/// refusal costs no formatting (a flood of bad credentials is a flood of refusals).
#[derive(Debug, Clone)]
pub struct Replies(Vec<LocalReply>);

impl Replies {
    pub fn new(terms: &ReplyTerms) -> Replies {
        Replies(Denial::ALL.iter().map(|d| d.reply(terms)).collect())
    }

    pub fn get(&self, denial: Denial) -> &LocalReply {
        // `ALL` lists every variant, so the position always exists; the fallback is unreachable.
        let i = Denial::ALL.iter().position(|d| *d == denial).unwrap_or(0);
        &self.0[i]
    }
}

impl LocalReply {
    /// When the configuration was refused but the host still sends requests through the
    /// filter: fail closed.
    pub fn not_configured() -> LocalReply {
        LocalReply {
            status: 503,
            challenges: Vec::new(),
            body: r#"{"message":"filter not configured"}"#.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(accept: &str) -> ReplyTerms {
        ReplyTerms {
            realm: "api".into(),
            accepted: Accepted {
                basic: accept.contains("basic"),
                bearer: accept.contains("bearer"),
                raw_basic: true,
            },
            scope: "api:read api:write".into(),
        }
    }

    #[test]
    fn replies_follow_the_contract_table() {
        let c = config(r#"["basic","bearer"]"#);
        let r = Denial::NoCredentials.reply(&c);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.challenges,
            [
                "Bearer realm=\"api\"",
                "Basic realm=\"api\", charset=\"UTF-8\""
            ]
        );
        assert_eq!(r.body, r#"{"message":"missing credentials"}"#);
        let r = Denial::InvalidClient.reply(&c);
        assert_eq!(
            (r.status, r.challenges[0].as_str()),
            (401, "Basic realm=\"api\", charset=\"UTF-8\"")
        );
        let r = Denial::InvalidToken.reply(&c);
        assert_eq!(
            (r.status, r.challenges[0].as_str()),
            (401, "Bearer realm=\"api\", error=\"invalid_token\"")
        );
        let r = Denial::InsufficientScope.reply(&c);
        assert_eq!(
            (r.status, r.challenges[0].as_str()),
            (
                403,
                "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"api:read api:write\""
            )
        );
        let r = Denial::DuplicateAuthorization.reply(&c);
        assert_eq!(
            (r.status, r.challenges[0].as_str()),
            (400, "Bearer realm=\"api\", error=\"invalid_request\"")
        );
        let r = Denial::IdpUnavailable.reply(&c);
        assert_eq!((r.status, r.challenges.len()), (503, 0));
        let r = Denial::NotRegistered.reply(&c);
        assert_eq!((r.status, r.challenges.len()), (403, 0));
        assert_eq!(
            r.body,
            r#"{"message":"the application is not registered, or not approved, for this API"}"#
        );
        for d in [
            Denial::NoCredentials,
            Denial::InvalidClient,
            Denial::IdpUnavailable,
        ] {
            let body: serde_json::Value = serde_json::from_str(&d.reply(&c).body).unwrap();
            assert!(body["message"].is_string());
        }
    }

    #[test]
    fn prebuilt_replies_are_the_replies() {
        let c = config(r#"["basic","bearer"]"#);
        let replies = Replies::new(&c);
        for d in Denial::ALL {
            assert_eq!(replies.get(d), &d.reply(&c), "{d:?}");
        }
    }

    #[test]
    fn challenges_only_for_accepted_schemes() {
        assert_eq!(
            Denial::NoCredentials
                .reply(&config(r#"["bearer"]"#))
                .challenges,
            ["Bearer realm=\"api\""]
        );
        assert_eq!(
            Denial::NoCredentials
                .reply(&config(r#"["basic"]"#))
                .challenges,
            ["Basic realm=\"api\", charset=\"UTF-8\""]
        );
    }
}
