//! The SotW stream: connect, subscribe, apply, ACK or NACK, reconnect with backoff.
//!
//! The protocol as Envoy's xDS docs describe it: the first request carries the node and the
//! type URL (and, after a reconnection, the version last applied, so a server can tell that
//! nothing is missing); each response is answered by a request carrying its nonce, with the
//! response's version when applied (ACK) or the previous version and an `error_detail`
//! when rejected (NACK).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::convert;
use crate::config;
use crate::install::Installer;
use crate::metrics::Metrics;
use crate::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::discovery::{DiscoveryRequest, DiscoveryResponse};
use crate::proto::envoy::config::core::v3::{Node, node};
use crate::proto::google::rpc::Status;
use crate::proto::ratelimit::config::ratelimit::v3::RateLimitConfig;
use crate::settings::ServeArgs;

/// The resource type subscribed to (the reference's and Envoy Gateway's).
pub const TYPE_URL: &str = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PINGs on the stream, so a management server that vanished without closing the
/// connection (a deleted pod) is noticed and the client reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// gRPC INVALID_ARGUMENT: the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// What can stop the source from starting: bad flags or unreadable TLS files.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The server address is not usable.
    #[error("--config-xds {url:?}: {why}")]
    Url {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// Which flag's file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS settings were refused by the transport.
    #[error("xDS TLS settings: {0}")]
    Tls(#[source] tonic::transport::Error),
}

/// Client TLS to the management server: file paths, read again on every connection so that
/// rotated certificates (a renewed Kubernetes Secret) are picked up by the next one.
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

/// The source's settings, from the `--config-xds*` flags.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// `http://host:port` or `https://host:port`.
    uri: String,
    node_id: String,
    node_metadata: Vec<(String, String)>,
    tls: Option<TlsFiles>,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_message_bytes: usize,
}

impl XdsOptions {
    /// The options `args` ask for; `None` without `--config-xds`. The TLS files are read
    /// once here so that a wrong path fails at start-up, not on the first connection.
    pub fn from_args(args: &ServeArgs) -> Result<Option<XdsOptions>, XdsError> {
        let Some(url) = &args.config_xds else {
            return Ok(None);
        };
        let bad = |why: &str| XdsError::Url {
            url: url.clone(),
            why: why.to_owned(),
        };
        let (scheme_tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if url.contains("://") {
            return Err(bad("the scheme must be http:// or https://"));
        } else {
            (false, url.as_str())
        };
        let host_port = rest.trim_end_matches('/');
        if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
            return Err(bad("expected host:port"));
        }
        let wants_tls = scheme_tls
            || args.config_xds_tls_ca.is_some()
            || args.config_xds_tls_cert.is_some()
            || args.config_xds_tls_server_name.is_some();
        let tls = if wants_tls {
            let Some(ca) = args.config_xds_tls_ca.clone() else {
                return Err(bad(
                    "TLS to the xDS server needs --config-xds-tls-ca (the CA that signed its certificate)",
                ));
            };
            let identity = args
                .config_xds_tls_cert
                .clone()
                .zip(args.config_xds_tls_key.clone());
            Some(TlsFiles {
                ca,
                identity,
                server_name: args.config_xds_tls_server_name.clone(),
            })
        } else {
            None
        };
        let options = XdsOptions {
            uri: format!(
                "{}://{host_port}",
                if tls.is_some() { "https" } else { "http" }
            ),
            node_id: args.config_xds_node_id.clone(),
            node_metadata: args.config_xds_node_metadata.clone(),
            tls,
            backoff_initial: args.config_xds_backoff_initial,
            backoff_max: args
                .config_xds_backoff_max
                .max(args.config_xds_backoff_initial),
            max_message_bytes: usize::try_from(args.config_xds_max_message_bytes)
                .unwrap_or(usize::MAX),
        };
        options.endpoint()?;
        Ok(Some(options))
    }

