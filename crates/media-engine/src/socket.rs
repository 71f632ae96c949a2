//! Batched UDP I/O: `recvmmsg(2)` and `sendmmsg(2)`.
//!
//! The only `unsafe` in callvault lives here (cf. quinn-udp): the syscalls
//! take arrays of headers pointing into buffers this module owns. Buffers
//! are allocated once per batch object and reused for every call; pointers
//! are rebuilt before each syscall so moving the batch object is harmless.
#![allow(unsafe_code)] // FFI to recvmmsg/sendmmsg; invariants documented at each block

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Largest datagram kept whole; longer ones are flagged truncated.
pub const SLOT: usize = 2048;

/// Reusable buffers for receiving up to `capacity` datagrams in one call.
pub struct RecvBatch {
    data: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    addr: Vec<libc::sockaddr_storage>,
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("capacity", &self.hdr.len()).field("len", &self.len).finish()
    }
}

// SAFETY: the raw pointers inside iovec/mmsghdr only ever point into this
// struct's own buffers and are rebuilt before each use.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            data: vec![0; capacity * SLOT],
            // SAFETY: all-zero iovec/mmsghdr/sockaddr_storage are valid (null pointers, zero lengths).
            iov: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            hdr: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            addr: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdr.len()
    }

    /// Receives what is queued on `fd` without blocking. Returns the number
    /// of datagrams (0 when nothing was waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let cap = self.hdr.len();
        let base = self.data.as_mut_ptr();
        for i in 0..cap {
            // SAFETY: i * SLOT + SLOT <= data.len() by construction.
            self.iov[i] = libc::iovec { iov_base: unsafe { base.add(i * SLOT) }.cast(), iov_len: SLOT };
            let h = &mut self.hdr[i];
            h.msg_hdr.msg_name = (&mut self.addr[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdr holds `cap` initialised headers whose pointers target
        // live buffers of the advertised sizes; the kernel writes within them.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdr.as_mut_ptr(), cap as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            self.len = 0;
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.len = n as usize;
        Ok(self.len)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: payload, source, and
    /// whether it was longer than [`SLOT`] and cut.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        assert!(i < self.len);
        let h = &self.hdr[i];
        let len = (h.msg_len as usize).min(SLOT);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (&self.data[i * SLOT..i * SLOT + len], sockaddr_to_std(&self.addr[i]), truncated)
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: ss_family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let s: &mut libc::sockaddr_in = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let s: &mut libc::sockaddr_in6 = unsafe { &mut *(out as *mut libc::sockaddr_storage).cast() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reusable buffers for sending many datagrams (to many destinations) in
/// one `sendmmsg(2)` call: the load generator's pacing loop.
pub struct SendBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    addr: Vec<libc::sockaddr_storage>,
    addr_len: Vec<libc::socklen_t>,
    len: usize,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").field("capacity", &self.hdr.len()).field("len", &self.len).finish()
    }
}

// SAFETY: as for RecvBatch.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(capacity: usize) -> SendBatch {
        let capacity = capacity.max(1);
        SendBatch {
            data: vec![0; capacity * SLOT],
            lens: vec![0; capacity],
            // SAFETY: zeroed FFI structs are valid empty values.
            iov: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            hdr: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            addr: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            addr_len: vec![0; capacity],
            len: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len == self.hdr.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a datagram; `fill` writes it into the slot and returns its length.
    pub fn push(&mut self, dest: SocketAddr, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.is_full() {
            return false;
        }
        let i = self.len;
        let n = fill(&mut self.data[i * SLOT..(i + 1) * SLOT]).min(SLOT);
        self.lens[i] = n;
        self.addr_len[i] = std_to_sockaddr(dest, &mut self.addr[i]);
        self.len += 1;
        true
    }

    /// Sends everything queued on `fd` (blocking socket or not); returns
    /// how many datagrams the kernel took. The queue is cleared.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.data.as_mut_ptr();
        for i in 0..self.len {
            // SAFETY: slot i is within `data`.
            self.iov[i] = libc::iovec { iov_base: unsafe { base.add(i * SLOT) }.cast(), iov_len: self.lens[i] };
            let h = &mut self.hdr[i];
            h.msg_hdr.msg_name = (&mut self.addr[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addr_len[i];
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < self.len {
            // SAFETY: headers [sent, len) are initialised and point into live buffers.
            let n =
                unsafe { libc::sendmmsg(fd, self.hdr.as_mut_ptr().add(sent), (self.len - sent) as libc::c_uint, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.len = 0;
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            if n == 0 {
                break;
            }
            sent += n as usize;
        }
        self.len = 0;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batches_roundtrip_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = SendBatch::new(8);
        for i in 0..5u8 {
            assert!(out.push(rx.local_addr().unwrap(), |buf| {
                buf[..3].copy_from_slice(&[i, i, i]);
                3
            }));
        }
        assert_eq!(out.send(tx.as_raw_fd()).unwrap(), 5);
        let mut batch = RecvBatch::new(4);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 4);
        let (data, from, truncated) = batch.get(3);
        assert_eq!((data, from, truncated), (&[3u8, 3, 3][..], Some(tx.local_addr().unwrap()), false));
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0, "empty queue is not an error");
    }
}
