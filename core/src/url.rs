//! The few absolute `http(s)` URLs the filter handles (issuer, endpoints): split into the origin
//! the IdP call goes to and the `:path` it asks for. A full URL crate (with IDNA tables) would
//! weigh more than the rest of the filter, and nothing here needs more than this.

/// An absolute `http` or `https` URL without user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub https: bool,
    /// `host[:port]`, as written.
    pub authority: String,
    /// The host without the port (brackets kept for IPv6).
    pub host: String,
    /// Always starts with `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, &'static str> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must be an http or https URL");
        };
        if text
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'"' || b == b'\\')
        {
            return Err("must not contain spaces, quotes or control characters");
        }
        if text.contains('?') || text.contains('#') {
            return Err("must not have a query or fragment");
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err("has no host");
        }
        if authority.contains('@') {
            return Err("must not contain user info");
        }
        let host = host_of(authority)?;
        Ok(HttpUrl {
            https,
            authority: authority.to_string(),
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    /// `localhost`, `127.0.0.0/8` and `[::1]`: the only hosts plain `http` is allowed for.
    pub fn is_loopback(&self) -> bool {
        let host = self.host.as_str();
        host.eq_ignore_ascii_case("localhost")
            || host == "[::1]"
            || host
                .strip_prefix("127.")
                .is_some_and(|rest| rest.split('.').count() == 3 && rest.split('.').all(is_octet))
    }

    /// `scheme://authority`, to compare origins.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority.to_ascii_lowercase()
        )
    }
}

fn is_octet(part: &str) -> bool {
    !part.is_empty() && part.len() <= 3 && part.parse::<u8>().is_ok()
}

fn host_of(authority: &str) -> Result<&str, &'static str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or("has an unterminated IPv6 host")?;
        (&authority[..=end], &authority[end + 1..])
    } else {
        match authority.rfind(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        }
    };
    if let Some(port) = port.strip_prefix(':') {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("has an invalid port");
        }
    } else if !port.is_empty() {
        return Err("has an invalid host");
    }
    if host.is_empty() {
        return Err("has no host");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_origin_and_path() {
        let url = HttpUrl::parse("https://dev-123.okta.com/oauth2/default").unwrap();
        assert!(url.https);
        assert_eq!(url.authority, "dev-123.okta.com");
        assert_eq!(url.host, "dev-123.okta.com");
        assert_eq!(url.path, "/oauth2/default");
        assert_eq!(url.origin(), "https://dev-123.okta.com");
        let url = HttpUrl::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(url.authority, "127.0.0.1:9001");
        assert_eq!(url.path, "/");
        assert!(url.is_loopback());
        assert!(HttpUrl::parse("http://[::1]:80/x").unwrap().is_loopback());
    }

    #[test]
    fn refuses_what_it_cannot_call() {
        for bad in [
            "ftp://x/y",
            "https://",
            "https:///path",
            "https://user:pw@host/",
            "https://host/a?b",
            "https://host/a#b",
            "https://host:0/",
            "https://host:99999/",
            "https://ho st/",
            "https://[::1/",
            "dev.okta.com/oauth2/default",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_is_only_loopback() {
        for (url, loopback) in [
            ("http://localhost:1/", true),
            ("http://127.0.0.1/", true),
            ("http://127.1.2.3/", true),
            ("http://127.0.0.1.evil.com/", false),
            ("http://127.evil.com/", false),
            ("http://10.0.0.1/", false),
            ("http://example.com/", false),
        ] {
            assert_eq!(
                HttpUrl::parse(url).unwrap().is_loopback(),
                loopback,
                "{url}"
            );
        }
    }
}
