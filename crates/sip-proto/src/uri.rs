//! SIP/TEL URIs, name-addr values (From/To/Contact) and Via.

use std::fmt;

use crate::header::{split_outside_quotes, unquote, Params};

/// A parsed `sip:`, `sips:` or `tel:` URI. Other schemes keep their text in
/// `host` so they can be echoed back but never routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Lowercased scheme (`sip`, `sips`, `tel`, ...).
    pub scheme: String,
    /// User part (or the number of a `tel:` URI), unescaped as received.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// URI parameters (`;transport=tcp;x-nearend`).
    pub params: Params,
    /// Raw `?headers` part, without the `?`.
    pub headers: Option<String>,
}

impl Uri {
    pub fn parse(s: &str) -> Option<Uri> {
        let s = s.trim();
        let (scheme, rest) = s.split_once(':')?;
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.is_empty() || rest.bytes().any(|b| b.is_ascii_whitespace() || b == b'<' || b == b'>') {
            return None;
        }
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => (r, Some(h.to_owned())),
            None => (rest, None),
        };
        if scheme == "tel" {
            let mut parts = rest.splitn(2, ';');
            let number = parts.next()?.to_owned();
            if number.is_empty() {
                return None;
            }
            return Some(Uri {
                scheme,
                user: Some(number),
                host: String::new(),
                port: None,
                params: Params::parse(parts.next().unwrap_or("")),
                headers,
            });
        }
        let (user, hostpart) = match rest.rfind('@') {
            Some(i) => {
                let userinfo = &rest[..i];
                // Drop a password (`user:pass`): it is never used here.
                let user = userinfo.split(':').next().unwrap_or(userinfo);
                (Some(user.to_owned()), &rest[i + 1..])
            }
            None => (None, rest),
        };
        let (hostport, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], &hostpart[i + 1..]),
            None => (hostpart, ""),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return None;
        }
        Some(Uri { scheme, user, host, port, params: Params::parse(params), headers })
    }

    /// The user part when it looks like a telephone number (digits with an
    /// optional leading `+`, visual separators removed).
    pub fn number(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let user = user.split(';').next().unwrap_or(user);
        phone_number(user)
    }

    /// `user@host` (or the number of a tel URI), without parameters.
    pub fn aor(&self) -> String {
        match (&self.user, self.host.is_empty()) {
            (Some(u), false) => format!("{}:{}@{}", self.scheme, u, self.host),
            (Some(u), true) => format!("{}:{}", self.scheme, u),
            (None, _) => format!("{}:{}", self.scheme, self.host),
        }
    }
}

/// Extracts a telephone number from free text such as a URI user part:
/// `+1 (555) 010-0000` → `+15550100000`. `None` if it is not number-like.
pub fn phone_number(s: &str) -> Option<String> {
    let s = s.trim();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        match c {
            '0'..='9' | '*' | '#' => out.push(c),
            '+' if i == 0 => out.push(c),
            '-' | '.' | '(' | ')' | ' ' => {}
            _ => return None,
        }
    }
    (out.chars().any(|c| c.is_ascii_digit())).then_some(out)
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = format!("[{}]", &rest[..end]);
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.trim().parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if self.scheme == "tel" {
            write!(f, "{}", self.user.as_deref().unwrap_or(""))?;
        } else {
            if let Some(u) = &self.user {
                write!(f, "{u}@")?;
            }
            write!(f, "{}", self.host)?;
            if let Some(p) = self.port {
                write!(f, ":{p}")?;
            }
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// A `name-addr` / `addr-spec` header value: From, To, Contact, P-Asserted-Identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    /// Header parameters after the address (`;tag=...`).
    pub params: Params,
}

