//! Connection bounds through the real binary (docs/service.md §2): the stream bound announced in
//! the server's SETTINGS and enforced; keepalive closing a peer that stops answering PINGs;
//! GOAWAY at the maximum connection age and a hard close after its grace; `--max-connections`
//! holding new connections back until one closes; `/healthz` and an open channel still
//! answering under a low file-descriptor limit with many idle connections; a silent
//! connection closed; and the admin side's slow-header timeout and 413 on `Content-Length`.
//!
//! HTTP/2 is spoken by hand over TCP where a client library would hide what is checked (it
//! obeys SETTINGS and answers PINGs by itself).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use integration_tests::{Rls, eventually, request, temp_file};
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Channel, Endpoint};

const LIMITS: &str = "kcse_rate_limits:\n  endpoints:\n    - name: api\n      shortname: api\n      overall_limit: 1000000\n";

/// Deadline for what the server does at once (or at a 1 s timer) on an idle machine.
const SOON: Duration = Duration::from_secs(10);

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

/// One HTTP/2 frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A hand-driven HTTP/2 client connection.
struct H2 {
    tcp: TcpStream,
}

/// What reading the next frame gave.
enum Next {
    Frame(Frame),
    /// The server closed the connection.
    Closed,
}

impl H2 {
    /// Connects, sends the preface and an empty SETTINGS.
    fn connect(addr: SocketAddr) -> H2 {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(SOON)).expect("timeout");
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        let mut h2 = H2 { tcp };
        h2.send(SETTINGS, 0, 0, &[]);
        h2
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("small frame");
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        self.tcp.write_all(&f).expect("send frame");
    }

    /// The next frame, or the end of the connection; panics when nothing comes within the
    /// read deadline.
    fn next(&mut self) -> Next {
        let mut head = [0u8; 9];
        match self.tcp.read_exact(&mut head) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return Next::Closed;
            }
            Err(e) => panic!("no frame from the server in time: {e}"),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if self.tcp.read_exact(&mut payload).is_err() {
            return Next::Closed;
        }
        Next::Frame(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames until one satisfies `want` (panics if the connection closes first).
    fn until(&mut self, what: &str, mut want: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            match self.next() {
                Next::Frame(f) if want(&f) => return f,
                Next::Frame(_) => {}
                Next::Closed => panic!("the connection closed before {what}"),
            }
        }
    }

    /// The server's SETTINGS (acknowledged), as (identifier, value) pairs.
    fn server_settings(&mut self) -> Vec<(u16, u32)> {
        let f = self.until("the server's SETTINGS", |f| {
            f.kind == SETTINGS && f.flags & 0x1 == 0
        });
        self.send(SETTINGS, 0x1, 0, &[]);
        f.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }

    /// Opens a ShouldRateLimit stream and leaves it open: headers only, no message, so the
    /// server waits for the body and the stream stays active.
    fn open_stream(&mut self, stream: u32) {
        let path = b"/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
        let mut literal = |index_nibble: &[u8], value: &[u8]| {
            // Literal without indexing, name from the static table.
            block.extend(index_nibble);
            block.push(u8::try_from(value.len()).expect("short value"));
            block.extend(value);
        };
        literal(&[0x04], path); // :path
        literal(&[0x01], b"localhost"); // :authority
        literal(&[0x0f, 0x10], b"application/grpc"); // content-type (index 31)
        block.extend([0x00, 2]);
        block.extend(b"te");
        block.extend([8]);
        block.extend(b"trailers");
        self.send(HEADERS, 0x4, stream, &block); // END_HEADERS, not END_STREAM
    }

    /// Waits for the server to close the connection, skipping what it sends first; true if
    /// a GOAWAY came before the close.
    fn wait_closed(&mut self) -> bool {
        let mut goaway = false;
        loop {
            match self.next() {
                Next::Frame(f) => goaway |= f.kind == GOAWAY,
                Next::Closed => return goaway,
            }
        }
    }
}

fn start(extra: &[&str]) -> (tempfile::TempDir, Rls) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let rls = Rls::start(&args);
    (dir, rls)
}

async fn channel(rls: &Rls) -> Channel {
    Endpoint::from_shared(format!("http://{}", rls.grpc_addr))
        .unwrap()
        .connect_timeout(SOON)
        .connect()
        .await
        .expect("connect a channel")
}