    /// The address, for logs.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A fresh endpoint, TLS files read now.
    fn endpoint(&self) -> Result<Endpoint, XdsError> {
        let endpoint = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| XdsError::Url {
                url: self.uri.clone(),
                why: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let Some(tls) = &self.tls else {
            return Ok(endpoint);
        };
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| XdsError::File {
                what,
                path: path.clone(),
                source,
            })
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("--config-xds-tls-ca", &tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(
                read("--config-xds-tls-cert", cert)?,
                read("--config-xds-tls-key", key)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint.tls_config(config).map_err(XdsError::Tls)
    }

    fn node(&self) -> Node {
        let fields: BTreeMap<String, prost_types::Value> = self
            .node_metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(v.clone())),
                    },
                )
            })
            .collect();
        Node {
            id: self.node_id.clone(),
            cluster: String::new(),
            metadata: (!fields.is_empty()).then_some(prost_types::Struct { fields }),
            user_agent_name: "ironclad-rls".into(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
        }
    }
}

/// Why a session (one connection, one stream) ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
}

/// The running source.
#[derive(Debug)]
pub struct XdsClient {
    options: XdsOptions,
    installer: Arc<Installer>,
    metrics: Arc<Metrics>,
    /// The version last applied: sent on reconnection, and in a NACK.
    applied_version: String,
}

impl XdsClient {
    /// A client installing what it receives through `installer`.
    pub fn new(options: XdsOptions, installer: Arc<Installer>, metrics: Arc<Metrics>) -> Self {
        XdsClient {
            options,
            installer,
            metrics,
            applied_version: String::new(),
        }
    }

    /// Keeps a stream open for as long as the process runs, reconnecting with backoff
    /// (doubling from the initial wait to the maximum, with jitter so that replicas do not
    /// reconnect in step; back to the initial wait once a stream delivered a response).
    pub async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let mut received = false;
            let end = self.session(&mut received).await;
            if received {
                failures = 0;
            }
            let wait = backoff(
                self.options.backoff_initial,
                self.options.backoff_max,
                failures,
            );
            failures = failures.saturating_add(1);
            let serving = if self.installer.current().generation > 0 {
                "the last configuration keeps serving"
            } else {
                "no configuration installed yet"
            };
            tracing::warn!(
                server = %self.options.uri,
                retry_in = ?wait,
                version = %self.applied_version,
                "xDS configuration stream ended ({end}); {serving}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn request(&self, nonce: &str, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.applied_version.clone(),
            node: Some(self.options.node()),
            resource_names: Vec::new(),
            type_url: TYPE_URL.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
        }
    }

    async fn session(&mut self, received: &mut bool) -> SessionEnd {
        let channel = match self.connect().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.options.max_message_bytes);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
        // Cannot fail: the receiver is alive and the buffer empty.
        let _ = tx.try_send(self.request("", None));
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut inbound = match client.stream_aggregated_resources(outbound).await {
            Ok(r) => r.into_inner(),
            Err(s) => return SessionEnd::Stream(s),
        };
        tracing::info!(
            server = %self.options.uri,
            node_id = %self.options.node_id,
            "xDS configuration stream open"
        );
        loop {
            let response = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return SessionEnd::Closed,
                Err(s) => return SessionEnd::Stream(s),
            };
            *received = true;
            let answer = match self.apply(&response) {
                Ok(generation) => {
                    self.applied_version = response.version_info.clone();
                    tracing::info!(
                        version = %response.version_info,
                        resources = response.resources.len(),
                        generation,
                        "xDS configuration applied (ACK)"
                    );
                    self.request(&response.nonce, None)
                }
                Err(e) => {
                    self.metrics.reload(false);
                    tracing::error!(
                        version = %response.version_info,
                        kept = %self.applied_version,
                        "xDS configuration rejected (NACK); the previous configuration keeps serving: {e}"
                    );
                    self.request(&response.nonce, Some(e))
                }
            };
            if tx.send(answer).await.is_err() {
                return SessionEnd::Closed;
            }
        }
    }

    async fn connect(&self) -> Result<Channel, SessionEnd> {
        let endpoint = self
            .options
            .endpoint()
            .map_err(|e| SessionEnd::Connect(e.to_string()))?;
        endpoint.connect().await.map_err(|e| {
            // The transport error's own text is generic; its source says what failed.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                // hyper's errors repeat their source's text in their own: said once.
                let said = c.to_string();
                if !text.contains(&said) {
                    text.push_str(": ");
                    text.push_str(&said);
                }
                cause = c.source();
            }
            SessionEnd::Connect(text)
        })
    }

    /// Loads a response and installs it; the generation served afterwards, or why it was
    /// refused (the NACK's message).
    fn apply(&self, response: &DiscoveryResponse) -> Result<u64, String> {
        if response.type_url != TYPE_URL {
            return Err(format!(
                "type {:?} was not subscribed to (only {TYPE_URL})",
                response.type_url
            ));
        }
        let mut sources = Vec::with_capacity(response.resources.len());
        for (i, any) in response.resources.iter().enumerate() {
            if any.type_url != TYPE_URL {
                return Err(format!(
                    "resources[{i}]: type {:?}, expected {TYPE_URL}",
                    any.type_url
                ));
            }
            let resource = RateLimitConfig::decode(any.value.as_slice())
                .map_err(|e| format!("resources[{i}]: not a RateLimitConfig: {e}"))?;
            sources.push(convert::to_source(&resource));
        }
        let loaded = config::load_sources(&sources).map_err(|e| e.to_string())?;
        let current = self.installer.current();
        if current.generation > 0 && loaded.sha256 == current.sha256 {
            // A new version with the same limits: nothing to install, but it is ACKed.
            return Ok(current.generation);
        }
        let generation = self.installer.install(loaded);
        self.metrics.reload(true);
        Ok(generation)
    }
}

