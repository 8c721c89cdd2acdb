//! A minimal HTTP/1.1 client for the admin port (`top`, `explain --admin`): one request per
//! connection (`Connection: close`), plain `http://` only, which is all an admin listener
//! speaks. Hand-written over a tokio `TcpStream` so the binary needs no HTTP client crate.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an answer read (a `/limited` view is a few kB).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why an admin call failed. Printed after the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host:port[/...]`.
    #[error("invalid admin URL {0:?}: expected http://host:port")]
    Url(String),
    /// Connecting, writing or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The base URL.
        url: String,
        /// The socket's error.
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("{0}: no answer within the timeout")]
    Timeout(String),
    /// The answer is not HTTP/1.1 as expected.
    #[error("{url}: malformed answer: {why}")]
    Malformed {
        /// The base URL.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The service answered with an error status.
    #[error("{url}{path}: HTTP {status}: {body}")]
    Status {
        /// The base URL.
        url: String,
        /// The path asked for.
        path: String,
        /// The status code.
        status: u16,
        /// The body, for its error message.
        body: String,
    },
}

/// `method path` at the admin base URL `base` (`http://host:port`), with an optional JSON
/// body and an optional bearer token (`--admin-token-file`); the answer's body when the status
/// is 2xx or `accept` lists it.
pub async fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    accept: &[u16],
    timeout: Duration,
) -> Result<String, HttpError> {
    let authority = authority(base)?;
    let base_url = base.trim_end_matches('/').to_owned();
    let io = |source| HttpError::Io {
        url: base_url.clone(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(&authority).await.map_err(io)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        if let Some(b) = body {
            stream.write_all(b.as_bytes()).await.map_err(io)?;
        }
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER_BYTES as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok::<_, HttpError>(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(base_url.clone()))??;
    let (status, body) = parse_answer(&raw).map_err(|why| HttpError::Malformed {
        url: base_url.clone(),
        why,
    })?;
    if (200..300).contains(&status) || accept.contains(&status) {
        Ok(body)
    } else {
        Err(HttpError::Status {
            url: base_url,
            path: path.to_owned(),
            status,
            body: body.trim().to_owned(),
        })
    }
}

/// `http://host:port[/]` → `host:port`.
fn authority(base: &str) -> Result<String, HttpError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(base.to_owned()))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(HttpError::Url(base.to_owned()));
    }
    Ok(authority.to_owned())
}

/// Status and body of a complete HTTP/1.1 answer (with `Content-Length`, chunked, or to EOF).
fn parse_answer(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let header = |name: &str| {
        lines.clone().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.get(..len)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
        body = body.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}junk";
        assert_eq!(parse_answer(plain).unwrap(), (200, "{}".into()));
        let chunked =
            b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), (429, "abcde".into()));
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            authority("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        for bad in ["127.0.0.1:8080", "https://h:1", "http://h", "http://h:1/x"] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
