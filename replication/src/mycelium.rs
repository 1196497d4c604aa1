//! Mycelium addressing: a node's overlay address from the local Mycelium API,
//! and a peer's address from its public key.
//!
//! A Mycelium address is derived from the node's 32-byte public key: the
//! first 16 bytes of the blake3 extendable output of the key, with byte 0
//! replaced by `0x04 | (number of one bits in byte 0 mod 2)`, so every
//! address lies in 400::/7.

use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{Error, Result};

/// How long the local Mycelium API gets to answer, connect included.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read; the real one is a few hundred bytes.
const API_MAX_BODY: usize = 1 << 20;

/// The overlay address of a public key.
pub fn address_of(pubkey: &[u8; 32]) -> Ipv6Addr {
    let mut out = [0u8; 16];
    blake3::Hasher::new()
        .update(pubkey)
        .finalize_xof()
        .fill(&mut out);
    out[0] = 0x04 | (out[0].count_ones() % 2) as u8;
    Ipv6Addr::from(out)
}

/// True for addresses in Mycelium's 400::/7.
pub fn is_overlay(ip: &Ipv6Addr) -> bool {
    ip.octets()[0] & 0xFE == 0x04
}

/// A 64-hex-digit public key.
pub fn parse_pubkey(hex: &str) -> Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Address(format!(
            "{hex:?} is not a 64-digit hex public key"
        )));
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(key)
}

/// A port as written in an address: digits only (u16's parser would take
/// "+1"), 0 to 65535.
pub fn is_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// Checks the form of `HOST:PORT` without looking anything up: HOST is an
/// IPv4 address, a bracketed IPv6 address, a host name, or a Mycelium public
/// key (64 hex digits); PORT a number up to 65535. For the command line and
/// config files, so a bad address is refused where it was written.
pub fn check_peer(s: &str) -> Result<()> {
    let bad = |why: String| Err(Error::Address(why));
    let hexish = |h: &str| h.len() >= 32 && h.bytes().all(|b| b.is_ascii_hexdigit());
    // A bare public key, or a near miss of one: say what is wrong instead of
    // "invalid socket address" or a DNS lookup of 63 hex digits.
    if hexish(s) {
        return bad(format!(
            "{s:?} has no port: a peer named by its Mycelium public key is <64 hex digits>:PORT"
        ));
    }
    if s.contains("://") {
        return bad(format!("{s:?} is a URL: give HOST:PORT"));
    }
    // A list where one address goes (an OURKV_WORKER="a,b" variable, say).
    if s.split([',', ' ']).filter(|p| p.contains(':')).count() > 1 {
        return bad(format!(
            "{s:?} is a list: one HOST:PORT per flag (repeat the flag, or use a list in the config file)"
        ));
    }
    let Some((host, port)) = s.rsplit_once(':').filter(|_| !s.ends_with(']')) else {
        return bad(format!("{s:?} has no port: the form is HOST:PORT"));
    };
    if !is_port(port) {
        return bad(format!("bad port in {s:?}: a number from 0 to 65535"));
    }
    if hexish(host) {
        if host.len() != 64 {
            return bad(format!(
                "{host:?} has {} hex digits; a Mycelium public key has 64",
                host.len()
            ));
        }
        return Ok(());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // A link-local address may carry its interface by number
        // (fe80::1%2), which is what the address parser takes.
        let (v6, zone) = v6.split_once('%').unwrap_or((v6, "0"));
        if zone.is_empty() || zone.len() > 10 || !zone.bytes().all(|b| b.is_ascii_digit()) {
            return bad(format!(
                "{s:?}: an IPv6 zone is the interface's number (as in [fe80::1%2]:7000), see `ip link`"
            ));
        }
        return match v6.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => bad(format!("{v6:?} in {s:?} is not an IPv6 address")),
        };
    }
    if host.contains(':') {
        return bad(format!(
            "{s:?}: an IPv6 address takes brackets, as in [::1]:7000"
        ));
    }
    let name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    // All digits and dots is meant as an IPv4 address, not a name.
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if host.parse::<std::net::Ipv4Addr>().is_err() && (numeric || !name(host)) {
        return bad(format!(
            "{host:?} in {s:?} is not an IP address or a host name"
        ));
    }
    Ok(())
}

