//! The load itself: one HTTP/2 connection per `--connections`, each driven by an OS thread
//! of its own running a current-thread tokio runtime, so a call's send, its answer and the
//! connection's reads and writes all happen on one thread with no wake-up crossing to
//! another. The client is the `h2` crate's, with the requests framed before the load
//! starts (`wire.rs`): tonic's client cost the tool 65-115 µs of CPU per call, too much to
//! offer 10 000 calls/s beside the service on a 2-core machine.
//!
//! A connection that closes (the service stopped, or sent GOAWAY) is not dialled again:
//! every later call on it is counted as an error at once, so a run against a service that
//! died ends on time with the calls it could not make counted, never hangs.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::client::{ResponseFuture, SendRequest};
use prost::bytes::Bytes;
use tokio::sync::oneshot;
use tonic::codegen::http::Uri;

use super::schedule::{self, Timer};
use super::wire::{self, Outcome, Requests};
use super::{Args, LATE_AFTER, Tally};
use crate::commands::CallError;
use crate::grpc::SHOULD_RATE_LIMIT;

/// How long dialling and the HTTP/2 handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls still unanswered this long after the run's end are counted as errors: a service
/// that stopped answering (stopped, not dead) ends the run late, not never.
const DRAIN: Duration = Duration::from_secs(5);

/// Stream and connection windows of the client. With h2's default 64 KiB a client holding
/// many answers it has not read yet takes their small DATA frames for a flood and goes away
/// with ENHANCE_YOUR_CALM (h2 budgets DATA frames at half the connection window).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// What every connection's thread needs to know, read from the flags once.
#[derive(Debug)]
pub(super) struct Plan {
    requests: Requests,
    /// `--addr` as given, for errors.
    addr: String,
    /// `host:port` to dial.
    target: String,
    /// The call's URI: `http://` the authority, and the method's path.
    uri: Uri,
    /// Connections opened, at most the calls in flight (a connection with none would idle).
    pub(super) connections: usize,
    pub(super) concurrency: usize,
    duration: Duration,
    rate: Option<u32>,
}

impl Plan {
    /// The plan `args` ask for; an `--addr` that is not `http://host[:port]` is refused
    /// here, before anything is dialled.
    pub(super) fn new(args: &Args) -> Result<Plan, CallError> {
        let bad = |reason: &str| CallError::BenchAddress {
            addr: args.addr.clone(),
            reason: reason.to_owned(),
        };
        let parsed: Uri = args
            .addr
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "bench speaks HTTP/2 without TLS (h2c) only: give the service's plain-text port as http://host:port",
                ));
            }
            _ => return Err(bad("expected http://host:port")),
        }
        let authority = parsed
            .authority()
            .ok_or_else(|| bad("expected http://host:port"))?
            .clone();
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad("expected http://host:port, without a path"));
        }
        let target = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(SHOULD_RATE_LIMIT)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let concurrency = args.concurrency.max(1);
        Ok(Plan {
            requests: Requests::new(args),
            addr: args.addr.clone(),
            target,
            uri,
            connections: args.connections.clamp(1, concurrency),
            concurrency,
            duration: args.duration,
            rate: args.rate,
        })
    }
}

/// A connection's thread, connected and waiting for the start.
#[derive(Debug)]
pub(super) struct Worker {
    go: oneshot::Sender<Instant>,
    done: oneshot::Receiver<Result<Tally, CallError>>,
    thread: std::thread::JoinHandle<()>,
}

/// Opens every connection, each on its thread; fails with the first that cannot connect.
pub(super) async fn connect(plan: &Arc<Plan>) -> Result<Vec<Worker>, CallError> {
    let mut workers = Vec::with_capacity(plan.connections);
    for k in 0..plan.connections {
        let (ready_tx, ready) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let plan = plan.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bench-conn-{k}"))
            .spawn(move || thread_main(&plan, k, ready_tx, go_rx, done_tx))
            .map_err(|e| CallError::Thread(format!("cannot start a thread: {e}")))?;
        match ready.await {
            Ok(Ok(())) => workers.push(Worker { go, done, thread }),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(CallError::Thread("it ended before connecting".into())),
        }
    }
    Ok(workers)
}

