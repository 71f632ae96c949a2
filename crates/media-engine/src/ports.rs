//! The RTP port range. Allocation binds both sockets (RTP on an even port,
//! RTCP on the next) so a port the recorder answers with is already open;
//! the engine takes the sockets when the stream is added.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use media_control::{MediaPort, NoPort, PortAllocator};
use socket2::{Domain, Protocol, Socket, Type};

/// Bound sockets waiting for the engine, by RTP port.
pub type PendingSockets = Arc<Mutex<HashMap<u16, (UdpSocket, UdpSocket)>>>;

/// Allocates port pairs from `[first, last]`, round-robin so a port just
/// released is not handed out again at once (late packets of the old call
/// must not land in a new one).
#[derive(Debug)]
pub struct UdpPortPool {
    bind_ip: IpAddr,
    first: u16,
    pairs: u16,
    cursor: u16,
    in_use: Vec<bool>,
    recv_buffer: usize,
    pending: PendingSockets,
}

impl UdpPortPool {
    pub fn new(bind_ip: IpAddr, first: u16, last: u16, recv_buffer: usize) -> UdpPortPool {
        let first = first + first % 2;
        let pairs = (last.saturating_sub(first) / 2).max(1);
        UdpPortPool {
            bind_ip,
            first,
            pairs,
            cursor: 0,
            in_use: vec![false; pairs as usize],
            recv_buffer,
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The sockets bound for allocated ports, for the engine to take.
    pub fn pending(&self) -> PendingSockets {
        self.pending.clone()
    }

    fn bind(&self, port: u16) -> std::io::Result<UdpSocket> {
        let addr = SocketAddr::new(self.bind_ip, port);
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_nonblocking(true)?;
        if self.recv_buffer > 0 {
            s.set_recv_buffer_size(self.recv_buffer)?;
        }
        s.bind(&addr.into())?;
        Ok(s.into())
    }
}

impl PortAllocator for UdpPortPool {
    fn allocate(&mut self) -> Result<MediaPort, NoPort> {
        let out_of_descriptors =
            |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
        for _ in 0..self.pairs {
            let slot = self.cursor;
            self.cursor = (self.cursor + 1) % self.pairs;
            if self.in_use[slot as usize] {
                continue;
            }
            let rtp = self.first + 2 * slot;
            // A port held by another program is skipped, not fatal; a lack
            // of descriptors ends the search (every other port fails too).
            let rtp_sock = match self.bind(rtp) {
                Ok(s) => s,
                Err(e) if out_of_descriptors(&e) => return Err(NoPort::OutOfDescriptors),
                Err(_) => continue,
            };
            let rtcp_sock = match self.bind(rtp + 1) {
                Ok(s) => s,
                Err(e) if out_of_descriptors(&e) => return Err(NoPort::OutOfDescriptors),
                Err(_) => continue,
            };
            self.in_use[slot as usize] = true;
            self.pending.lock().expect("pending lock").insert(rtp, (rtp_sock, rtcp_sock));
            return Ok(MediaPort { rtp, rtcp: rtp + 1 });
        }
        Err(NoPort::RangeExhausted)
    }

    fn in_use(&self) -> usize {
        self.in_use.iter().filter(|u| **u).count()
    }

    fn capacity(&self) -> usize {
        self.pairs as usize
    }

    fn release(&mut self, port: MediaPort) {
        if port.rtp >= self.first {
            let slot = ((port.rtp - self.first) / 2) as usize;
            if slot < self.in_use.len() {
                self.in_use[slot] = false;
            }
        }
        // If the engine never took them (call refused), close them now.
        self.pending.lock().expect("pending lock").remove(&port.rtp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_bound_pairs_and_skips_taken_ports() {
        let squatter = UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = squatter.local_addr().unwrap().port();
        let first = taken - taken % 2;
        let mut pool = UdpPortPool::new("127.0.0.1".parse().unwrap(), first, first + 8, 0);
        let a = pool.allocate().unwrap();
        assert_ne!(a.rtp, first, "the squatted pair is skipped");
        assert_eq!(a.rtcp, a.rtp + 1);
        assert!(pool.pending().lock().unwrap().contains_key(&a.rtp));
        assert_eq!(pool.in_use(), 1);
        pool.release(a);
        assert_eq!(pool.in_use(), 0);
        assert!(pool.pending().lock().unwrap().is_empty());
    }
}
