//! Serving a blob over HTTP with `Range` (RFC 9110 §14): browsers seek in
//! recordings with single ranges (206); a missing or unsatisfiable range
//! gives the whole blob or 416. The body streams in chunks read on a
//! blocking thread, so a one-hour recording never sits in memory. The
//! range header is parsed by `http-range-header` (the crate tower-http
//! uses for the same job).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use store::{BlobKey, BlobStore};

/// Bytes per read from the blob store.
const CHUNK: u64 = 256 * 1024;

/// The first, the last byte (inclusive) and the total size, when a range applies.
fn requested_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    if len == 0 {
        return Err(());
    }
    let parsed = http_range_header::parse_range_header(value).map_err(|_| ())?;
    let ranges = parsed.validate(len).map_err(|_| ())?;
    match ranges.as_slice() {
        [one] if one.start() <= one.end() => Ok(Some((*one.start(), *one.end()))),
        _ => Err(()), // several ranges: not offered (players ask for one)
    }
}

/// Streams `key` (of `len` bytes) as the response to a request with `headers`.
pub fn serve(blobs: Arc<dyn BlobStore>, key: BlobKey, len: u64, headers: &HeaderMap, mime: &'static str) -> Response {
    let (status, start, end) = match requested_range(headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
        Err(()) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let stream = futures_util::stream::unfold(start, move |pos| {
        let (blobs, key) = (blobs.clone(), key.clone());
        async move {
            if pos >= end {
                return None;
            }
            let upto = (pos + CHUNK).min(end);
            let read = tokio::task::spawn_blocking(move || blobs.read_range(&key, pos, upto)).await;
            match read {
                Ok(Ok(bytes)) => Some((Ok::<_, std::io::Error>(bytes), upto)),
                Ok(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), end)),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), end)),
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn single_ranges_are_honoured_and_others_refused() {
        assert_eq!(requested_range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(requested_range(&with_range("bytes=0-"), 100), Ok(Some((0, 99))));
        assert_eq!(requested_range(&with_range("bytes=10-19"), 100), Ok(Some((10, 19))));
        assert_eq!(requested_range(&with_range("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(requested_range(&with_range("bytes=90-500"), 100), Ok(Some((90, 99))));
        assert_eq!(requested_range(&with_range("bytes=0-1,5-6"), 100), Err(()));
        assert_eq!(requested_range(&with_range("bytes=200-300"), 100), Err(()));
        assert_eq!(requested_range(&with_range("lines=1-2"), 100), Err(()));
        assert_eq!(requested_range(&with_range("bytes=0-"), 0), Err(()));
    }
}