/// `HOST:PORT`, where HOST is an IP address, a name, or a Mycelium public key
/// (64 hex digits, standing for its overlay address).
pub fn resolve_peer(s: &str) -> Result<SocketAddr> {
    check_peer(s)?;
    if let Some((host, port)) = s.rsplit_once(':') {
        if host.len() == 64 && host.bytes().all(|b| b.is_ascii_hexdigit()) {
            let port: u16 = port.parse().expect("checked port");
            return Ok(SocketAddr::new(
                address_of(&parse_pubkey(host)?).into(),
                port,
            ));
        }
    }
    s.to_socket_addrs()
        .map_err(|e| Error::Address(format!("{s:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Address(format!("{s:?} resolves to nothing")))
}

/// What the local Mycelium API says about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's /64 subnet in the overlay.
    pub subnet: String,
    /// The node's overlay address (in 400::/7).
    pub ip: Ipv6Addr,
    /// The node's public key, hex.
    pub pubkey: String,
}

/// Asks the Mycelium API at `api` (`http://HOST:PORT`) for this node's
/// address: `GET /api/v1/admin`.
pub async fn node_info(api: &str) -> Result<NodeInfo> {
    node_info_within(api, API_TIMEOUT).await
}

async fn node_info_within(api: &str, timeout: Duration) -> Result<NodeInfo> {
    let fail = |e: String| Error::Address(format!("Mycelium API {api}: {e}"));
    let unsupported =
        || Error::Address(format!("{api:?}: only http:// API addresses are supported"));
    let uri: hyper::Uri = api.parse().map_err(|_| unsupported())?;
    // Any path in `api` is ignored: the admin endpoint is fixed.
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => a.clone(),
        _ => return Err(unsupported()),
    };
    let uri = hyper::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query("/api/v1/admin")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let req = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), API_MAX_BODY)
            .collect()
            .await
            .map_err(|e| fail(error_chain(&*e)))?
            .to_bytes();
        Ok::<_, Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| Error::Timeout(format!("Mycelium API {api}")))??;
    parse_admin_response(status, &body).map_err(fail)
}