impl NameAddr {
    pub fn parse(s: &str) -> Option<NameAddr> {
        let s = s.trim();
        if let Some(lt) = find_unquoted(s, b'<') {
            let gt = lt + s[lt..].find('>')?;
            let display = s[..lt].trim();
            let display_name = (!display.is_empty()).then(|| unquote(display)).filter(|d| !d.is_empty());
            let uri = Uri::parse(&s[lt + 1..gt])?;
            let params = Params::parse(s[gt + 1..].trim_start_matches(|c: char| c.is_whitespace()));
            Some(NameAddr { display_name, uri, params })
        } else {
            // addr-spec: parameters after `;` belong to the header, not the URI.
            let (uri, params) = match s.find(';') {
                Some(i) => (&s[..i], &s[i + 1..]),
                None => (s, ""),
            };
            Some(NameAddr { display_name: None, uri: Uri::parse(uri)?, params: Params::parse(params) })
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }

    /// A parameter from either the header or the URI (vendors use both
    /// places for things like Cisco's `x-refci`).
    pub fn any_param(&self, name: &str) -> Option<Option<&str>> {
        self.params.get(name).or_else(|| self.uri.params.get(name))
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display_name {
            write!(f, "\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

fn find_unquoted(s: &str, needle: u8) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == needle && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// RFC 3261 branch prefix marking a compliant (RFC 3261) transaction id.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Uppercased transport (`UDP`, `TCP`, `TLS`, ...).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// One via-parm. Whitespace around the slashes of the sent-protocol
    /// and around `;` and `=` is allowed (RFC 3261 SLASH, SEMI, EQUAL are
    /// SWS-padded); an empty parameter (`;;`) is not.
    pub fn parse(s: &str) -> Option<Via> {
        let mut p = s.trim().splitn(3, '/');
        let (name, version, rest) = (p.next()?.trim(), p.next()?.trim(), p.next()?.trim_start());
        let (transport, sent) = rest.split_once(|c: char| c.is_whitespace())?;
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return None;
        }
        let parts = split_outside_quotes(sent.trim(), b';');
        let (host, port) = split_host_port(parts[0].trim())?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        if parts[1..].iter().any(|p| p.trim().is_empty() || p.trim().starts_with('=')) {
            return None;
        }
        let params = Params::parse(&parts[1..].join(";"));
        Some(Via { transport: transport.to_ascii_uppercase(), host, port, params })
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// `host:port` as sent, the second half of a transaction key.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{}", self.host.to_ascii_lowercase(), p),
            None => self.host.to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sip_uri_with_params() {
        let u = Uri::parse("sip:+12134174466@masergy.com:5070;user=phone;transport=tcp").unwrap();
        assert_eq!(u.user.as_deref(), Some("+12134174466"));
        assert_eq!(u.host, "masergy.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.value("user"), Some("phone"));
        assert_eq!(u.number().as_deref(), Some("+12134174466"));
        assert_eq!(u.to_string(), "sip:+12134174466@masergy.com:5070;user=phone;transport=tcp");
    }

    #[test]
    fn parses_ipv6_and_tel() {
        let u = Uri::parse("sip:alice@[2001:db8::1]:5060").unwrap();
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5060));
        let t = Uri::parse("tel:+1-555-0100;phone-context=example.com").unwrap();
        assert_eq!(t.number().as_deref(), Some("+15550100"));
        assert!(Uri::parse("sip:").is_none());
        assert!(Uri::parse("nocolon").is_none());
    }

    #[test]
    fn cisco_bib_from_header_keeps_uri_params() {
        let v = r#""Janice Holland" <sip:4062@10.0.0.1;x-nearend;x-refci=82731258;x-farendaddr=8172710497>;tag=abc"#;
        let na = NameAddr::parse(v).unwrap();
        assert_eq!(na.display_name.as_deref(), Some("Janice Holland"));
        assert_eq!(na.tag(), Some("abc"));
        assert_eq!(na.any_param("x-refci"), Some(Some("82731258")));
        assert_eq!(na.any_param("x-nearend"), Some(None));
        assert_eq!(na.any_param("x-farend"), None);
    }

    #[test]
    fn addr_spec_params_belong_to_header() {
        let na = NameAddr::parse("sip:bob@biloxi.com;tag=xyz").unwrap();
        assert_eq!(na.tag(), Some("xyz"));
        assert!(na.uri.params.0.is_empty());
        let quoted = NameAddr::parse(r#""A <b>, \"c\"" <sip:a@b>"#).unwrap();
        assert_eq!(quoted.display_name.as_deref(), Some(r#"A <b>, "c""#));
    }

    #[test]
    fn parses_via() {
        let v = Via::parse("SIP/2.0/udp 10.0.0.1:5080;rport;branch=z9hG4bK-1").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.sent_by(), "10.0.0.1:5080");
        assert_eq!(v.branch(), Some("z9hG4bK-1"));
        assert!(v.params.has("rport"));
        assert!(Via::parse("SIP/3.0/UDP a").is_none());
        assert!(Via::parse("garbage").is_none());
    }
}
