//! A TLS probe of the etcd endpoints, run when a connection failed for a
//! reason the etcd client's error does not show.
//!
//! With TLS 1.3 a server that rejects the client's certificate (or gets
//! none) says so in an alert after the client has finished its side of the
//! handshake; the gRPC client often sees only "connection closed". The probe
//! makes one connection with the node's own files, sends the HTTP/2 preface
//! and reads the answer, so a rejection shows as the alert it is
//! ("received fatal alert: CertificateRequired") and `refusal.rs` can name
//! the key to fix.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::refusal::{chain, tls_refusal};
use super::settings::{EtcdSettings, TlsFiles};

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC
/// client sends first, so etcd answers (or closes with an alert).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The rustls client config from the node's files (`None` if a file does
/// not parse: `connect_options` reports unreadable files already).
fn client_config(tls: &TlsFiles) -> Option<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let ca = std::fs::read(&tls.ca).ok()?;
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.ok()?).ok()?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_slice_iter(&std::fs::read(c).ok()?)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(&std::fs::read(k).ok()?).ok()?;
            builder.with_client_auth_cert(certs, key).ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

/// `host:port` and the host of an `https://` endpoint.
fn host_port(endpoint: &str) -> Option<(String, String)> {
    let rest = endpoint.strip_prefix("https://")?.trim_end_matches('/');
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0.to_owned(),
        None => rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_owned(),
    };
    let addr = if rest.contains("]:") || (!rest.starts_with('[') && rest.contains(':')) {
        rest.to_owned()
    } else {
        format!("{rest}:2379")
    };
    Some((addr, host))
}

/// One probe connection to `endpoint`: the I/O error, if any.
async fn probe_one(config: Arc<ClientConfig>, endpoint: &str) -> io::Result<()> {
    let (addr, host) = host_port(endpoint)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an https:// URL"))?;
    let name =
        ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr.as_str()).await?;
    let mut s = TlsConnector::from(config).connect(name, tcp).await?;
    s.write_all(PREFACE).await?;
    s.flush().await?;
    let mut buf = [0u8; 64];
    // An answer (etcd's SETTINGS) is fine; a close without an alert says
    // nothing about TLS either way.
    if s.read(&mut buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Probes each `https://` endpoint with the node's TLS files (each within
/// the request timeout); the first refusal found, as `refusal.rs` words it.
pub(super) async fn probe(settings: &EtcdSettings) -> Option<String> {
    let config = Arc::new(client_config(settings.tls.as_ref()?)?);
    for ep in &settings.endpoints {
        let r = tokio::time::timeout(settings.request_timeout, probe_one(config.clone(), ep)).await;
        if let Ok(Err(e)) = r {
            if let Some(why) = tls_refusal(settings, &chain(&e)) {
                return Some(why);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_endpoints() {
        assert_eq!(
            host_port("https://192.0.2.254:2379"),
            Some(("192.0.2.254:2379".into(), "192.0.2.254".into()))
        );
        assert_eq!(
            host_port("https://etcd.example/"),
            Some(("etcd.example:2379".into(), "etcd.example".into()))
        );
        assert_eq!(
            host_port("https://[fd00::1]:2379"),
            Some(("[fd00::1]:2379".into(), "fd00::1".into()))
        );
        assert_eq!(host_port("http://192.0.2.254:2379"), None);
    }
}
