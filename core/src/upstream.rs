//! What an allowed request carries upstream, decided here and applied by the glue: the
//! identity and scope headers, the `Authorization` edit, and which client-sent headers would
//! pass for ours and must go first (contract, "Upstream").

use crate::credentials::Scheme;
use crate::verdict::Grant;

/// The DCR app (`app_claim`; on the Basic path, the client id).
pub const IDENTITY_HEADER: &str = "x-credential-identifier";
/// The granted scopes, space-separated.
pub const SCOPE_HEADER: &str = "x-authenticated-scope";
/// `product` set: the portal's id of the approved app (the registrations document's
/// `application_id`), when the document has it.
pub const APPLICATION_HEADER: &str = "x-application-id";
/// `product` set: the portal's id of the app's developer (`developer_id`), when the document
/// has it.
pub const DEVELOPER_HEADER: &str = "x-developer-id";
/// The application context headers: set only with `product`, and then removed from what the
/// client sent like the identity headers.
pub const CONTEXT_HEADERS: [&str; 2] = [APPLICATION_HEADER, DEVELOPER_HEADER];

/// Whether a client-sent header name is a spelling of `ours`: any case, and `_` or `.` for
/// `-` (some upstreams and frameworks read them as the same name).
fn spells(name: &str, ours: &str) -> bool {
    name.len() == ours.len()
        && name
            .bytes()
            .zip(ours.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (b == b'-' && (a == b'_' || a == b'.')))
}

/// Client-sent headers that would pass for ours (see [`spells`]).
pub fn is_identity_header(name: &str) -> bool {
    spells(name, IDENTITY_HEADER) || spells(name, SCOPE_HEADER)
}

/// Client-sent headers that would pass for the application context (see [`spells`]).
pub fn is_context_header(name: &str) -> bool {
    CONTEXT_HEADERS.iter().any(|ours| spells(name, ours))
}

/// An allowed request's upstream edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub identity: String,
    pub scope: String,
    pub authorization: AuthorizationEdit,
    /// `x-application-id` (`product` set, the document has it).
    pub application_id: Option<String>,
    /// `x-developer-id` (`product` set, the document has it).
    pub developer_id: Option<String>,
    /// `product` set: the context headers are ours, set or removed (a client-sent copy was
    /// emptied before the decision, and an empty header must not stay).
    pub context: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub enum AuthorizationEdit {
    /// Bearer path: the client's token goes upstream unchanged.
    Keep,
    /// Basic path without `forward_access_token`: the secret never goes upstream.
    Remove,
    /// Basic path: `Bearer <the token Okta issued>`.
    Set(String),
}

impl std::fmt::Debug for AuthorizationEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthorizationEdit::Keep => "Keep",
            AuthorizationEdit::Remove => "Remove",
            AuthorizationEdit::Set(_) => "Set(<redacted>)",
        })
    }
}

/// One change to the upstream request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    Set(&'static str, &'a str),
    Remove(&'static str),
}

impl Forward {
    /// A grant for a credential of `scheme`: on the Basic path the client secret never goes
    /// upstream; the token Okta issued does, when `forward_access_token` says so.
    pub fn new(scheme: Scheme, grant: Grant, forward_access_token: bool) -> Forward {
        let authorization = match scheme {
            Scheme::Bearer => AuthorizationEdit::Keep,
            Scheme::Basic => match grant.access_token {
                Some(token) if forward_access_token => {
                    AuthorizationEdit::Set(format!("Bearer {token}"))
                }
                _ => AuthorizationEdit::Remove,
            },
        };
        Forward {
            identity: grant.identity,
            scope: grant.scope,
            authorization,
            application_id: None,
            developer_id: None,
            context: false,
        }
    }

    /// The credential's scheme, as its `Authorization` edit tells.
    pub fn scheme(&self) -> Scheme {
        match self.authorization {
            AuthorizationEdit::Keep => Scheme::Bearer,
            _ => Scheme::Basic,
        }
    }

