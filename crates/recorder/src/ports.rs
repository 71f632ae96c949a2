//! Media port allocation, behind a trait so the core stays free of sockets.
//! The real allocator (in the media engine) binds the UDP sockets when it
//! hands out a port, so a port the core answers with is already open.

/// An RTP port and its RTCP companion (RTP + 1, RFC 3550 §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaPort {
    pub rtp: u16,
    pub rtcp: u16,
}

pub trait PortAllocator: Send {
    /// A free port pair, already bound; `None` when the range is exhausted.
    fn allocate(&mut self) -> Option<MediaPort>;
    /// Returns a pair; its sockets close when the media engine drops them.
    fn release(&mut self, port: MediaPort);
}

/// An allocator over a port range that only keeps book (no sockets), for
/// tests of the core.
#[derive(Debug, Clone)]
pub struct BookkeepingAllocator {
    free: Vec<u16>,
}

impl BookkeepingAllocator {
    pub fn new(first: u16, pairs: u16) -> BookkeepingAllocator {
        BookkeepingAllocator { free: (0..pairs).rev().map(|i| first + 2 * i).collect() }
    }
}

impl PortAllocator for BookkeepingAllocator {
    fn allocate(&mut self) -> Option<MediaPort> {
        self.free.pop().map(|rtp| MediaPort { rtp, rtcp: rtp + 1 })
    }

    fn release(&mut self, port: MediaPort) {
        self.free.push(port.rtp);
    }
}
