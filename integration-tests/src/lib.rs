//! Helpers for end-to-end tests through real processes: the `ironclad-rls` binary (built
//! on demand with cargo, or taken from `IRONCLAD_RLS_BIN`), started on port 0 and called
//! over real sockets. No mocks: a missing tool is a failure that names what to install.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use ironclad_rls::proto::{RateLimitDescriptor, RateLimitRequest};
use tonic::transport::Channel;

/// How long a process may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits inside the workspace")
        .to_owned()
}

/// A file under `examples/limits/`.
pub fn example(rel: &str) -> PathBuf {
    workspace_root().join("examples/limits").join(rel)
}

/// The `ironclad-rls` binary: `IRONCLAD_RLS_BIN` if set, else built now with cargo (a no-op
/// when it is up to date), so a test never runs a stale binary.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("IRONCLAD_RLS_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        // The test runs with this crate's CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ... in its
        // environment; build scripts (ring's) rerun when those change, so a build started from
        // here would otherwise rebuild half the tree on every test run.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let keep = matches!(key.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR");
            if (key.starts_with("CARGO_") && !keep) || key == "OUT_DIR" {
                command.env_remove(&key);
            }
        }
        let out = command
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--bin", "ironclad-rls", "--message-format=json"])
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run cargo to build ironclad-rls; install Rust (rustup) or set IRONCLAD_RLS_BIN");
        assert!(out.status.success(), "cargo build --bin ironclad-rls failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
            .find(|p| p.file_name().is_some_and(|n| n == "ironclad-rls"))
            .expect("cargo reported no ironclad-rls executable")
    })
    .clone()
}

/// Runs a one-shot command of the binary (`validate`, `check`, ...).
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("cannot run ironclad-rls")
}

/// The flags every test server gets: loopback, port 0, JSON logs.
const SERVE_FLAGS: [&str; 7] = [
    "serve",
    "--grpc-addr",
    "127.0.0.1:0",
    "--admin-addr",
    "127.0.0.1:0",
    "--log-format",
    "json",
];

/// Runs `serve` that is expected to exit by itself (a configuration it refuses), with extra
/// arguments and environment, and returns its output.
pub fn serve_until_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary())
        .args(SERVE_FLAGS)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run ironclad-rls serve")
}

/// A running `ironclad-rls serve`, killed when dropped.
pub struct Rls {
    child: Child,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Rls {
    /// Starts `serve` on loopback port 0 with `--log-format json` and the given extra
    /// arguments, and waits until it reports its listeners.
    pub fn start(args: &[&str]) -> Rls {
        Rls::start_with_env(args, &[])
    }

    /// Like [`Rls::start`], with extra environment variables for the process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Rls {
        let mut command = Command::new(binary());
        command
            .args(SERVE_FLAGS)
            .args(args)
            .envs(env.iter().copied());
        Rls::spawn(command)
    }