    /// The header edits, in the order the glue applies them.
    pub fn edits(&self) -> Vec<HeaderEdit<'_>> {
        let mut edits = vec![HeaderEdit::Set(IDENTITY_HEADER, &self.identity)];
        edits.push(if self.scope.is_empty() {
            HeaderEdit::Remove(SCOPE_HEADER)
        } else {
            HeaderEdit::Set(SCOPE_HEADER, &self.scope)
        });
        match &self.authorization {
            AuthorizationEdit::Keep => {}
            AuthorizationEdit::Remove => edits.push(HeaderEdit::Remove("authorization")),
            AuthorizationEdit::Set(value) => edits.push(HeaderEdit::Set("authorization", value)),
        }
        if self.context {
            for (name, value) in [
                (APPLICATION_HEADER, &self.application_id),
                (DEVELOPER_HEADER, &self.developer_id),
            ] {
                edits.push(match value {
                    Some(value) => HeaderEdit::Set(name, value),
                    None => HeaderEdit::Remove(name),
                });
            }
        }
        edits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(scope: &str, token: Option<&str>) -> Grant {
        Grant {
            identity: "0oaApp".into(),
            scope: scope.into(),
            access_token: token.map(str::to_string),
        }
    }

    #[test]
    fn every_spelling_of_our_headers_is_spoofed() {
        for name in [
            "x-credential-identifier",
            "X-Credential-Identifier",
            "X_CREDENTIAL_IDENTIFIER",
            "x.credential.identifier",
            "x-authenticated-scope",
            "X-Authenticated_Scope",
            "x.authenticated.scope",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-credential-identifiers",
            "x-credential",
            "authorization",
            "x-authenticated-scopes",
            "xcredential-identifier",
            "x-credential-identifieR ",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn basic_grant_forwards_the_okta_token_never_the_secret() {
        let f = Forward::new(Scheme::Basic, grant("api:read", Some("okta.jwt")), true);
        assert_eq!(
            f.edits(),
            [
                HeaderEdit::Set(IDENTITY_HEADER, "0oaApp"),
                HeaderEdit::Set(SCOPE_HEADER, "api:read"),
                HeaderEdit::Set("authorization", "Bearer okta.jwt"),
            ]
        );
        let f = Forward::new(Scheme::Basic, grant("api:read", Some("okta.jwt")), false);
        assert_eq!(f.edits()[2], HeaderEdit::Remove("authorization"));
        // no token from Okta: the client's Basic credentials still never go upstream
        let f = Forward::new(Scheme::Basic, grant("api:read", None), true);
        assert_eq!(f.edits()[2], HeaderEdit::Remove("authorization"));
    }

    #[test]
    fn bearer_grant_keeps_the_token_and_an_empty_scope_removes_the_header() {
        let f = Forward::new(Scheme::Bearer, grant("", None), true);
        assert_eq!(
            f.edits(),
            [
                HeaderEdit::Set(IDENTITY_HEADER, "0oaApp"),
                HeaderEdit::Remove(SCOPE_HEADER),
            ]
        );
        assert_eq!(
            format!(
                "{:?}",
                Forward::new(Scheme::Basic, grant("", Some("tok")), true)
            ),
            "Forward { identity: \"0oaApp\", scope: \"\", authorization: Set(<redacted>), application_id: None, developer_id: None, context: false }"
        );
    }

    #[test]
    fn context_headers_go_upstream_when_known_and_every_spelling_is_spoofed() {
        let mut f = Forward::new(Scheme::Basic, grant("", None), false);
        assert_eq!(f.scheme(), Scheme::Basic);
        assert_eq!(f.edits().len(), 3, "no context without product");
        f.context = true;
        f.application_id = Some("app-1".into());
        assert_eq!(
            f.edits()[2..],
            [
                HeaderEdit::Remove("authorization"),
                HeaderEdit::Set(APPLICATION_HEADER, "app-1"),
                HeaderEdit::Remove(DEVELOPER_HEADER),
            ]
        );
        f.developer_id = Some("dev-9".into());
        assert_eq!(
            f.edits().last(),
            Some(&HeaderEdit::Set(DEVELOPER_HEADER, "dev-9"))
        );
        assert_eq!(
            Forward::new(Scheme::Bearer, grant("", None), true).scheme(),
            Scheme::Bearer
        );
        for name in [
            "x-application-id",
            "X-Application-ID",
            "x_application_id",
            "x.developer.id",
        ] {
            assert!(is_context_header(name), "{name}");
            assert!(!is_identity_header(name), "{name}");
        }
        for name in [
            "x-application-ids",
            "x-application",
            "x-credential-identifier",
        ] {
            assert!(!is_context_header(name), "{name}");
        }
    }
}