/// An error with its causes: hyper's own text ("client error (Connect)")
/// leaves out why.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn parse_admin_response(status: StatusCode, body: &[u8]) -> std::result::Result<NodeInfo, String> {
    if status != StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    let body: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let field = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or(format!("no {k} in the answer"))
    };
    let ip: Ipv6Addr = field("nodeIp")?
        .parse()
        .map_err(|_| "nodeIp is not an IPv6 address".to_string())?;
    if !is_overlay(&ip) {
        return Err(format!("nodeIp {ip} is not in 400::/7"));
    }
    Ok(NodeInfo {
        subnet: field("nodeSubnet")?,
        ip,
        pubkey: field("nodePubkey")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn addresses_follow_the_rule() {
        for seed in 0u8..64 {
            let key = [seed; 32];
            let ip = address_of(&key);
            assert!(is_overlay(&ip), "{ip}");
            let mut raw = [0u8; 16];
            blake3::Hasher::new()
                .update(&key)
                .finalize_xof()
                .fill(&mut raw);
            let o = ip.octets();
            assert_eq!(o[0], 0x04 | (raw[0].count_ones() % 2) as u8);
            assert_eq!(o[1..], raw[1..]);
            assert_eq!(address_of(&key), ip, "deterministic");
        }
        // Both 400::/8 and 500::/8 occur.
        let firsts: std::collections::BTreeSet<u8> = (0u8..64)
            .map(|s| address_of(&[s; 32]).octets()[0])
            .collect();
        assert_eq!(firsts, [4u8, 5].into());
    }

    #[test]
    fn peers_by_key_or_address() {
        let hex: String = (0..32).map(|i| format!("{:02x}", i * 7)).collect();
        let key = parse_pubkey(&hex).unwrap();
        assert_eq!(key[1], 7);
        let a = resolve_peer(&format!("{hex}:7000")).unwrap();
        assert_eq!(a, SocketAddr::new(address_of(&key).into(), 7000));
        assert_eq!(resolve_peer("[400::1]:9").unwrap().port(), 9);
        assert!(parse_pubkey("abc").is_err());
        assert!(resolve_peer(&format!("{hex}:notaport")).is_err());
        // A key without a port, or one digit short, says so (no DNS lookup).
        let e = resolve_peer(&hex).unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
        let e = resolve_peer(&format!("{}:7000", &hex[1..]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("63 hex digits"), "{e}");
    }

    #[test]
    fn address_forms_are_checked_without_a_lookup() {
        for ok in [
            "127.0.0.1:7000",
            "[::1]:0",
            "[400::1]:65535",
            "node-1.example:80",
            "localhost:8080",
            "[fe80::1%2]:7000",
        ] {
            assert!(check_peer(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:", "bad port"),
            ("[::1]", "no port"),
            ("127.0.0.1:+1", "bad port"),
            ("[fe80::1%eth0]:7000", "zone"),
            ("[fe80::1%]:7000", "zone"),
            ("-a:7000", "not an IP address or a host name"),
            ("a-.b:7000", "not an IP address or a host name"),
            ("http://127.0.0.1:7000", "URL"),
            ("300.1.1.1:70", "not an IP address"),
            ("127.0.0.1:65536", "bad port"),
            ("127.0.0.1:-1", "bad port"),
            ("::1:7000", "brackets"),
            ("127.0.0.1:1,127.0.0.1:2", "is a list"),
            ("127.0.0.1:1, 127.0.0.1:2", "is a list"),
            ("127.0.0.1:1 127.0.0.1:2", "is a list"),
            ("[::g]:7000", "not an IPv6"),
            (":7000", "not an IP address or a host name"),
            ("a b:7000", "not an IP address or a host name"),
            ("a..b:7000", "not an IP address or a host name"),
        ] {
            let e = check_peer(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// A one-connection fake of the Mycelium API on loopback: answers the
    /// next request with `resp` as given and returns the request it read.
    async fn serve_once(l: &tokio::net::TcpListener, resp: String) -> String {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8(req).unwrap()
    }

    fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn admin_api_client_against_a_stub() {
        let key: [u8; 32] = [42; 32];
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let ip = address_of(&key);
        let body = format!(r#"{{"nodeSubnet":"{ip}/64","nodeIp":"{ip}","nodePubkey":"{hex}"}}"#);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = format!("http://{addr}");

        let (info, req) = tokio::join!(
            node_info(&api),
            serve_once(&listener, answer("200 OK", &body))
        );
        assert!(req.starts_with("GET /api/v1/admin HTTP/1.1\r\n"), "{req}");
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains(&format!("host: {addr}\r\n")), "{req}");
        assert!(lower.contains("accept: application/json\r\n"), "{req}");
        let info = info.unwrap();
        assert_eq!(
            info,
            NodeInfo {
                subnet: format!("{ip}/64"),
                ip,
                pubkey: hex.clone(),
            }
        );
        assert_eq!(address_of(&parse_pubkey(&info.pubkey).unwrap()), info.ip);

        // A chunked answer, and a path after the authority (ignored).
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let with_path = format!("{api}/ignored");
        let (got, req) = tokio::join!(node_info(&with_path), serve_once(&listener, chunked));
        assert!(req.starts_with("GET /api/v1/admin HTTP/1.1\r\n"), "{req}");
        assert_eq!(got.unwrap(), info);

        let (e, _) = tokio::join!(
            node_info(&api),
            serve_once(&listener, answer("500 Internal Server Error", "{}"))
        );
        let e = e.unwrap_err();
        assert!(matches!(e, Error::Address(_)), "{e:?}");
        assert!(
            e.to_string().contains("answered 500 Internal Server Error"),
            "{e}"
        );

        let (e, _) = tokio::join!(
            node_info(&api),
            serve_once(&listener, answer("200 OK", "not json"))
        );
        let e = e.unwrap_err();
        assert!(matches!(e, Error::Address(_)), "{e:?}");
        assert!(e.to_string().contains("body is not JSON"), "{e}");

        let (e, _) = tokio::join!(
            node_info(&api),
            serve_once(
                &listener,
                answer("200 OK", r#"{"nodeIp":"400::1","nodePubkey":"y"}"#)
            )
        );
        assert!(e.unwrap_err().to_string().contains("no nodeSubnet"));

        let (e, _) = tokio::join!(
            node_info(&api),
            serve_once(
                &listener,
                answer(
                    "200 OK",
                    r#"{"nodeSubnet":"x","nodeIp":"::1","nodePubkey":"y"}"#
                )
            )
        );
        assert!(e.unwrap_err().to_string().contains("400::/7"));
    }

    #[tokio::test]
    async fn admin_api_client_errors_without_an_answer() {
        // Accepted by the kernel (the backlog) but never answered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let e = node_info_within(&api, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e:?}");

        // Nothing listening: the refusal, with its cause.
        drop(listener);
        let e = node_info(&api).await.unwrap_err();
        assert!(matches!(e, Error::Address(_)), "{e:?}");
        assert!(e.to_string().contains(&api), "{e}");
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");

        for bad in ["https://127.0.0.1:8989", "127.0.0.1:8989", "http://"] {
            let e = node_info(bad).await.unwrap_err();
            assert!(e.to_string().contains("only http://"), "{bad}: {e}");
        }
    }
}