    /// Like [`Rls::start`], run through a wrapper command that execs the binary (`prlimit
    /// --nofile=256:256 --`, say), so the process is the server itself.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Rls {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let mut command = Command::new(program);
        command
            .args(wrapper_args)
            .arg(binary())
            .args(SERVE_FLAGS)
            .args(args);
        Rls::spawn(command)
    }

    /// Starts a prepared command (the binary under another name, say) and waits until it
    /// reports its listeners; it must log JSON (`--log-format json` or `LOG_FORMAT=json`)
    /// at info level.
    pub fn start_command(command: Command) -> Rls {
        Rls::spawn(command)
    }

    fn spawn(mut command: Command) -> Rls {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ironclad-rls");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v["message"] == "listening" {
                        let addr = |k: &str| {
                            v[k].as_str()
                                .and_then(|s| s.parse().ok())
                                .expect("listening line has addresses")
                        };
                        return Rls {
                            grpc_addr: addr("grpc_addr"),
                            admin_addr: addr("admin_addr"),
                            child,
                            logs,
                        };
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    panic!(
                        "ironclad-rls did not start listening (exit: {status:?}); its log:\n{}",
                        logs.lock().expect("log lock").join("\n")
                    );
                }
            }
        }
    }

    /// A gRPC client for the RLS.
    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("cannot connect to the RLS")
    }

    /// One call on a new connection; the answer's `overall_code` (panics on a gRPC error).
    pub async fn overall_code(&self, request: RateLimitRequest) -> i32 {
        self.client()
            .await
            .should_rate_limit(request)
            .await
            .expect("ShouldRateLimit failed")
            .into_inner()
            .overall_code
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, deadline: Duration) {
        eventually(deadline, "/readyz 200", || {
            (self.admin_get("/readyz").0 == 200).then_some(())
        });
    }

    /// `GET path` on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_addr, path)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`-TERM`, `-HUP`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} failed");
    }

    /// `POST path` on the admin listener: (status, body).
    pub fn admin_post(&self, path: &str, body: &str) -> (u16, String) {
        http_post(self.admin_addr, path, body)
    }

    /// `POST path` on the admin listener with `Authorization: Bearer token` (a service run
    /// with `--admin-token-file`): (status, body).
    pub fn admin_post_with_token(&self, path: &str, body: &str, token: &str) -> (u16, String) {
        http(self.admin_addr, "POST", path, body, Some(token))
    }

    /// The value of one sample of `/metrics`: the line of metric `name` whose labels include
    /// every `(label, value)` given.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics");
        metric_value(&text, name, labels)
    }

    /// Waits for the process to exit, up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (the admin side is plain HTTP; no client crate needed).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "", None)
}

/// A minimal HTTP/1.1 POST of a JSON body.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, body, None)
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n")),
        body.len()
    )
    .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Builds a request with one descriptor per `&[(key, value)]`.
pub fn request(domain: &str, descriptors: &[&[(&str, &str)]]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).to_owned(),
                        value: (*v).to_owned(),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// Three replicas on one shared store (`redis_flag` is `--redis-url` or
/// `--redis-cluster-url`), each waited for until ready. The Redis deadline is generous: the
/// tests using them are about atomicity on a busy 2-core machine, not latency.
pub fn start_replicas(redis_flag: &str, redis: &str, config: &str) -> Vec<Rls> {
    let replicas: Vec<Rls> = (0..3)
        .map(|_| {
            Rls::start(&[
                "--config",
                config,
                redis_flag,
                redis,
                "--redis-timeout",
                "2s",
            ])
        })
        .collect();
    for r in &replicas {
        r.wait_ready(Duration::from_secs(20));
    }
    replicas
}

/// If the current window of `window_secs` ends within `margin`, waits for the next one, so
/// a test that sends a burst and counts admissions cannot straddle a window boundary. This
/// is the only wait in the suite, and it only happens near a boundary.
pub fn wait_for_fresh_window(window_secs: u64, margin: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let window = Duration::from_secs(window_secs);
    let into =
        Duration::from_millis(u64::try_from(now.as_millis() % window.as_millis()).unwrap_or(0));
    let left = window - into;
    if left < margin {
        std::thread::sleep(left + Duration::from_millis(50));
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub fn eventually<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `text` to `name` in a fresh temporary directory (kept alive by the returned guard).
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write temp file");
    (dir, path)
}
/// Real Redis processes.
pub mod redis;

/// Finds one sample in Prometheus text format; labels may appear in any order.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Test certificates: a CA and leaves it signs (rcgen).
pub mod pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    /// A certificate authority.
    pub struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl Ca {
        /// A new self-signed CA named `name`.
        pub fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().expect("CA key");
            Ca {
                issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
            }
        }

        /// The CA certificate, PEM.
        pub fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A leaf certificate for `names`, signed by this CA: (certificate PEM, key PEM).
        pub fn leaf(&self, names: &[&str]) -> (String, String) {
            let key = KeyPair::generate().expect("leaf key");
            let params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                    .expect("leaf params");
            let cert = params
                .signed_by(&key, &self.issuer)
                .expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        }
    }
}
/// A real Envoy.
pub mod envoy;
/// An xDS management server serving `RateLimitConfig`.
pub mod xds;
