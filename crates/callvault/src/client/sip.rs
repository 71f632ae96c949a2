//! One SIP dialog of the test client (a UAC leg): its own UDP socket or TCP
//! connection (one connection per call, as SBCs do), a transaction layer
//! from `sip-proto`, and just enough dialog state to send ACK and BYE and
//! to answer a BYE from the recorder.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use sip_proto::{
    frame, ConnId, Endpoint, Event, Framing, HeaderAccess, Method, Output, Peer, Request, Response, StatusCode,
    TimerConfig, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

enum Io {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, buf: Vec<u8> },
}

/// What [`Leg::pump`] stopped for.
enum Pumped {
    Deadline,
    /// The recorder sent BYE (already answered 200).
    RemoteBye,
    Event(Event),
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Deadline,
    /// The recorder sent BYE (already answered 200).
    RemoteBye,
}

pub struct Leg {
    ep: Endpoint,
    io: Io,
    peer: Peer,
    local: SocketAddr,
    pub call_id: String,
    local_tag: String,
    from_value: String,
    to_value: String,
    cseq: u32,
    remote_target: Option<String>,
    request_uri: String,
    pub remote_bye: bool,
}

impl Leg {
    pub async fn connect(target: SocketAddr, transport: Transport, local_ip: std::net::IpAddr) -> anyhow::Result<Leg> {
        let mut ep = Endpoint::new(TimerConfig::default());
        let (io, local, peer) = match transport {
            Transport::Udp => {
                let sock = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
                let local = sock.local_addr()?;
                (Io::Udp(sock), local, Peer::udp(target))
            }
            _ => {
                let stream = TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                let local = stream.local_addr()?;
                (
                    Io::Tcp { stream, buf: Vec::new() },
                    local,
                    Peer { transport: Transport::Tcp, addr: target, conn: Some(ConnId(1)) },
                )
            }
        };
        let call_id = format!("{}@callvault-client", ep.new_token(20));
        let local_tag = ep.new_token(10);
        Ok(Leg {
            ep,
            io,
            peer,
            local,
            call_id,
            local_tag,
            from_value: String::new(),
            to_value: String::new(),
            cseq: 0,
            remote_target: None,
            request_uri: format!("sip:srs@{target}"),
            remote_bye: false,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets the From (without tag) and To headers of the dialog.
    pub fn set_parties(&mut self, from: &str, to: &str) {
        self.from_value = format!("{from};tag={}", self.local_tag);
        self.to_value = to.to_owned();
    }

    fn transport_name(&self) -> &'static str {
        self.peer.transport.as_str()
    }

    /// A request in this dialog with fresh Via/branch and the next CSeq.
    pub fn request(&mut self, method: Method, extra: &[(&str, String)], body: Option<(&str, Vec<u8>)>) -> Request {
        if method != Method::Ack {
            self.cseq += 1;
        }
        let uri = self.remote_target.clone().unwrap_or_else(|| self.request_uri.clone());
        let mut r = Request::new(method.clone(), uri);
        let branch = self.ep.new_branch();
        r.headers.push("Via", format!("SIP/2.0/{} {};branch={branch};rport", self.transport_name(), self.local));
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", self.from_value.clone());
        r.headers.push("To", self.to_value.clone());
        r.headers.push("Call-ID", self.call_id.clone());
        r.headers.push("CSeq", format!("{} {}", self.cseq.max(1), method));
        r.headers.push(
            "Contact",
            format!("<sip:callvault-client@{};transport={}>", self.local, self.transport_name().to_ascii_lowercase()),
        );
        r.headers.push("User-Agent", concat!("callvault-call/", env!("CARGO_PKG_VERSION")));
        for (n, v) in extra {
            r.headers.push(*n, v.clone());
        }
        if let Some((ct, b)) = body {
            r.headers.push("Content-Type", ct);
            r.body = b;
        }
        r
    }

    async fn send_bytes(&mut self, data: &[u8], dest: SocketAddr) -> anyhow::Result<()> {
        match &mut self.io {
            Io::Udp(s) => {
                s.send_to(data, dest).await?;
            }
            Io::Tcp { stream, .. } => stream.write_all(data).await?,
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        match &mut self.io {
            Io::Udp(s) => {
                let mut buf = vec![0u8; 65_535];
                let (n, _) = s.recv_from(&mut buf).await?;
                buf.truncate(n);
                Ok(buf)
            }
            Io::Tcp { stream, buf } => loop {
                match frame(buf, 1 << 20) {
                    Framing::Message(n) => return Ok(buf.drain(..n).collect()),
                    Framing::KeepAlive(n) => {
                        buf.drain(..n);
                    }
                    Framing::Invalid(e) => bail!("unframeable stream from the recorder: {e}"),
                    Framing::Incomplete => {
                        let mut chunk = [0u8; 8192];
                        let n = stream.read(&mut chunk).await?;
                        if n == 0 {
                            bail!("the recorder closed the TCP connection");
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            },
        }
    }

    /// Drives the leg until an event for the caller or `deadline`.
    async fn pump(&mut self, deadline: Option<Instant>) -> anyhow::Result<Pumped> {
        loop {
            while let Some(o) = self.ep.poll_output() {
                match o {
                    Output::Transmit(t) => self.send_bytes(&t.data, t.dest).await?,
                    Output::Event(Event::Request { tx, request, .. }) => {
                        let status = match request.method {
                            Method::Bye => {
                                self.remote_bye = true;
                                StatusCode::OK
                            }
                            Method::Options | Method::Info | Method::Update => StatusCode::OK,
                            _ => StatusCode::NOT_IMPLEMENTED,
                        };
                        let resp = Response::to_request(&request, status, status.default_reason(), None);
                        self.ep.respond(Instant::now(), tx, resp);
                        if request.method == Method::Bye {
                            return Ok(Pumped::RemoteBye);
                        }
                    }
                    Output::Event(e) => return Ok(Pumped::Event(e)),
                }
            }
            let timer = self.ep.poll_timeout();
            let wake = match (timer, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(tokio::time::Instant::from_std(w)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                data = self.recv() => {
                    let data = data?;
                    self.ep.handle_message(Instant::now(), self.peer, &data);
                }
                _ = sleep => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Ok(Pumped::Deadline);
                    }
                    self.ep.handle_timeout(now);
                }
            }
        }
    }

    /// Sends `req` and waits for its final response (provisionals skipped).
    pub async fn transact(&mut self, req: Request, limit: Duration) -> anyhow::Result<Response> {
        let id = self.ep.send_request(Instant::now(), self.peer, req).map_err(|e| anyhow!("{e}"))?;
        let deadline = Instant::now() + limit;
        loop {
            match self.pump(Some(deadline)).await? {
                Pumped::Deadline => bail!("no final response within {limit:?}"),
                Pumped::Event(Event::Response { tx, response }) if tx == id => {
                    if response.status.is_final() {
                        return Ok(response);
                    }
                }
                Pumped::Event(Event::RequestTimeout { tx }) if tx == id => bail!("request timed out (no response)"),
                Pumped::Event(_) | Pumped::RemoteBye => {}
            }
        }
    }

    /// Takes the dialog state from a 2xx to our INVITE.
    pub fn confirm(&mut self, ok: &Response) {
        if let Some(to) = ok.headers.get("To") {
            self.to_value = to.to_owned();
        }
        self.remote_target = ok.contact().map(|c| c.uri.to_string());
    }

    /// ACK for a 2xx (sent directly: it is not a transaction).
    pub async fn ack(&mut self, invite_cseq: u32, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<()> {
        let mut ack = self.request(Method::Ack, &[], body);
        ack.headers.set("CSeq", format!("{invite_cseq} ACK"));
        let data = ack.to_bytes();
        let dest = self.peer.addr;
        self.send_bytes(&data, dest).await
    }

    pub fn cseq(&self) -> u32 {
        self.cseq
    }

    /// Waits until `deadline`, answering requests; stops early on a BYE.
    pub async fn wait(&mut self, deadline: Instant) -> anyhow::Result<Wake> {
        loop {
            if self.remote_bye {
                return Ok(Wake::RemoteBye);
            }
            match self.pump(Some(deadline)).await? {
                Pumped::Deadline => return Ok(Wake::Deadline),
                Pumped::RemoteBye => return Ok(Wake::RemoteBye),
                Pumped::Event(_) => {}
            }
        }
    }
}
