//! SIP over TLS (issue 8): the handshake with a test CA, answers over the
//! same connection, a whole call (INVITE, ACK, BYE) recorded, a client
//! without the required certificate refused, and a certificate replaced
//! on disk used for the next connection after SIGHUP, without a restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::harness::{temp_dir, Node};

fn tls_addr(node: &Node) -> SocketAddr {
    let listen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.join("listen.json")).unwrap()).unwrap();
    listen["sip_tls"].as_str().expect("a SIP TLS listener").parse().unwrap()
}

/// A TLS client connection trusting `ca`, presenting `client` if given.
struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> std::io::Result<Client> {
        Client::connect_from("127.0.0.1".parse().unwrap(), addr, ca, client)
    }

    /// [`Client::connect`] from a chosen loopback address (127.0.0.0/8).
    fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> std::io::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(addr.ip().into())).unwrap();
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(local, 0).into())?;
        sock.connect(&addr.into())?;
        let tcp: TcpStream = sock.into();
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake now so a refusal shows here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client { tls })
    }

    fn server_cert(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Sends `msg`, then reads responses until one with `final_code` (or 5 s).
    fn exchange(&mut self, msg: &str, final_code: &str) -> String {
        self.tls.write_all(msg.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(final_code) && Instant::now() < deadline {
            match self.tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem).unwrap().next().unwrap().unwrap().to_vec()
}

fn options(local: &str, n: u32) -> String {
    format!(
        "OPTIONS sip:rec@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tls-{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=t{n}\r\nTo: <sip:rec@127.0.0.1>\r\nCall-ID: tls-options-{n}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn sip_over_tls_records_a_call_refuses_missing_client_certs_and_reloads_its_certificate() {
    let pki = temp_dir("sip-tls-pki");
    crate::cluster::make_pki(&pki, &["recorder", "sbc", "recorder-renewed"]);
    let (cert, key) = (pki.join("live.pem"), pki.join("live.key"));
    std::fs::copy(pki.join("recorder.pem"), &cert).unwrap();
    std::fs::copy(pki.join("recorder.key"), &key).unwrap();
    let ca = pki.join("ca.pem");
    let node = Node::start_with(
        "sip-tls",
        &[
            ("CALLVAULT_SIP__TLS", "127.0.0.1:0"),
            ("CALLVAULT_SIP__TLS_CERT", cert.to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_KEY", key.to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_CLIENT_CA", ca.to_str().unwrap()),
        ],
    );
    let addr = tls_addr(&node);
    let sbc = Some((pki.join("sbc.pem"), pki.join("sbc.key")));
    let sbc = sbc.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));

    // Without a client certificate the handshake fails; nothing is read.
    let refused = Client::connect(addr, &ca, None).and_then(|mut c| {
        c.tls.write_all(options("127.0.0.1:5999", 0).as_bytes())?;
        let mut b = [0u8; 64];
        match c.tls.read(&mut b)? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    });
    assert!(refused.is_err(), "a client without a certificate was served");

    // A whole call over one TLS connection: INVITE, ACK, BYE.
    let mut c = Client::connect(addr, &ca, sbc).unwrap();
    assert_eq!(c.server_cert(), der(&pki.join("recorder.pem")));
    let local = "127.0.0.1:5999";
    let sdp = "v=0\r\no=sbc 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=sendonly\r\n";
    let invite = format!(
        "INVITE sip:rec@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tls-inv\r\nMax-Forwards: 70\r\n\
         From: <sip:sbc@127.0.0.1>;tag=sbc1\r\nTo: <sip:rec@127.0.0.1>\r\nCall-ID: tls-call@127.0.0.1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:sbc@{local};transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let answer = c.exchange(&invite, "SIP/2.0 200");
    assert!(answer.contains("SIP/2.0 200 OK"), "{answer}");
    assert!(answer.contains("transport=tls"), "our Contact names TLS: {answer}");
    let ok = &answer[answer.find("SIP/2.0 200").unwrap()..];
    let to_line = ok.lines().find(|l| l.starts_with("To:")).unwrap();
    let to_tag = to_line.split("tag=").nth(1).unwrap().trim();
    let in_dialog = |method: &str, n: u32| {
        format!(
            "{method} sip:rec@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-tls-{method}{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:sbc@127.0.0.1>;tag=sbc1\r\nTo: <sip:rec@127.0.0.1>;tag={to_tag}\r\n\
             Call-ID: tls-call@127.0.0.1\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    c.tls.write_all(in_dialog("ACK", 1).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let bye = c.exchange(&in_dialog("BYE", 2), "SIP/2.0 200");
    assert!(bye.contains("SIP/2.0 200"), "{bye}");
    let rec = node.finished("tls-call@127.0.0.1");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert!(rec["source_addr"].as_str().unwrap().starts_with("tls:"), "{rec:#}");

    // The certificate renewed on disk is served after SIGHUP, without a restart;
    // the open connection keeps working.
    std::fs::copy(pki.join("recorder-renewed.pem"), &cert).unwrap();
    std::fs::copy(pki.join("recorder-renewed.key"), &key).unwrap();
    assert!(std::process::Command::new("kill").arg("-HUP").arg(node.pid().to_string()).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains("SIP TLS certificate and key reloaded") {
        assert!(Instant::now() < deadline, "no reload in the log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut renewed = Client::connect(addr, &ca, sbc).unwrap();
    assert_eq!(renewed.server_cert(), der(&pki.join("recorder-renewed.pem")));
    assert!(renewed.exchange(&options(local, 2), "SIP/2.0 200").contains("SIP/2.0 200 OK"));
    assert!(c.exchange(&options(local, 3), "SIP/2.0 200").contains("SIP/2.0 200 OK"), "the old connection still works");
    let _ = std::fs::remove_dir_all(pki);
}

/// Client certificates per source (issue 8): with `tls_client_cert_from`
/// only the listed sources must present one; another source connects
/// without. A call in progress keeps recording across SIGHUP.
#[test]
fn client_certificates_are_required_per_source_and_sighup_leaves_calls_recording() {
    let pki = temp_dir("sip-tls-per-source");
    crate::cluster::make_pki(&pki, &["recorder", "sbc"]);
    let ca = pki.join("ca.pem");
    let node = Node::start_with(
        "sip-tls-per-source",
        &[
            ("CALLVAULT_SIP__TLS", "127.0.0.1:0"),
            ("CALLVAULT_SIP__TLS_CERT", pki.join("recorder.pem").to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_KEY", pki.join("recorder.key").to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_CLIENT_CA", ca.to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_CLIENT_CERT_FROM", "[127.0.0.2/32]"),
        ],
    );
    let addr = tls_addr(&node);
    let sbc = (pki.join("sbc.pem"), pki.join("sbc.key"));
    let sbc = Some((sbc.0.as_path(), sbc.1.as_path()));
    let ping = |c: &mut Client, n: u32| c.exchange(&options("127.0.0.1:5999", n), "SIP/2.0 200");

    // 127.0.0.1 is not listed: served without a certificate.
    let mut open = Client::connect(addr, &ca, None).unwrap();
    assert!(ping(&mut open, 10).contains("SIP/2.0 200 OK"));
    // 127.0.0.2 is listed: without a certificate the connection is closed...
    let refused = Client::connect_from("127.0.0.2".parse().unwrap(), addr, &ca, None)
        .map(|mut c| ping(&mut c, 11))
        .unwrap_or_default();
    assert!(!refused.contains("SIP/2.0 200"), "a listed source without a certificate was served: {refused}");
    assert!(node.log().contains("no client certificate from a source that must present one"), "{}", node.log());
    // ...and with one it is served.
    let mut listed = Client::connect_from("127.0.0.2".parse().unwrap(), addr, &ca, sbc).unwrap();
    assert!(ping(&mut listed, 12).contains("SIP/2.0 200 OK"));

    // A call in progress over UDP while the node reloads (SIGHUP): it
    // records to the end, all of it.
    let child = crate::harness::call_bg(node.sip_udp, &["--duration", "3", "--tone-a", "440", "--tone-b", "1000"]);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(std::process::Command::new("kill").arg("-HUP").arg(node.pid().to_string()).status().unwrap().success());
    let s = crate::harness::finish_bg(child);
    assert_eq!(s["established"], 1, "{s:#}");
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state"], "completed", "{rec:#}");
    let d = rec["duration_ms"].as_u64().unwrap();
    assert!(d.abs_diff(3000) <= 60, "the whole call was recorded: {d} ms");
    node.audio(&rec).assert_tone(0, 440.0, 1000.0, 200, 2800);
    assert!(node.log().contains("SIP TLS certificate and key reloaded"), "{}", node.log());
    let _ = std::fs::remove_dir_all(pki);
}
