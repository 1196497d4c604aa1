//! Cluster identity: a CA made by `ourkv cluster init`, and the node
//! certificate it signs. Every connection is mutual TLS against that CA, so a
//! peer without a certificate of this cluster is refused by the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, IoContext, Result};

/// The name every node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "ourkv.node";
/// The ALPN protocol of this wire format.
pub const ALPN: &[u8] = b"ourkv/2";

/// The cluster CA's certificate in an identity directory.
pub const CA_CERT: &str = "ca.crt";
/// The cluster CA's private key (only where new nodes are signed).
pub const CA_KEY: &str = "ca.key";
/// This node's certificate, signed by the CA.
pub const NODE_CERT: &str = "node.crt";
/// This node's private key.
pub const NODE_KEY: &str = "node.key";

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// A new cluster CA and a node certificate signed by it, as PEM text.
struct ClusterPems {
    ca: String,
    ca_key: String,
    node: String,
    node_key: String,
}

fn new_cluster() -> Result<ClusterPems> {
    let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ourkv cluster CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).map_err(tls)?;

    let node_key = rcgen::KeyPair::generate().map_err(tls)?;
    let mut node_params =
        rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls)?;
    node_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ourkv node");
    node_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node = node_params
        .signed_by(&node_key, &ca, &ca_key)
        .map_err(tls)?;
    Ok(ClusterPems {
        ca: ca.pem(),
        ca_key: ca_key.serialize_pem(),
        node: node.pem(),
        node_key: node_key.serialize_pem(),
    })
}

/// Writes a new cluster CA and a node certificate signed by it into `out`.
/// Refuses to overwrite an existing CA.
pub fn init_cluster(out: &Path) -> Result<()> {
    if out.join(CA_CERT).exists() {
        return Err(Error::Tls(format!(
            "{} already holds a cluster CA; refusing to replace it",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).ctx(|| format!("create {}", out.display()))?;
    let pems = new_cluster()?;
    let write = |name: &str, text: &str, secret: bool| -> Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).ctx(|| format!("write {}", path.display()))?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .ctx(|| format!("chmod {}", path.display()))?;
        }
        Ok(())
    };
    write(CA_CERT, &pems.ca, false)?;
    write(CA_KEY, &pems.ca_key, true)?;
    write(NODE_CERT, &pems.node, false)?;
    write(NODE_KEY, &pems.node_key, true)?;
    Ok(())
}

/// A node's view of its cluster: the CA to trust and its own certificate.
#[derive(Clone)]
pub struct Identity {
    /// `None` for the loopback-only mode without a cluster.
    ca: Option<CertificateDer<'static>>,
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Loads the cluster directory written by `init_cluster`.
    pub fn load(dir: &Path) -> Result<Identity> {
        let cert = |name: &str| {
            let p = dir.join(name);
            CertificateDer::from_pem_file(&p)
                .map_err(|e| Error::Tls(format!("{}: {e}", p.display())))
        };
        let kp = dir.join(NODE_KEY);
        let key = PrivateKeyDer::from_pem_file(&kp)
            .map_err(|e| Error::Tls(format!("{}: {e}", kp.display())))?;
        Ok(Identity {
            ca: Some(cert(CA_CERT)?),
            cert: cert(NODE_CERT)?,
            key: Arc::new(key),
        })
    }

