//! SIP transports: the UDP socket and TCP connections (framed by
//! Content-Length, RFC 3261 §18.3). Received messages go to the core task
//! through a bounded channel, which is also the flood brake: when the core
//! falls behind, receive loops wait and the kernel drops datagrams instead
//! of memory growing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sip_proto::{frame, ConnId, Framing, Peer, Transmit, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// A message for the core task.
#[derive(Debug)]
pub struct Inbound {
    pub peer: Peer,
    pub data: Vec<u8>,
    pub kind: InboundKind,
}

/// What an [`Inbound`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundKind {
    /// A whole message.
    Message,
    /// The head of a stream message larger than the limit (513, then close).
    TooLarge,
    /// The head of a stream message whose Content-Length is not a number
    /// (negative, past 2^64): 400, then close (the stream cannot be framed).
    BadContentLength,
}

/// Limits on SIP TCP connections (descriptors are finite: calls, storage
/// and HTTP must keep working when a flood of idle connections arrives).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_total: usize,
    pub max_per_source: usize,
    pub idle: std::time::Duration,
}

/// Connection counts and refusals, for metrics.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub open: AtomicU64,
    pub refused_total_cap: AtomicU64,
    pub refused_source_cap: AtomicU64,
    pub closed_idle: AtomicU64,
    /// accept() failed for lack of descriptors (EMFILE/ENFILE).
    pub accept_no_descriptors: AtomicU64,
}

/// Outgoing side of every transport.
#[derive(Debug, Clone)]
pub struct Transports {
    udp: Option<Arc<UdpSocket>>,
    conns: Arc<Mutex<HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>>>,
    per_source: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    next_conn: Arc<AtomicU64>,
    inbox: mpsc::Sender<Inbound>,
    max_message: usize,
    limits: TcpLimits,
    pub stats: Arc<TcpStats>,
}

impl Transports {
    pub fn new(
        udp: Option<Arc<UdpSocket>>,
        inbox: mpsc::Sender<Inbound>,
        max_message: usize,
        limits: TcpLimits,
    ) -> Transports {
        Transports {
            udp,
            conns: Arc::new(Mutex::new(HashMap::new())),
            per_source: Arc::new(Mutex::new(HashMap::new())),
            next_conn: Arc::new(AtomicU64::new(1)),
            inbox,
            max_message,
            limits,
            stats: Arc::new(TcpStats::default()),
        }
    }