/// The wait before reconnection attempt `failures + 1`: the initial wait doubled per
/// failure, capped, then scaled by a random factor in [0.5, 1].
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doubled = initial.saturating_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX));
    let capped = doubled.min(max);
    // Randomness without a dependency: std's per-process random hasher keys.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    capped.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &[&str]) -> ServeArgs {
        let cli =
            crate::settings::Cli::try_parse_from([&["ironclad-rls", "serve"], flags].concat())
                .unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            crate::settings::Command::Serve(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls_take_a_scheme_or_a_bare_address() {
        let o = XdsOptions::from_args(&args(&["--config-xds", "envoy-gateway:18001"]))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("configured"));
        assert_eq!(o.uri(), "http://envoy-gateway:18001");
        for bad in ["envoy-gateway", "grpc://h:1", "http://h:1/path"] {
            assert!(
                XdsOptions::from_args(&args(&["--config-xds", bad])).is_err(),
                "{bad}"
            );
        }
        let e = XdsOptions::from_args(&args(&["--config-xds", "https://h:1"]))
            .expect_err("TLS without a CA");
        assert!(e.to_string().contains("--config-xds-tls-ca"), "{e}");
        assert!(
            XdsOptions::from_args(&args(&["--config", "x"]))
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
    }

    #[test]
    fn a_missing_tls_file_fails_at_start_up() {
        let e = XdsOptions::from_args(&args(&[
            "--config-xds",
            "h:1",
            "--config-xds-tls-ca",
            "/nonexistent/ca.crt",
        ]))
        .expect_err("unreadable CA");
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for failures in 0..40 {
            let w = backoff(i, m, failures);
            let full = (i * 2u32.saturating_pow(failures.min(20))).min(m);
            assert!(w >= full / 2 && w <= full, "{failures}: {w:?} vs {full:?}");
        }
    }

    #[test]
    fn the_node_carries_id_and_metadata() {
        let o = XdsOptions::from_args(&args(&[
            "--config-xds",
            "h:1",
            "--config-xds-node-id",
            "envoy-ratelimit",
            "--config-xds-node-metadata",
            "zone=a",
        ]))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("configured"));
        let node = o.node();
        assert_eq!(node.id, "envoy-ratelimit");
        let metadata = node.metadata.unwrap_or_default();
        assert!(metadata.fields.contains_key("zone"));
    }
}
