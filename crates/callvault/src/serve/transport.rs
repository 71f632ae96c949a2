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
    /// The head of a message larger than the limit (answer 513, then close).
    pub oversized: bool,
}

/// Outgoing side of every transport.
#[derive(Debug, Clone)]
pub struct Transports {
    udp: Option<Arc<UdpSocket>>,
    conns: Arc<Mutex<HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>>>,
    next_conn: Arc<AtomicU64>,
    inbox: mpsc::Sender<Inbound>,
    max_message: usize,
}

impl Transports {
    pub fn new(udp: Option<Arc<UdpSocket>>, inbox: mpsc::Sender<Inbound>, max_message: usize) -> Transports {
        Transports {
            udp,
            conns: Arc::new(Mutex::new(HashMap::new())),
            next_conn: Arc::new(AtomicU64::new(1)),
            inbox,
            max_message,
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
                    let msg = Inbound { peer: Peer::udp(from), data: buf[..n].to_vec(), oversized: false };
                    if self.inbox.send(msg).await.is_err() {
                        return; // core gone: shutting down
                    }
                }
                // ICMP errors from earlier sends surface here on Linux; not fatal.
                Err(e) => tracing::debug!(error = %e, "SIP UDP receive"),
            }
        }
    }

    /// Accepts TCP connections forever.
    pub async fn run_tcp(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    self.adopt(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SIP TCP accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Registers a connection and starts its reader and writer.
    fn adopt(&self, stream: TcpStream) -> ConnId {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let peer_addr = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer = Peer { transport: Transport::Tcp, addr: peer_addr, conn: Some(id) };
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.conns.lock().expect("conns lock").insert(id, tx.clone());
        let (mut reader, mut writer) = stream.into_split();
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
            'conn: loop {
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
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
                            if this.inbox.send(Inbound { peer, data, oversized: false }).await.is_err() {
                                break 'conn;
                            }
                        }
                        Framing::Invalid(e) => {
                            tracing::warn!(peer = %peer_addr, error = %e, "closing SIP TCP connection: unframeable stream");
                            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
                            if let Some(end) = head_end {
                                let head = buf[..end].to_vec();
                                let _ = this.inbox.send(Inbound { peer, data: head, oversized: true }).await;
                            }
                            // Give the core a moment to answer before the socket closes.
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            break 'conn;
                        }
                    }
                }
            }
            this.conns.lock().expect("conns lock").remove(&id);
        });
        id
    }
}