    /// Takes a place for a new connection from `ip`, or says which cap refuses it.
    fn admit(&self, ip: std::net::IpAddr) -> Result<(), &'static str> {
        let mut per = self.per_source.lock().expect("per-source lock");
        let open = self.conns.lock().expect("conns lock").len();
        if open >= self.limits.max_total {
            self.stats.refused_total_cap.fetch_add(1, Ordering::Relaxed);
            return Err("total");
        }
        let n = per.entry(ip).or_default();
        if *n >= self.limits.max_per_source {
            self.stats.refused_source_cap.fetch_add(1, Ordering::Relaxed);
            return Err("per-source");
        }
        *n += 1;
        Ok(())
    }

    fn release(&self, ip: std::net::IpAddr) {
        let mut per = self.per_source.lock().expect("per-source lock");
        if let Some(n) = per.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&ip);
            }
        }
    }

    /// Sends one message from the core. Never blocks the core.
    pub fn send(&self, t: Transmit) {
        match t.peer.transport {
            Transport::Udp => {
                let Some(sock) = &self.udp else { return };
                match sock.try_send_to(&t.data, t.dest) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            if let Err(e) = sock.send_to(&t.data, t.dest).await {
                                tracing::warn!(dest = %t.dest, error = %e, "SIP UDP send failed");
                            }
                        });
                    }
                    Err(e) => tracing::warn!(dest = %t.dest, error = %e, "SIP UDP send failed"),
                }
            }
            Transport::Tcp | Transport::Tls => {
                let live = t.peer.conn.and_then(|c| self.conns.lock().expect("conns lock").get(&c).cloned());
                match live {
                    Some(tx) if tx.send(t.data.clone()).is_ok() => {}
                    _ if t.peer.transport == Transport::Tls => {
                        // No client TLS identity to open one with: the peer reconnects.
                        tracing::warn!(dest = %t.dest, "SIP TLS connection gone before its message could be sent");
                    }
                    _ => {
                        // The connection is gone (RFC 3261 §18.1.1: open a new one).
                        let this = self.clone();
                        tokio::spawn(async move {
                            match TcpStream::connect(t.dest).await {
                                Ok(stream) => {
                                    let id = this.adopt(stream);
                                    if let Some(tx) = this.conns.lock().expect("conns lock").get(&id) {
                                        let _ = tx.send(t.data);
                                    }
                                }
                                Err(e) => tracing::warn!(dest = %t.dest, error = %e, "SIP TCP connect failed"),
                            }
                        });
                    }
                }
            }
        }
    }

    /// Runs the UDP receive loop.
    pub async fn run_udp(self, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            match sock.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let msg = Inbound { peer: Peer::udp(from), data: buf[..n].to_vec(), kind: InboundKind::Message };
                    if self.inbox.send(msg).await.is_err() {
                        return; // core gone: shutting down
                    }
                }
                // ICMP errors from earlier sends surface here on Linux; not fatal.
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive"),
            }
        }
    }

    /// Accepts TCP connections forever, within the caps: over a cap the
    /// connection is closed at once (the source's other connections and UDP
    /// keep working).
    pub async fn run_tcp(self, listener: TcpListener) {
        let mut last_warning = std::time::Instant::now() - std::time::Duration::from_secs(60);
        loop {
            match listener.accept().await {
                Ok((stream, from)) => {
                    if let Err(cap) = self.admit(from.ip()) {
                        if last_warning.elapsed() >= std::time::Duration::from_secs(10) {
                            tracing::warn!(peer = %from, cap, "SIP TCP connection refused: connection cap reached");
                            last_warning = std::time::Instant::now();
                        }
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.adopt_counted(stream, from.ip());
                }
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        self.stats.accept_no_descriptors.fetch_add(1, Ordering::Relaxed);
                        if last_warning.elapsed() >= std::time::Duration::from_secs(10) {
                            tracing::error!("SIP TCP accept: out of file descriptors (open-files limit reached)");
                            last_warning = std::time::Instant::now();
                        }
                    } else {
                        tracing::warn!(error = %e, "SIP TCP accept");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Accepts SIP over TLS forever, under the same caps as TCP: the
    /// handshake runs in its own task (10 s at most), then the connection
    /// is a SIP connection like any other; answers and in-dialog requests
    /// go back over it.
    /// Sources in `cert_from` must have presented a client certificate
    /// (the handshake verified it); a connection from one without is closed.
    pub async fn run_tls(self, listener: TcpListener, tls: super::tls::ServerTls, cert_from: Vec<ipnet::IpNet>) {
        let cert_from = Arc::new(cert_from);
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
                        self.stats.accept_no_descriptors.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, "SIP TLS accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(cap) = self.admit(from.ip()) {
                tracing::debug!(peer = %from, cap, "SIP TLS connection refused: connection cap reached");
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.stats.open.fetch_add(1, Ordering::Relaxed);
            let (this, acceptor, cert_from) = (self.clone(), tls.current(), cert_from.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await;
                let must_have_cert = cert_from.iter().any(|net| net.contains(&from.ip()));
                match handshake {
                    Ok(Ok(tls_stream)) if !must_have_cert || tls_stream.get_ref().1.peer_certificates().is_some() => {
                        this.adopt_stream(tls_stream, from, Transport::Tls, Some(from.ip()));
                    }
                    outcome => {
                        let why = match outcome {
                            Ok(Ok(_)) => "no client certificate from a source that must present one".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::warn!(peer = %from, error = %why, "refused a SIP TLS connection: handshake failed");
                        this.stats.open.fetch_sub(1, Ordering::Relaxed);
                        this.release(from.ip());
                    }
                }
            });
        }
    }

    /// An accepted connection that holds a place under the caps.
    fn adopt_counted(&self, stream: TcpStream, ip: std::net::IpAddr) -> ConnId {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.adopt_with(stream, Some(ip))
    }

    /// Registers a connection we opened and starts its reader and writer.
    fn adopt(&self, stream: TcpStream) -> ConnId {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.adopt_with(stream, None)
    }

    /// Registers a connection and starts its reader and writer; `counted`
    /// is the source whose per-source place it holds.
    fn adopt_with(&self, stream: TcpStream, counted: Option<std::net::IpAddr>) -> ConnId {
        let peer_addr = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.adopt_stream(stream, peer_addr, Transport::Tcp, counted)
    }

    /// Any byte stream (TCP, TLS over TCP) as a SIP connection.
    fn adopt_stream<S>(
        &self,
        stream: S,
        peer_addr: SocketAddr,
        transport: Transport,
        counted: Option<std::net::IpAddr>,
    ) -> ConnId
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let peer = Peer { transport, addr: peer_addr, conn: Some(id) };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.conns.lock().expect("conns lock").insert(id, tx.clone());
        let (mut reader, mut writer) = tokio::io::split(stream);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16 * 1024];
            let idle = this.limits.idle;
            'conn: loop {
                match tokio::time::timeout(idle, reader.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {
                        // Idle for too long (keepalives would have been read): close.
                        this.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(peer = %peer_addr, "closing an idle SIP TCP connection");
                        break;
                    }
                }
                loop {
                    match frame(&buf, this.max_message) {
                        Framing::Incomplete => break,
                        Framing::KeepAlive(n) => {
                            // RFC 5626 §3.5.1: answer a double CRLF ping with CRLF.
                            if n >= 4 && buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = tx.send(b"\r\n".to_vec());
                            }
                            buf.drain(..n);
                        }
                        Framing::Message(n) => {
                            let data: Vec<u8> = buf.drain(..n).collect();
                            if this.inbox.send(Inbound { peer, data, kind: InboundKind::Message }).await.is_err() {
                                break 'conn;
                            }
                        }
                        Framing::Invalid(e) => {
                            tracing::warn!(peer = %peer_addr, error = %e, "closing SIP TCP connection: unframeable stream");
                            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
                            if let Some(end) = head_end {
                                let head = buf[..end].to_vec();
                                let kind = match e {
                                    sip_proto::ParseError::ContentLength => InboundKind::BadContentLength,
                                    _ => InboundKind::TooLarge,
                                };
                                let _ = this.inbox.send(Inbound { peer, data: head, kind }).await;
                            }
                            // Give the core a moment to answer before the socket closes.
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            break 'conn;
                        }
                    }
                }
            }
            this.conns.lock().expect("conns lock").remove(&id);
            this.stats.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(ip) = counted {
                this.release(ip);
            }
        });
        id
    }
}
