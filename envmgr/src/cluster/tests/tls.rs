//! TLS to a real etcd on loopback that requires client certificates, with
//! certificates made in the test: the right files join; a CA that did not
//! sign etcd's certificate, or no client certificate, is refused at once
//! with the `store.*` key to fix, and nothing is written.

use super::*;
use testbed::Pki;

/// A TLS etcd on loopback and its certificates.
fn tls_etcd() -> Option<(tempfile::TempDir, Pki, Etcd)> {
    if !Etcd::available() {
        eprintln!("skipped: {} is not installed", ETCD_BIN);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate("pt-tls-unit-", IpAddr::from(Ipv4Addr::LOCALHOST)).expect("pki");
    let etcd = Etcd::builder("tls")
        .dir(dir.path())
        .log_level("warn")
        .tls(&pki)
        .start()
        .expect("start etcd with TLS");
    Some((dir, pki, etcd))
}

fn tls_settings(etcd: &Etcd, ca: PathBuf, client: Option<&testbed::CertFiles>) -> EtcdSettings {
    let mut s = settings(&etcd.endpoint());
    s.tls = Some(TlsFiles {
        ca,
        cert: client.map(|c| c.cert.clone()),
        key: client.map(|c| c.key.clone()),
    });
    s
}

async fn try_join(s: EtcdSettings) -> Result<u32, ClusterError> {
    let c = EtcdCluster::start(s, "a".to_owned(), endpoint(1)).expect("start");
    let r = c
        .join(&AddressPlan::with_default_ranges(0), Duration::from_secs(8))
        .await;
    c.stop();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_join_and_refusals() {
    let Some((_d, pki, etcd)) = tls_etcd() else {
        return;
    };
    assert!(
        etcd.endpoint().starts_with("https://"),
        "{}",
        etcd.endpoint()
    );

    // A CA that signed nothing here: refused, naming store.ca_file.
    let stranger = pki.stranger_ca().expect("stranger CA");
    let e = try_join(tls_settings(&etcd, stranger, Some(&pki.client)))
        .await
        .expect_err("a CA that did not sign etcd's certificate");
    let ClusterError::Refused(why) = &e else {
        panic!("want a TLS refusal, got {e:?}")
    };
    eprintln!("refused: {why}");
    assert!(why.starts_with("store.ca_file: "), "{why}");

    // No client certificate while etcd asks for one: refused, naming
    // store.cert_file.
    let e = try_join(tls_settings(&etcd, pki.ca.clone(), None))
        .await
        .expect_err("no client certificate");
    let ClusterError::Refused(why) = &e else {
        panic!("want a TLS refusal, got {e:?}")
    };
    eprintln!("refused: {why}");
    assert!(why.starts_with("store.cert_file: "), "{why}");
    assert!(why.contains("none is set"), "{why}");
    assert!(
        etcd.keys("/t/").expect("keys").is_empty(),
        "a refused node wrote nothing"
    );

    // The right files: joins and registers.
    let idx = try_join(tls_settings(&etcd, pki.ca.clone(), Some(&pki.client)))
        .await
        .expect("join over TLS");
    assert_eq!(idx, 1);
    let keys = etcd.keys("/t/").expect("keys");
    assert!(keys.contains(&"/t/nodes/a".to_owned()), "{keys:?}");
}
