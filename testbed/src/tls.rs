//! Certificates made in the test: a CA, etcd's server certificate for its
//! address and a client certificate, all signed by that CA, written as PEM
//! files into a temporary directory (removed on Drop). Nothing is read from
//! or installed on the machine, so a TLS test needs no fixture files.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A test PKI: one CA, a server certificate for etcd and a client
/// certificate for the nodes and `etcdctl`.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate (PEM): `--trusted-ca-file` of etcd and
    /// `store.ca_file` of the nodes.
    pub ca: PathBuf,
    /// etcd's server certificate, valid for the address given to
    /// [`Pki::generate`] (and `localhost`, `127.0.0.1`).
    pub server: CertFiles,
    /// A client certificate (CN `proxytun-node`) for client-cert auth.
    pub client: CertFiles,
    dir: TempDir,
}

/// A fresh CA: its issuer (to sign with) and its certificate's PEM.
fn new_ca(cn: &str) -> Result<(Issuer<'static, KeyPair>, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("CA key")?;
    let cert = params.self_signed(&key).context("self-signing the CA")?;
    Ok((Issuer::new(params, key), cert.pem()))
}

/// Writes `text` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

impl Pki {
    /// A CA and the two certificates it signs: the server one with SANs
    /// `server_ip`, `127.0.0.1` and `localhost` (server auth), the client
    /// one for client auth. `prefix` names the temporary directory.
    pub fn generate(prefix: &str, server_ip: IpAddr) -> Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating the certificates' temporary directory")?;
        let (ca, ca_pem) = new_ca("proxytun test CA")?;
        let ca_path = write(dir.path(), "ca.pem", &ca_pem)?;

        let sans = vec![
            server_ip.to_string(),
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ];
        let server = Self::leaf(
            &ca,
            dir.path(),
            "server",
            sans,
            "etcd",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = Self::leaf(
            &ca,
            dir.path(),
            "client",
            Vec::new(),
            "proxytun-node",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Pki {
            ca: ca_path,
            server,
            client,
            dir,
        })
    }

    /// One end-entity certificate signed by `ca`, as `name.pem` and
    /// `name-key.pem`.
    fn leaf(
        ca: &Issuer<'static, KeyPair>,
        dir: &Path,
        name: &str,
        sans: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(sans).with_context(|| format!("{name} certificate params"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().with_context(|| format!("{name} key"))?;
        let cert = params
            .signed_by(&key, ca)
            .with_context(|| format!("signing the {name} certificate"))?;
        Ok(CertFiles {
            cert: write(dir, &format!("{name}.pem"), &cert.pem())?,
            key: write(dir, &format!("{name}-key.pem"), &key.serialize_pem())?,
        })
    }

    /// The certificate of another CA, which signed none of these
    /// certificates (`stranger-ca.pem`): a node given it as `store.ca_file`
    /// must refuse etcd's certificate.
    pub fn stranger_ca(&self) -> Result<PathBuf> {
        let (_, pem) = new_ca("a CA etcd never heard of")?;
        write(self.dir.path(), "stranger-ca.pem", &pem)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_files() {
        let pki = Pki::generate("pt-pki-test-", "192.0.2.254".parse().expect("ip")).expect("pki");
        for p in [
            &pki.ca,
            &pki.server.cert,
            &pki.server.key,
            &pki.client.cert,
            &pki.client.key,
        ] {
            let text = fs::read_to_string(p).expect("read");
            assert!(text.starts_with("-----BEGIN "), "{}: {text}", p.display());
        }
        let stranger = pki.stranger_ca().expect("stranger");
        assert_ne!(
            fs::read_to_string(stranger).expect("read"),
            fs::read_to_string(&pki.ca).expect("read")
        );
        let dir = pki.dir().to_owned();
        drop(pki);
        assert!(!dir.exists());
    }
}
