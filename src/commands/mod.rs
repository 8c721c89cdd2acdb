//! The one-shot commands, one module each: its clap `Args` and its `run`, so changing a
//! command's flag or its behaviour touches that one file. `serve`'s settings stay with the
//! top-level command line in [`crate::settings`]; its body is [`crate::app`].
//!
//! Each module is an adapter: it turns flags into the plain inputs of the pure modules
//! ([`crate::config`], `crate::render`'s options, a [`crate::proto`] request), prints the
//! result, and chooses the exit code.

pub mod bench;
pub mod check;
pub mod explain;
pub(crate) mod http;
pub(crate) mod parse;
pub mod render;
pub mod top;
pub mod validate;

/// Why a command that calls a running service (`check`, `bench`) could not get its answers.
/// Printed as `error: ...` before exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// `--addr` is not a URI tonic can dial.
    #[error("invalid --addr {addr:?}: {source}")]
    Address {
        /// The address as given.
        addr: String,
        /// What tonic found wrong with it.
        source: tonic::transport::Error,
    },
    /// Nothing answered at `--addr`, or not with HTTP/2.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// The service answered the call with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// `bench` could not read the service's or Redis's CPU figures it was pointed at.
    #[error("cannot read {what}: {reason}")]
    Figures {
        /// What was read (`http://host:port/metrics`, `INFO of redis://...`).
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// `bench --addr` is not `http://host:port` (its client speaks HTTP/2 without TLS).
    #[error("invalid --addr {addr:?}: {reason}")]
    BenchAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `bench` could not open one of its HTTP/2 connections.
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable {
        /// The address as given.
        addr: String,
        /// The dial's or the handshake's error.
        reason: String,
    },
    /// A load task panicked or was cancelled (a bug in `bench`).
    #[error("a load task ended early: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A connection's thread of `bench` could not start or run.
    #[error("a load thread failed: {0}")]
    Thread(String),
}

/// A channel to `addr`, with `timeout` on both the connection and every call when given.
async fn connect(
    addr: &str,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::transport::Channel, CallError> {
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(addr.to_owned()).map_err(|source| {
            CallError::Address {
                addr: addr.to_owned(),
                source,
            }
        })?;
    if let Some(t) = timeout {
        endpoint = endpoint.connect_timeout(t).timeout(t);
    }
    endpoint
        .connect()
        .await
        .map_err(|source| CallError::Connect {
            addr: addr.to_owned(),
            source,
        })
}