async fn call(channel: &Channel) -> Result<i32, tonic::Status> {
    RateLimitServiceClient::new(channel.clone())
        .should_rate_limit(request("kcse", &[&[("endpoint", "api")]]))
        .await
        .map(|r| r.into_inner().overall_code)
}

#[test]
fn settings_announce_the_stream_bound_and_a_stream_past_it_is_refused() {
    let (_dir, default) = start(&[]);
    let mut h2 = H2::connect(default.grpc_addr);
    let settings = h2.server_settings();
    assert!(
        settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 1024)),
        "default bound announced: {settings:?}"
    );

    let (_dir, rls) = start(&["--grpc-max-concurrent-streams", "3"]);
    let mut h2 = H2::connect(rls.grpc_addr);
    let settings = h2.server_settings();
    assert!(
        settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 3)),
        "{settings:?}"
    );
    for stream in [1, 3, 5, 7] {
        h2.open_stream(stream);
    }
    let reset = h2.until("a RST_STREAM", |f| f.kind == RST_STREAM);
    assert_eq!(reset.stream, 7, "the fourth stream is the one refused");
    assert_eq!(
        u32::from_be_bytes(reset.payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
}

#[test]
fn a_peer_that_stops_answering_pings_and_a_silent_connection_are_closed() {
    let (_dir, rls) = start(&[
        "--grpc-keepalive-interval",
        "1s",
        "--grpc-keepalive-timeout",
        "1s",
    ]);
    // Never sends a byte: closed after the 10 s a new connection has to say something.
    let mut silent = TcpStream::connect(rls.grpc_addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut h2 = H2::connect(rls.grpc_addr);
    h2.server_settings();
    h2.until("a keepalive PING", |f| f.kind == PING && f.flags & 0x1 == 0);
    // Not answered: the server gives up on the peer.
    h2.wait_closed();

    let t = Instant::now();
    let mut buf = [0u8; 1];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the silent connection is closed, not answered: {read:?}"
    );
    println!("silent connection closed after a further {:?}", t.elapsed());
}

#[test]
fn an_old_connection_gets_goaway_then_is_closed_after_the_grace() {
    let (_dir, rls) = start(&[
        "--grpc-max-connection-age",
        "1s",
        "--grpc-max-connection-age-grace",
        "1s",
    ]);
    let mut h2 = H2::connect(rls.grpc_addr);
    h2.server_settings();
    // A stream that never finishes would hold the connection open for ever after GOAWAY;
    // the grace period ends it.
    h2.open_stream(1);
    h2.until("GOAWAY at the maximum age", |f| f.kind == GOAWAY);
    h2.wait_closed();
}

#[tokio::test]
async fn max_connections_holds_new_connections_back_until_one_closes() {
    let (_dir, rls) = start(&["--max-connections", "2"]);
    let first = channel(&rls).await;
    let second = channel(&rls).await;
    assert!(call(&first).await.is_ok() && call(&second).await.is_ok());
    let gauge = |name: &str| rls.metric(name, &[("listener", "grpc")]);
    assert_eq!(gauge("ratelimit_connection_limit"), Some(2.0));
    eventually(SOON, "the accept loop to wait on a full budget", || {
        (gauge("ratelimit_accept_waits_total") >= Some(1.0)).then_some(())
    });

    // A third connection is held in the backlog: connected at the TCP level, not served.
    let third = tokio::spawn({
        let addr = rls.grpc_addr;
        async move {
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(30))
                .connect()
                .await
                .expect("the third connection is served in the end");
            call(&ch).await
        }
    });
    // A round trip on an open channel: the server has had its chance to accept meanwhile.
    assert!(call(&first).await.is_ok());
    assert_eq!(gauge("ratelimit_connections"), Some(2.0));
    assert!(!third.is_finished(), "the third connection waits");

    drop(second);
    let answer = tokio::time::timeout(SOON, third)
        .await
        .expect("the third connection is served once one closed")
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    assert!(gauge("ratelimit_connections") <= Some(2.0));
}