/// Starts every worker at one instant and gathers what they saw, and how long from the
/// start until the last one finished.
pub(super) async fn run(workers: Vec<Worker>) -> Result<(Tally, Duration), CallError> {
    let started = Instant::now();
    let mut running = Vec::with_capacity(workers.len());
    for w in workers {
        // A thread that is gone shows as its missing tally below.
        let _ = w.go.send(started);
        running.push((w.done, w.thread));
    }
    let mut all = Tally::default();
    let mut threads = Vec::with_capacity(running.len());
    for (done, thread) in running {
        match done.await {
            Ok(tally) => all.add(tally?),
            Err(_) => return Err(CallError::Thread("it ended without its figures".into())),
        }
        threads.push(thread);
    }
    let elapsed = started.elapsed();
    // Each has sent its figures and is only dropping its runtime.
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await?;
    Ok((all, elapsed))
}

fn thread_main(
    plan: &Plan,
    k: usize,
    ready: oneshot::Sender<Result<(), CallError>>,
    go: oneshot::Receiver<Instant>,
    done: oneshot::Sender<Result<Tally, CallError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(CallError::Thread(format!(
                "cannot start its runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let prepared = async {
            let link = Link::open(plan).await?;
            // Made before the start, on this thread's runtime, which its fd is registered in.
            let timer = match plan.rate {
                Some(_) => Some(Timer::new().map_err(|e| {
                    CallError::Thread(format!("cannot make the open loop's timer: {e}"))
                })?),
                None => None,
            };
            Ok::<_, CallError>((link, timer))
        };
        let (link, timer) = match prepared.await {
            Ok(p) => {
                let _ = ready.send(Ok(()));
                p
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let Ok(started) = go.await else {
            return;
        };
        let tally = match (plan.rate, timer) {
            (Some(rate), Some(timer)) => open_loop(plan, link, timer, k, rate, started).await,
            _ => Ok(closed_loop(plan, link, k, started).await),
        };
        let _ = done.send(tally);
    });
}

/// One HTTP/2 connection to the service; its frames are read and written by a task on the
/// same thread.
struct Link {
    sender: SendRequest<Bytes>,
    uri: Uri,
    /// The connection failed or went away: nothing more is sent on it.
    dead: bool,
}

impl Link {
    async fn open(plan: &Plan) -> Result<Link, CallError> {
        let failed = |reason: String| CallError::Unreachable {
            addr: plan.addr.clone(),
            reason,
        };
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(&plan.target)
                .await
                .map_err(|e| failed(e.to_string()))?;
            // Each call is a small write that must leave at once, not wait for the next.
            tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| failed(format!("HTTP/2 handshake: {e}")))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| failed(format!("no HTTP/2 connection in {CONNECT_TIMEOUT:?}")))??;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Link {
            sender,
            uri: plan.uri.clone(),
            dead: false,
        })
    }

    /// Sends one call; `None` when the connection can no longer take one.
    async fn send(&mut self, frame: Bytes) -> Option<ResponseFuture> {
        if self.dead {
            return None;
        }
        let sent = async {
            // Ready at once unless the service's stream bound is reached.
            poll_fn(|cx| self.sender.poll_ready(cx)).await.ok()?;
            let head = wire::head(&self.uri);
            let (response, mut body) = self.sender.send_request(head, false).ok()?;
            body.send_data(frame, true).ok()?;
            Some(response)
        }
        .await;
        self.dead = sent.is_none();
        sent
    }
}

/// Waits for call `n`'s answer; the latency counts from `from` (its send, or its scheduled
/// time in the open loop).
async fn timed(n: u64, response: ResponseFuture, from: Instant) -> (u64, Outcome, Duration) {
    let outcome = wire::answer(response).await;
    (n, outcome, from.elapsed())
}

/// This connection's callers of the closed loop: callers k, k + connections, ... of
/// `--concurrency`, caller c making calls c, c + concurrency, c + 2 concurrency, ... Each
/// sends its next call when the last is answered, until the run's end.
async fn closed_loop(plan: &Plan, mut link: Link, k: usize, started: Instant) -> Tally {
    let deadline = started + plan.duration;
    let stride = plan.concurrency as u64;
    let mut tally = Tally::default();
    let mut in_flight = FuturesUnordered::new();
    for caller in (k..plan.concurrency).step_by(plan.connections) {
        let n = caller as u64;
        let now = Instant::now();
        match link.send(plan.requests.frame(n)).await {
            Some(response) => in_flight.push(timed(n, response, now)),
            None => tally.record(Outcome::Error, now.elapsed()),
        }
    }
    let mut drain = pin!(tokio::time::sleep_until((deadline + DRAIN).into()));
    loop {
        tokio::select! {
            biased;
            answer = in_flight.next() => {
                let Some((n, outcome, took)) = answer else { break };
                tally.record(outcome, took);
                let now = Instant::now();
                if now < deadline {
                    let n = n + stride;
                    match link.send(plan.requests.frame(n)).await {
                        Some(response) => in_flight.push(timed(n, response, now)),
                        // The connection is gone: this caller stops.
                        None => tally.record(Outcome::Error, now.elapsed()),
                    }
                }
            }
            () = &mut drain => {
                tally.errors += in_flight.len() as u64;
                break;
            }
        }
    }
    tally
}

