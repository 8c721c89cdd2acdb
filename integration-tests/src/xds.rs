//! An xDS management server for the tests: the aggregated discovery service (ADS) over real
//! gRPC, serving `RateLimitConfig` snapshots State-of-the-World as Envoy Gateway's does
//! (envoyproxy/gateway internal/globalratelimit/runner/runner.go registers go-control-plane's
//! ADS server), and recording every request a client sends (ACKs and NACKs).
//!
//! It runs on a runtime of its own on a thread of its own, so that `ManagementServer::stop`
//! closes every connection at once, as a management server that is killed would.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironclad_rls::proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ironclad_rls::proto::discovery::{DiscoveryRequest, DiscoveryResponse};
use ironclad_rls::proto::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::eventually;

/// The resource type URL of `RateLimitConfig`.
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// One request a client sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which connection (counted from 1 across restarts) it came on.
    pub stream: u64,
    /// Its node id.
    pub node_id: String,
    /// `version_info`.
    pub version_info: String,
    /// `response_nonce`.
    pub response_nonce: String,
    /// `type_url`.
    pub type_url: String,
    /// `error_detail.message` of a NACK.
    pub error: Option<String>,
}

/// A version of the configuration: `version_info` and its resources.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `version_info` (also the response nonce, prefixed `n`).
    pub version: String,
    /// The resources.
    pub resources: Vec<RateLimitConfig>,
}

struct Shared {
    snapshot: watch::Sender<Option<Snapshot>>,
    recorded: Mutex<Vec<Recorded>>,
    streams: Mutex<u64>,
}

#[derive(Clone)]
struct Ads(Arc<Shared>);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut inbound = request.into_inner();
        let shared = self.0.clone();
        let stream_no = {
            let mut n = shared.streams.lock().expect("lock");
            *n += 1;
            *n
        };
        let (tx, rx) = mpsc::channel(8);
        let (first_tx, first_rx) = oneshot::channel::<()>();
        // Reads (and records) what the client sends.
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            while let Ok(Some(r)) = inbound.message().await {
                reader.recorded.lock().expect("lock").push(Recorded {
                    stream: stream_no,
                    node_id: r.node.map(|n| n.id).unwrap_or_default(),
                    version_info: r.version_info,
                    response_nonce: r.response_nonce,
                    type_url: r.type_url,
                    error: r.error_detail.map(|e| e.message),
                });
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
            }
        });
        // Sends the snapshot after the first request, then every new one.
        let mut snapshots = shared.snapshot.subscribe();
        tokio::spawn(async move {
            if first_rx.await.is_err() {
                return;
            }
            loop {
                let current = snapshots.borrow_and_update().clone();
                if let Some(s) = current {
                    let response = DiscoveryResponse {
                        version_info: s.version.clone(),
                        resources: s
                            .resources
                            .iter()
                            .map(|r| prost_types_any(r.encode_to_vec()))
                            .collect(),
                        canary: false,
                        type_url: TYPE_URL.into(),
                        nonce: format!("n{}", s.version),
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn prost_types_any(value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: TYPE_URL.into(),
        value,
    }
}

/// TLS for the management server: its identity, and the CA its clients' certificates must
/// be signed by (mutual TLS, as Envoy Gateway's).
pub struct ServerTls {
    /// Certificate chain, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// Client CA, PEM.
    pub client_ca: String,
}

/// A running (or stopped) management server on a fixed port.
pub struct ManagementServer {
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<Arc<ServerTls>>,
    stop: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl ManagementServer {
    /// Starts a server on a free loopback port, serving nothing until [`Self::set`].
    pub fn start(tls: Option<ServerTls>) -> ManagementServer {
        let port = crate::redis::free_port();
        let (snapshot, _) = watch::channel(None);
        let mut s = ManagementServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            shared: Arc::new(Shared {
                snapshot,
                recorded: Mutex::new(Vec::new()),
                streams: Mutex::new(0),
            }),
            tls: tls.map(Arc::new),
            stop: None,
        };
        s.resume();
        s
    }

    /// Starts serving again on the same port (after [`Self::stop`]).
    pub fn resume(&mut self) {
        assert!(self.stop.is_none(), "already running");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let shared = self.shared.clone();
        let addr = self.addr;
        let tls = self.tls.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("management server runtime");
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                        return;
                    }
                };
                let mut builder = Server::builder();
                if let Some(t) = &tls {
                    builder = builder
                        .tls_config(
                            ServerTlsConfig::new()
                                .identity(Identity::from_pem(&t.cert, &t.key))
                                .client_ca_root(Certificate::from_pem(&t.client_ca)),
                        )
                        .expect("management server TLS");
                }
                let _ = ready_tx.send(Ok(()));
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let serve = builder
                    .add_service(AggregatedDiscoveryServiceServer::new(Ads(shared)))
                    .serve_with_incoming(incoming);
                // Not a graceful shutdown, which would wait for the clients' streams to end:
                // the server is dropped, and the runtime with its connections below.
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime drops every connection task: the clients see the
            // connection close, as with a killed process.
            runtime.shutdown_background();
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("management server: {e}"),
            Err(e) => panic!("management server did not start: {e}"),
        }
        self.stop = Some((stop_tx, thread));
    }

    /// Stops the server and closes every connection.
    pub fn stop(&mut self) {
        if let Some((tx, thread)) = self.stop.take() {
            let _ = tx.send(());
            let _ = thread.join();
        }
    }

    /// Serves `snapshot` from now on (to open streams at once, to new ones when they come).
    pub fn set(&self, version: &str, resources: Vec<RateLimitConfig>) {
        self.shared.snapshot.send_replace(Some(Snapshot {
            version: version.into(),
            resources,
        }));
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().expect("lock").clone()
    }

    /// Waits for the request answering the response of `version` (its nonce), and returns it.
    pub fn wait_answer(&self, version: &str, deadline: Duration) -> Recorded {
        let nonce = format!("n{version}");
        eventually(
            deadline,
            &format!("the answer to version {version}"),
            || {
                self.recorded()
                    .into_iter()
                    .find(|r| r.response_nonce == nonce)
            },
        )
    }

    /// How many streams clients have opened.
    pub fn streams(&self) -> u64 {
        *self.shared.streams.lock().expect("lock")
    }
}

impl Drop for ManagementServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A resource for `domain` with one descriptor `key`=`value` limited to `limit` per `unit`.
pub fn limit(
    domain: &str,
    key: &str,
    value: &str,
    limit: u32,
    unit: RateLimitUnit,
) -> RateLimitConfig {
    RateLimitConfig {
        name: domain.into(),
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            key: key.into(),
            value: value.into(),
            rate_limit: Some(RateLimitPolicy {
                unit: unit as i32,
                requests_per_unit: limit,
                ..Default::default()
            }),
            ..Default::default()
        }],
    }
}