#[tokio::test]
async fn health_and_an_open_channel_answer_at_a_low_fd_limit_under_many_idle_connections() {
    let prlimit = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "this test needs prlimit (util-linux): apt-get install util-linux"
    );
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start_under(
        &["prlimit", "--nofile=256:256", "--"],
        &["--config", file.to_str().unwrap()],
    );
    assert_eq!(rls.metric("process_max_fds", &[]), Some(256.0));
    let budget = rls
        .metric("ratelimit_connection_limit", &[("listener", "grpc")])
        .expect("the gRPC budget is reported");
    assert!(
        budget < 256.0 - 64.0,
        "the budget leaves descriptors for the admin side and the store: {budget}"
    );
    let open = channel(&rls).await;
    assert!(call(&open).await.is_ok());

    // More idle connections than the process has descriptors.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(rls.grpc_addr).expect("connect (accepted or backlogged)"))
        .collect();
    eventually(SOON, "the gRPC budget to fill", || {
        (rls.metric("ratelimit_connections", &[("listener", "grpc")]) == Some(budget)).then_some(())
    });
    assert_eq!(rls.admin_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(rls.admin_get("/readyz").0, 200);
    assert!(
        call(&open).await.is_ok(),
        "the channel opened before still answers"
    );
    let fds = rls.metric("process_open_fds", &[]).expect("open fds");
    assert!(fds < 256.0, "{fds} descriptors open");
    assert_eq!(
        rls.metric(
            "ratelimit_accept_errors_total",
            &[("listener", "admin"), ("kind", "fd_limit")]
        )
        .unwrap_or(0.0),
        0.0,
        "the admin side never ran out"
    );

    drop(idle);
    let fresh = channel(&rls).await;
    assert!(
        call(&fresh).await.is_ok(),
        "new connections are served again"
    );
}

/// Sends raw bytes to the admin listener and returns what comes back until it closes.
fn admin_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // A reset after the answer still leaves the answer read.
        Err(e) if e.kind() == ErrorKind::ConnectionReset && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn the_admin_side_refuses_a_large_body_before_reading_it_and_cuts_slow_headers() {
    let (_dir, rls) = start(&[]);
    // Only the headers are sent: the answer cannot wait for the ten megabytes announced.
    let answer = admin_raw(
        rls.admin_addr,
        b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
        SOON,
    )
    .expect("an answer before the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("over the bound"), "{answer}");
    assert_eq!(
        rls.metric("ratelimit_admin_refusals_total", &[("reason", "too_large")]),
        Some(1.0)
    );

    // Headers that never end: the connection is closed after the 10 s header timeout.
    let t = Instant::now();
    let answer = admin_raw(
        rls.admin_addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(30),
    )
    .expect("closed by the server, not by the test's read deadline");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    println!("slow headers cut after {:?}", t.elapsed());
}

/// Descriptors the process `pid` has open, read from /proc (the admin side may have none to
/// spare for a `/metrics` connection while they are exhausted).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd (Linux)")
        .count()
}

#[tokio::test]
async fn out_of_descriptors_at_run_time_backs_off_and_open_connections_keep_answering() {
    let (_dir, rls) = start(&[]);
    let open = channel(&rls).await;
    assert!(call(&open).await.is_ok());

    // The limit lowered under the running process: its budget (computed at start) no longer
    // protects it, so accepts hit EMFILE.
    let pid = rls.pid().to_string();
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status();
    assert!(
        lowered.is_ok_and(|s| s.success()),
        "this test needs prlimit (util-linux) and the right to lower a child's limit"
    );
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(rls.grpc_addr).expect("connect (accepted or backlogged)"))
        .collect();
    eventually(SOON, "the descriptors to run out", || {
        (open_fds(rls.pid()) >= 64).then_some(())
    });
    let t = Instant::now();
    for _ in 0..3 {
        assert!(
            call(&open).await.is_ok(),
            "a connection opened before still answers"
        );
    }
    println!(
        "3 calls on the open channel at the limit: {:?}",
        t.elapsed()
    );

    drop(idle);
    let t = Instant::now();
    eventually(SOON, "the admin side to answer again", || {
        (rls.admin_get("/healthz").0 == 200).then_some(())
    });
    let errors = rls
        .metric(
            "ratelimit_accept_errors_total",
            &[("listener", "grpc"), ("kind", "fd_limit")],
        )
        .unwrap_or(0.0);
    println!(
        "admin answering again {:?} after the idle connections closed",
        t.elapsed()
    );
    assert!(errors >= 1.0, "EMFILE counted: {errors}");
    assert!(
        rls.logs()
            .iter()
            .any(|l| l.contains("out of file descriptors")),
        "and logged"
    );
    let fresh = channel(&rls).await;
    assert!(call(&fresh).await.is_ok(), "accepting recovered");
}