/// This connection's share of the open loop: calls k, k + connections, ... of the
/// schedule, each sent at its time (`schedule.rs`) whatever became of the calls before it,
/// with at most this connection's share of `--concurrency` in flight. A send that finds
/// them all in flight waits for one, which the late count and the latency (counted from
/// the scheduled time) both show.
async fn open_loop(
    plan: &Plan,
    mut link: Link,
    mut timer: Timer,
    k: usize,
    rate: u32,
    started: Instant,
) -> Result<Tally, CallError> {
    let calls = schedule::calls(plan.duration, rate);
    let bound = schedule::share(plan.concurrency, plan.connections, k).max(1);
    let stride = plan.connections as u64;
    let mut next = k as u64;
    let mut tally = Tally::with_capacity(usize::try_from(calls / stride + 1).unwrap_or(0));
    let mut in_flight = FuturesUnordered::new();
    let end = started + plan.duration.max(schedule::due(calls, rate));
    let mut drain = pin!(tokio::time::sleep_until((end + DRAIN).into()));
    loop {
        // Every call that is due, as far as the bound lets.
        while next < calls && in_flight.len() < bound {
            let due = started + schedule::due(next, rate);
            let now = Instant::now();
            if due > now {
                break;
            }
            if now - due > LATE_AFTER {
                tally.late += 1;
            }
            match link.send(plan.requests.frame(next)).await {
                Some(response) => in_flight.push(timed(next, response, due)),
                None => tally.record(Outcome::Error, due.elapsed()),
            }
            next += stride;
        }
        if next >= calls && in_flight.is_empty() {
            return Ok(tally);
        }
        // The next send's time, unless the bound holds it back until an answer.
        let wake =
            (next < calls && in_flight.len() < bound).then(|| started + schedule::due(next, rate));
        tokio::select! {
            biased;
            Some((_, outcome, took)) = in_flight.next(), if !in_flight.is_empty() => {
                tally.record(outcome, took);
            }
            woke = async { timer.wait_until(wake.unwrap_or(end)).await }, if wake.is_some() => {
                woke.map_err(|e| CallError::Thread(format!("the open loop's timer failed: {e}")))?;
            }
            () = &mut drain, if next >= calls => {
                tally.errors += in_flight.len() as u64;
                return Ok(tally);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::tests::args;

    fn refusal(addr: &str) -> String {
        match Plan::new(&args(&["--addr", addr])) {
            Err(e @ CallError::BenchAddress { .. }) => e.to_string(),
            other => panic!("{addr}: {other:?}"),
        }
    }

    #[test]
    fn the_address_is_plain_http_host_and_port() {
        let plan = Plan::new(&args(&["--addr", "http://127.0.0.1:8081"])).unwrap();
        assert_eq!(plan.target, "127.0.0.1:8081");
        assert_eq!(
            plan.uri.to_string(),
            format!("http://127.0.0.1:8081{SHOULD_RATE_LIMIT}")
        );
        let plan = Plan::new(&args(&["--addr", "http://rls.example/"])).unwrap();
        assert_eq!(
            plan.target, "rls.example:80",
            "HTTP's port when none is given"
        );
        let tls = refusal("https://127.0.0.1:8081");
        assert!(
            tls.starts_with("invalid --addr \"https://127.0.0.1:8081\"") && tls.contains("h2c"),
            "{tls}"
        );
        assert!(refusal("127.0.0.1:8081").contains("http://host:port"));
        assert!(refusal("http://127.0.0.1:8081/x").contains("without a path"));
        assert!(refusal("http://[::1").starts_with("invalid --addr"));
    }

    #[test]
    fn no_connection_is_opened_without_a_call_to_carry() {
        let plan = Plan::new(&args(&["--concurrency", "2", "--connections", "4"])).unwrap();
        assert_eq!((plan.concurrency, plan.connections), (2, 2));
        let plan = Plan::new(&args(&["--concurrency", "0", "--connections", "0"])).unwrap();
        assert_eq!((plan.concurrency, plan.connections), (1, 1));
        let plan = Plan::new(&args(&[])).unwrap();
        assert_eq!((plan.concurrency, plan.connections), (64, 4));
    }
}
