//! Mutual TLS for the admin API.
//!
//! The TLS handshake asks every client for a certificate and checks that it holds the key
//! (the handshake signature), but the chain is checked per call, against the admin CA, by
//! [`AdminTls::check`]. That way a client without a certificate, or with one from another
//! CA, gets a gRPC `UNAUTHENTICATED` that says why instead of a bare handshake failure. Every
//! admin method goes through the check (an interceptor on the whole service).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::Status;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in the file".into()));
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => file_err("no private key in the file".into()),
        e => file_err(e.to_string()),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The admin CA's verifier, used for handshake signatures and, per call, for the chain.
fn admin_verifier(client_ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_pem_certs(client_ca)? {
        roots.add(c).map_err(|e| TlsError::File {
            path: client_ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Asks for a client certificate and checks the handshake signature; leaves the chain to
/// [`AdminTls::check`].
#[derive(Debug)]
struct DeferredChain {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredChain {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // checked on every call instead; see the module documentation
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The admin server's TLS: its acceptor and the per-call client check.
pub struct AdminTls {
    acceptor: TlsAcceptor,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl AdminTls {
    pub fn load(client_ca: &Path, cert: &Path, key: &Path) -> Result<AdminTls, TlsError> {
        let verifier = admin_verifier(client_ca)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(Arc::new(DeferredChain {
                inner: verifier.clone(),
            }))
            .with_single_cert(read_pem_certs(cert)?, read_pem_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(AdminTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verifier,
        })
    }

    /// The operator's name (certificate common name) when the client presented a certificate
    /// from the admin CA; `UNAUTHENTICATED` otherwise.
    pub fn check(&self, certs: Option<&[CertificateDer<'static>]>) -> Result<String, Status> {
        let Some((leaf, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Err(Status::unauthenticated(
                "a client certificate from the admin CA is required (provisioner ca issue-admin)",
            ));
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| {
                Status::unauthenticated(format!(
                    "client certificate not accepted by the admin CA: {e}"
                ))
            })?;
        let name = x509_parser::parse_x509_certificate(leaf)
            .ok()
            .and_then(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok().map(String::from))
            })
            .unwrap_or_else(|| "unnamed".into());
        Ok(name)
    }

    /// TLS connections accepted on `listener`; handshakes run concurrently and failures are
    /// logged and dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        on_failure: impl Fn() + Send + Sync + 'static,
    ) -> tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        let on_failure = Arc::new(on_failure);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx, on_failure) = (acceptor.clone(), tx.clone(), on_failure.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            on_failure();
                            tracing::warn!(%peer, error = %e, "admin TLS handshake failed");
                        }
                        Err(_) => {
                            on_failure();
                            tracing::warn!(%peer, "admin TLS handshake timed out");
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}
