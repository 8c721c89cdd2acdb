//! TLS for the gRPC listener (rustls, no OpenSSL): server certificate, optional client CA for
//! mutual TLS, and reload when the files change (a renewed certificate is served to new
//! connections without a restart; a broken file keeps the previous configuration). The
//! accept loop (`app/accept.rs`) calls [`ReloadingTls::accept`] for each connection it has
//! room for, under its handshake deadline.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The PEM files behind the gRPC listener's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA bundle for client certificates (mutual TLS), if required.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, for the watcher.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.cert.clone(), self.key.clone()];
        p.extend(self.client_ca.clone());
        p
    }
}

/// The current server configuration, swapped on reload.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingTls {
    /// Loads the files; an error names the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let config = build(&files)?;
        Ok(ReloadingTls {
            files,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Loads the files again; on error the previous configuration stays.
    pub fn reload(&self) {
        match build(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!("gRPC TLS certificates reloaded");
            }
            Err(e) => {
                tracing::error!("gRPC TLS reload failed; keeping the previous certificates: {e:#}")
            }
        }
    }

    /// The files, for the watcher.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Completes the server side of a TLS handshake with the current certificates. The
    /// caller bounds how long it may take (a client that stalls must not hold a connection
    /// slot for ever).
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        acceptor.accept(tcp).await
    }
}

fn build(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("invalid CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} and {} do not make a valid certificate and key",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certs(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}
