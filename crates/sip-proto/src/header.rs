//! Header storage and the small grammars shared by many headers:
//! parameters (`;name=value`), comma-separated lists and media types.
//!
//! Headers keep their order and their original values; names are compared
//! case-insensitively and compact forms (`i`, `f`, `v`, ...) are expanded at
//! parse time so callers only ever ask for the long name.

use std::fmt;

/// `token` characters of RFC 3261 §25.1.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Long form for an RFC 3261 §7.3.3 compact header name, if `name` is one.
pub fn expand_compact(name: &str) -> Option<&'static str> {
    if name.len() != 1 {
        return None;
    }
    Some(match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'u' => "Allow-Events",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'x' => "Session-Expires",
        _ => return None,
    })
}

/// One header line: name as received (compact forms expanded) and raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Ordered header list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.entries.iter()
    }

    /// First value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Every line of header `name`, in order (lists are not split).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Every element of a comma-separated list header, across all its lines.
    pub fn list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }

    pub fn count(&self, name: &str) -> usize {
        self.entries.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends a header line.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push(Header { name: name.into(), value: value.into() });
    }

    /// Replaces every line of `name` by one line (appended if absent).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(pos) = self.entries.iter().position(|h| h.name.eq_ignore_ascii_case(name)) {
            self.entries[pos].value = value;
            let mut i = pos + 1;
            while i < self.entries.len() {
                if self.entries[i].name.eq_ignore_ascii_case(name) {
                    self.entries.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.push(name, value);
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Does a list header (Require, Supported, ...) contain `token`?
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.list(name).any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Splits a header value on commas that are outside quotes and `<...>`.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut in_angle, mut escaped) = (0, false, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty())
}

/// Generic parameters (`;name[=value]`), names lowercased, quotes removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=1;b;c="x y"`; a leading `;` is optional.
    pub fn parse(s: &str) -> Params {
        let mut out = Vec::new();
        for part in split_outside_quotes(s, b';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((n, v)) => out.push((n.trim().to_ascii_lowercase(), Some(unquote(v.trim())))),
                None => out.push((part.to_ascii_lowercase(), None)),
            }
        }
        Params(out)
    }

    /// Value of parameter `name`; `Some(None)` for a flag without value.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }

    /// Value of parameter `name` when it has one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_owned);
        match self.0.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(entry) => entry.1 = v,
            None => self.0.push((name.to_owned(), v)),
        }
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) if v.bytes().all(|b| is_token_byte(b) || b == b':' || b == b'[' || b == b']') => {
                    write!(f, ";{n}={v}")?
                }
                Some(v) => write!(f, ";{n}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// Splits on `sep` outside double quotes.
pub(crate) fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut escaped) = (0, false, false);
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == sep && !in_quotes => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Removes surrounding double quotes and backslash escapes.
pub fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let inner = &s[1..s.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        s.to_owned()
    }
}

/// A MIME media type such as `multipart/mixed;boundary=x`.
/// Type and subtype are lowercased; parameter names are lowercased and
/// values unquoted, so `Multipart/Mixed; BOUNDARY="x"` equals the plain form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub kind: String,
    pub subtype: String,
    pub params: Params,
}

impl MediaType {
    pub fn parse(s: &str) -> Option<MediaType> {
        let parts = split_outside_quotes(s, b';');
        let (kind, subtype) = parts.first()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty()
            || subtype.is_empty()
            || !kind.bytes().all(is_token_byte)
            || !subtype.bytes().all(is_token_byte)
        {
            return None;
        }
        let rest = parts[1..].join(";");
        Some(MediaType {
            kind: kind.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            params: Params::parse(&rest),
        })
    }

    /// `type/subtype` without parameters.
    pub fn essence(&self) -> String {
        format!("{}/{}", self.kind, self.subtype)
    }

    pub fn is(&self, essence: &str) -> bool {
        essence.split_once('/').is_some_and(|(k, s)| self.kind == k && self.subtype == s)
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.kind, self.subtype, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_splitting_respects_quotes_and_angles() {
        let v: Vec<_> = split_list(r#""Doe, John" <sip:a@b;x=1,2>, <sip:c@d> ,"#).collect();
        assert_eq!(v, vec![r#""Doe, John" <sip:a@b;x=1,2>"#, "<sip:c@d>"]);
    }

    #[test]
    fn media_type_is_case_and_order_insensitive() {
        let a = MediaType::parse("Multipart/MIXED; charset=utf-8 ;BOUNDARY=\"abc;def\"").unwrap();
        assert!(a.is("multipart/mixed"));
        assert_eq!(a.params.value("boundary"), Some("abc;def"));
        assert_eq!(a.params.value("charset"), Some("utf-8"));
        assert!(MediaType::parse("nonsense").is_none());
        assert!(MediaType::parse("a b/c").is_none());
    }

    #[test]
    fn set_replaces_all_lines() {
        let mut h = Headers::new();
        h.push("Via", "a");
        h.push("X", "1");
        h.push("via", "b");
        h.set("VIA", "c");
        assert_eq!(h.get_all("via").collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn params_roundtrip() {
        let p = Params::parse(";tag=abc;lr;x=\"a b\"");
        assert_eq!(p.value("tag"), Some("abc"));
        assert!(p.has("lr"));
        assert_eq!(p.value("x"), Some("a b"));
        assert_eq!(p.to_string(), ";tag=abc;lr;x=\"a b\"");
    }
}