    /// A cluster of its own for this process alone (`ourkv dev`): a CA and
    /// node certificate made in memory and never written anywhere, so no
    /// other process can hold a certificate its nodes accept. Its nodes
    /// refuse every client but the ones this process makes.
    pub fn ephemeral() -> Result<Identity> {
        let pems = new_cluster()?;
        let cert = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Tls(e.to_string()))
        };
        let key = PrivateKeyDer::from_pem_slice(pems.node_key.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Identity {
            ca: Some(cert(&pems.ca)?),
            cert: cert(&pems.node)?,
            key: Arc::new(key),
        })
    }

    /// Without a cluster: a throwaway self-signed certificate. TLS then
    /// encrypts but authenticates no one, so such nodes and clients only
    /// listen on and talk to loopback addresses (see `check_peer`).
    pub fn loopback() -> Result<Identity> {
        let key = rcgen::KeyPair::generate().map_err(tls)?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(tls)?
            .self_signed(&key)
            .map_err(tls)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(tls)?;
        Ok(Identity {
            ca: None,
            cert: cert.der().clone(),
            key: Arc::new(key),
        })
    }

    /// True for the loopback-only identity.
    pub fn is_loopback_only(&self) -> bool {
        self.ca.is_none()
    }

    /// Refuses a non-loopback address in the loopback-only mode.
    pub fn check_peer(&self, addr: std::net::SocketAddr) -> Result<()> {
        if self.is_loopback_only() && !addr.ip().is_loopback() {
            return Err(Error::Address(format!(
                "{addr} is not a loopback address: without --cluster (mutual TLS) nodes only use loopback"
            )));
        }
        Ok(())
    }

    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            roots.add(ca.clone()).map_err(tls)?;
        }
        Ok(roots)
    }

    /// QUIC server side: only clients with a certificate of this cluster get in.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        self.server_config_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// The server side for an endpoint listening on `ip` (the overlay's MTU
    /// cap on a Mycelium address).
    pub fn server_config_on(&self, ip: std::net::IpAddr) -> Result<quinn::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?;
        let builder = if self.ca.is_some() {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(self.roots()?),
                provider(),
            )
            .build()
            .map_err(tls)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut tls_cfg = builder
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls)?;
        tls_cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls_cfg).map_err(tls)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_for(ip)));
        Ok(cfg)
    }

    /// QUIC client side: the server must show a certificate of this cluster.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        self.client_config_to(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// The client side towards a peer at `ip`.
    pub fn client_config_to(&self, ip: std::net::IpAddr) -> Result<quinn::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?;
        let mut tls_cfg = if self.ca.is_some() {
            builder
                .with_root_certificates(self.roots()?)
                .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
                .map_err(tls)?
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyLoopbackServer(provider())))
                .with_no_client_auth()
        };
        tls_cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).map_err(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Arc::new(transport_for(ip)));
        Ok(cfg)
    }
}

/// The loopback-only mode's server check: any certificate, but the handshake
/// signatures are still verified. Only used towards loopback addresses.
#[derive(Debug)]
struct AnyLoopbackServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyLoopbackServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The largest UDP payload a QUIC packet takes towards a Mycelium overlay
/// address: over Mycelium's peer links a larger overlay packet is refused
/// without a Packet Too Big, and the refusal drops the whole peer link.
pub const OVERLAY_MTU: u16 = 1280;

/// True for addresses of the Mycelium overlay (400::/7).
pub fn is_overlay(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if (v6.octets()[0] & 0xFE) == 0x04)
}

/// The transport towards (or, on a server, on) `ip`: keep-alives every
/// 250 ms and a 1 s idle timeout, so calls in flight to a peer that died
/// (kill -9 sends no close) fail within about a second; towards the overlay
/// the MTU is fixed at `OVERLAY_MTU` with path MTU discovery off, and a peer
/// counts as dead after 3 s.
pub fn transport_for(ip: std::net::IpAddr) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(250)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(1)).expect("1 s fits"),
    ));
    // Ask the peer (ACK frequency extension) not to acknowledge every
    // second packet at once but within 5 ms: a worker's ACK of a two-packet
    // segment then rides in the datagram of its application Ack instead of
    // leaving just before it, and Mycelium 0.7.10 can merge two datagrams
    // sent back to back into one that QUIC discards. A lost packet costs
    // less, too: the probe timeout includes this delay (25 ms by default).
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(32))
        .max_ack_delay(Some(std::time::Duration::from_millis(5)));
    t.ack_frequency_config(Some(acks));
    if is_overlay(ip) || ip.is_unspecified() && ip.is_ipv6() {
        // Routes to non-neighbours are found on demand: give the first
        // packets (and a lossy link) more room before a peer counts as dead.
        t.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_secs(3)).expect("3 s fits"),
        ));
        t.mtu_discovery_config(None);
        t.initial_mtu(OVERLAY_MTU);
        t.min_mtu(OVERLAY_MTU);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_addresses_get_the_mtu_cap() {
        for (ip, overlay) in [
            ("400::1", true),
            ("5ff:1::2", true),
            ("::1", false),
            ("600::1", false),
            ("fe80::1", false),
            ("127.0.0.1", false),
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(is_overlay(ip), overlay, "{ip}");
        }
        // The configs differ exactly in the MTU settings.
        let capped = format!("{:?}", transport_for("400::1".parse().unwrap()));
        let open = format!("{:?}", transport_for("::1".parse().unwrap()));
        assert!(capped.contains("initial_mtu: 1280"), "{capped}");
        assert!(capped.contains("mtu_discovery_config: None"), "{capped}");
        assert!(!open.contains("mtu_discovery_config: None"), "{open}");
    }
}
