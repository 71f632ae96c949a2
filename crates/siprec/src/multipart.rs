//! `multipart/mixed` bodies (RFC 2046 §5.1) as SIPREC sources send them.
//!
//! Real bodies break textbook parsers: parameters in any case and order,
//! quoted boundaries, bare-LF line ends, a preamble, `Content-Type:x`
//! without a space, per-part Content-Length, extra parts such as
//! `application/gtd`, and a missing close delimiter. All of those parse.

use sip_proto::MediaType;

/// One body part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Part headers in order (names as received).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The part's media type; RFC 2046 defaults to `text/plain`.
    pub fn content_type(&self) -> Option<MediaType> {
        self.header("Content-Type").and_then(MediaType::parse)
    }

    /// Disposition type (`session`, `recording-session`, ...), lowercased.
    pub fn disposition(&self) -> Option<String> {
        self.header("Content-Disposition").map(|d| d.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// Why a multipart body could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("multipart Content-Type without boundary")]
    MissingBoundary,
    #[error("multipart body contains no part delimited by its boundary")]
    NoParts,
    #[error("multipart part has malformed headers")]
    PartHeaders,
}

/// Splits `body` into parts using the boundary of `content_type`.
pub fn split(content_type: &MediaType, body: &[u8]) -> Result<Vec<Part>, MultipartError> {
    let boundary =
        content_type.params.value("boundary").filter(|b| !b.is_empty()).ok_or(MultipartError::MissingBoundary)?;
    let delimiter: Vec<u8> = [b"--".as_slice(), boundary.as_bytes()].concat();

    // Delimiter positions: at the start of the body or of a line.
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(off) = find(&body[i..], &delimiter) {
        let at = i + off;
        let at_line_start = at == 0 || body[at - 1] == b'\n' || body[..at].iter().all(|b| b.is_ascii_whitespace());
        if at_line_start {
            starts.push(at);
        }
        i = at + delimiter.len();
    }
    if starts.is_empty() {
        return Err(MultipartError::NoParts);
    }

    let mut parts = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let after = start + delimiter.len();
        if body[after..].starts_with(b"--") {
            break; // close delimiter
        }
        // Skip transport padding up to the end of the delimiter line.
        let Some(eol) = body[after..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let content_start = after + eol + 1;
        let mut content_end = starts.get(n + 1).copied().unwrap_or(body.len());
        // The line break before the next delimiter belongs to the delimiter.
        if starts.get(n + 1).is_some() && content_end > content_start && body[content_end - 1] == b'\n' {
            content_end -= 1;
            if content_end > content_start && body[content_end - 1] == b'\r' {
                content_end -= 1;
            }
        }
        if content_end < content_start {
            content_end = content_start;
        }
        parts.push(parse_part(&body[content_start..content_end])?);
    }
    if parts.is_empty() {
        return Err(MultipartError::NoParts);
    }
    Ok(parts)
}

fn parse_part(raw: &[u8]) -> Result<Part, MultipartError> {
    let mut headers = Vec::new();
    let mut pos = 0;
    loop {
        let eol = raw[pos..].iter().position(|&b| b == b'\n').map(|p| pos + p);
        let line_end = eol.unwrap_or(raw.len());
        let line = &raw[pos..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            pos = eol.map_or(raw.len(), |e| e + 1);
            break;
        }
        let text = std::str::from_utf8(line).map_err(|_| MultipartError::PartHeaders)?;
        if text.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                let v: &mut String = v;
                v.push(' ');
                v.push_str(text.trim());
            }
        } else {
            let Some((name, value)) = text.split_once(':') else {
                // No headers at all: the part is body only (text/plain default).
                if headers.is_empty() {
                    break;
                }
                return Err(MultipartError::PartHeaders);
            };
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        match eol {
            Some(e) => pos = e + 1,
            None => {
                pos = raw.len();
                break;
            }
        }
    }
    let mut body = raw[pos..].to_vec();
    // A per-part Content-Length, when present and shorter, is authoritative.
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
    {
        if len < body.len() {
            body.truncate(len);
        }
    }
    Ok(Part { headers, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mt(s: &str) -> MediaType {
        MediaType::parse(s).unwrap()
    }

    #[test]
    fn splits_parts_with_preamble_and_epilogue() {
        let body = b"preamble\r\n--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--b1\r\nContent-Type:application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n<x/>\r\n--b1--\r\nepilogue";
        let parts = split(&mt("multipart/mixed;boundary=b1"), body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, b"v=0\r\n");
        assert!(parts[1].content_type().unwrap().is("application/rs-metadata+xml"));
        assert_eq!(parts[1].disposition().as_deref(), Some("recording-session"));
        assert_eq!(parts[1].body, b"<x/>");
    }

    #[test]
    fn quoted_boundary_bare_lf_and_missing_close() {
        let body = b"\n--a b\nContent-Type: application/sdp\n\nv=0\n--a b\nContent-Type: text/plain\n\nhello";
        let parts = split(&mt("Multipart/Mixed; BOUNDARY=\"a b\""), body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, b"v=0");
        assert_eq!(parts[1].body, b"hello");
    }

    #[test]
    fn boundary_text_inside_content_is_not_a_delimiter() {
        let body = b"--x\r\nContent-Type: text/plain\r\n\r\nsee --x in text\r\n--x--";
        let parts = split(&mt("multipart/mixed;boundary=x"), body).unwrap();
        assert_eq!(parts[0].body, b"see --x in text");
    }

    #[test]
    fn errors() {
        assert_eq!(split(&mt("multipart/mixed"), b"--x\r\n\r\n"), Err(MultipartError::MissingBoundary));
        assert_eq!(split(&mt("multipart/mixed;boundary=q"), b"no parts"), Err(MultipartError::NoParts));
        assert_eq!(split(&mt("multipart/mixed;boundary=q"), b"--q--"), Err(MultipartError::NoParts));
    }
}
