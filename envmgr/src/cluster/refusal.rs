//! Telling a TLS refusal from an outage. An unreachable etcd is waited for
//! (the node starts from its cached subnet, the view is kept); a TLS
//! handshake that fails because of this node's files (a CA that did not
//! sign etcd's certificate, no or an untrusted client certificate, https to
//! a plain-http etcd) will never heal by waiting, so the node refuses to
//! start and says which `store.*` key to fix.
//!
//! The decision is sans-IO: it reads the text of an error's whole source
//! chain (the etcd client wraps tonic, hyper and rustls errors, and only the
//! innermost one says what happened).

use std::error::Error as StdError;

use super::settings::EtcdSettings;

/// The text of `e` and of every error under it, joined by `": "`. An
/// `io::Error` that wraps another error (as tokio-rustls does) is looked
/// into too: its own `source()` skips the wrapped error.
pub(super) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => {
                let text = inner.to_string();
                if parts.last() != Some(&text) {
                    parts.push(text);
                }
                inner.source()
            }
            None => err.source(),
        };
    }
    parts.join(": ")
}

/// What a failed connection says about this node's TLS files, if it is a
/// TLS refusal: the message names the `store.*` key to fix. `None` for
/// everything else (an outage).
pub(super) fn tls_refusal(settings: &EtcdSettings, chain: &str) -> Option<String> {
    let has = |s: &str| chain.contains(s);
    let ca = settings
        .tls
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), |t| t.ca.display().to_string());
    if has("invalid peer certificate") {
        if has("NotValidForName") || has("not valid for name") {
            return Some(format!(
                "store.endpoints: etcd's certificate is not valid for the host name or address in {} \
                 ({chain}); use the name or address its certificate was made for",
                settings.endpoints.join(", ")
            ));
        }
        return Some(format!(
            "store.ca_file: etcd's certificate is not signed by the CA in {ca} ({chain}); \
             set store.ca_file to the CA that signed etcd's server certificate"
        ));
    }
    let client_rejected = has("CertificateRequired")
        || has("BadCertificate")
        || has("UnknownCA")
        || has("certificate required")
        || has("bad certificate")
        || has("unknown certificate authority");
    if client_rejected {
        let given = settings
            .tls
            .as_ref()
            .and_then(|t| t.cert.as_ref())
            .map_or_else(
                || "none is set".to_owned(),
                |c| format!("it did not accept the one in {}", c.display()),
            );
        return Some(format!(
            "store.cert_file: etcd asks for a client certificate and {given} ({chain}); \
             set store.cert_file and store.key_file to a certificate and key signed by a CA \
             that etcd trusts (its --trusted-ca-file)"
        ));
    }
    if settings.tls.is_some() && (has("InvalidContentType") || has("corrupt message")) {
        return Some(format!(
            "store.endpoints: {} did not answer with TLS ({chain}); etcd serves plain http there: \
             use http:// endpoints and no TLS files, or start etcd with --cert-file and --key-file",
            settings.endpoints.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cluster::TlsFiles;

    fn settings(cert: bool) -> EtcdSettings {
        let mut s = EtcdSettings::new(vec!["https://192.0.2.254:2379".to_owned()]);
        s.tls = Some(TlsFiles {
            ca: PathBuf::from("/etc/proxytun/etcd-ca.pem"),
            cert: cert.then(|| PathBuf::from("/etc/proxytun/node.pem")),
            key: cert.then(|| PathBuf::from("/etc/proxytun/node-key.pem")),
        });
        s
    }

    #[test]
    fn unknown_issuer_names_ca_file() {
        let m = tls_refusal(
            &settings(true),
            "transport error: invalid peer certificate: UnknownIssuer",
        )
        .expect("a refusal");
        assert!(m.starts_with("store.ca_file: "), "{m}");
        assert!(m.contains("/etc/proxytun/etcd-ca.pem"), "{m}");
        assert!(m.contains("UnknownIssuer"), "{m}");
    }

    #[test]
    fn wrong_name_names_endpoints() {
        let m = tls_refusal(&settings(true), "invalid peer certificate: NotValidForName")
            .expect("a refusal");
        assert!(m.starts_with("store.endpoints: "), "{m}");
    }

    #[test]
    fn missing_client_cert_names_cert_file() {
        let m = tls_refusal(
            &settings(false),
            "status: Unavailable: received fatal alert: CertificateRequired",
        )
        .expect("a refusal");
        assert!(m.starts_with("store.cert_file: "), "{m}");
        assert!(m.contains("none is set"), "{m}");
        let m = tls_refusal(&settings(true), "received fatal alert: BadCertificate")
            .expect("a refusal");
        assert!(m.contains("/etc/proxytun/node.pem"), "{m}");
    }

    #[test]
    fn outages_are_not_refusals() {
        for text in [
            "transport error: tcp connect error: Connection refused (os error 111)",
            "connect timed out after 3s",
            "lease keepalive stream closed",
        ] {
            assert_eq!(tls_refusal(&settings(true), text), None, "{text}");
        }
    }

    #[test]
    fn chain_looks_into_wrapped_io_errors() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        assert_eq!(
            chain(&Outer(io)),
            "transport error: invalid peer certificate: UnknownIssuer"
        );
    }
}
