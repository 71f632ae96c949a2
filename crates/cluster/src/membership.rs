//! Who is in the cluster and who is alive, as data.
//!
//! Every node asks every peer for its [`NodeStatus`] on a short interval
//! (a heartbeat over the authenticated inter-node API); a peer is alive
//! while its last answer is younger than `dead_after`. Peers come from the
//! configuration (seed addresses) and from nodes that announce themselves,
//! so a node can join a running cluster without every other node's
//! configuration changing. A status carries a *generation* (the process's
//! start time): a restarted peer is a new incarnation, and a late answer
//! from an old one is ignored.
//!
//! The job leader is a pure function of this view ([`Membership::leader`]):
//! the best candidate (lowest priority number, then lowest node id) among
//! the nodes alive and ready, where a node counts only once it has been
//! alive for `hold_down` — so a node that comes back does not take the jobs
//! away at once, and a flapping one never holds them. Nodes that can all
//! talk to each other see the same candidates and pick the same leader.
//! When the leader dies the next one takes over once it has been missed
//! for `dead_after`: takeover takes at most `dead_after` plus one interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use model::NodeId;
use serde::{Deserialize, Serialize};

/// Load figures a node publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub active_calls: u64,
    /// Call limit (0 = none configured).
    pub capacity: u64,
    pub free_disk_mib: u64,
}

/// What a node tells its peers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub site: String,
    /// 1 is preferred (as in DNS SRV): the lowest number leads the jobs.
    pub priority: u32,
    pub version: String,
    /// Start time of the process (ms): a new one per restart.
    pub generation: u64,
    /// Where peers reach this node's cluster API.
    pub url: String,
    /// Takes calls and serves the cluster (not draining, storage healthy).
    pub ready: bool,
    pub load: Load,
    /// Digest of the cluster settings this node holds (see [`crate::settings`]).
    pub settings_digest: String,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub url: String,
    pub status: Option<NodeStatus>,
    pub alive: bool,
    /// Milliseconds since the last answer, if any.
    pub last_seen_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct Peer {
    status: Option<NodeStatus>,
    last_seen: Option<Instant>,
    alive_since: Option<Instant>,
    last_error: Option<String>,
}

/// Timing of membership.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A peer not heard from for this long is dead.
    pub dead_after: Duration,
    /// A node must have been alive this long to lead.
    pub hold_down: Duration,
}

/// The peer table of one node. See the module docs.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    started: Instant,
    timing: Timing,
    /// By URL: seeds are known by address before their id is.
    peers: BTreeMap<String, Peer>,
}

impl Membership {
    pub fn new(me: NodeId, started: Instant, timing: Timing) -> Membership {
        Membership { me, started, timing, peers: BTreeMap::new() }
    }

    /// A peer to ask (from the configuration, or one that announced itself).
    /// Returns true when it is new.
    pub fn add(&mut self, url: &str) -> bool {
        if self.peers.contains_key(url) {
            return false;
        }
        self.peers.insert(url.to_owned(), Peer { status: None, last_seen: None, alive_since: None, last_error: None });
        true
    }

    /// Forgets a peer (an operator removed it).
    pub fn remove(&mut self, url: &str) -> bool {
        self.peers.remove(url).is_some()
    }

    pub fn urls(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    fn is_alive(&self, p: &Peer, now: Instant) -> bool {
        p.last_seen.is_some_and(|t| now.saturating_duration_since(t) < self.timing.dead_after)
    }

    /// A heartbeat to `url` answered with `status`. Answers naming this
    /// node itself (a seed list that includes our own address) are ignored;
    /// an older generation of the same node is a late answer and ignored.
    pub fn heard(&mut self, now: Instant, url: &str, status: NodeStatus) {
        if status.node == self.me {
            self.peers.remove(url);
            return;
        }
        // One entry per node: the same node reached under another address keeps the newest.
        let dup: Vec<String> = self
            .peers
            .iter()
            .filter(|(u, p)| *u != url && p.status.as_ref().is_some_and(|s| s.node == status.node))
            .map(|(u, _)| u.clone())
            .collect();
        for u in dup {
            self.peers.remove(&u);
        }
        let dead_after = self.timing.dead_after;
        let peer = self.peers.entry(url.to_owned()).or_insert(Peer {
            status: None,
            last_seen: None,
            alive_since: None,
            last_error: None,
        });
        if let Some(old) = &peer.status {
            if old.node == status.node && old.generation > status.generation {
                return;
            }
        }
        let was_alive = peer.last_seen.is_some_and(|t| now.saturating_duration_since(t) < dead_after);
        let same_incarnation =
            peer.status.as_ref().is_some_and(|s| s.node == status.node && s.generation == status.generation);
        if !was_alive || !same_incarnation {
            peer.alive_since = Some(now);
        }
        peer.status = Some(status);
        peer.last_seen = Some(now);
        peer.last_error = None;
    }

    /// A heartbeat to `url` failed.
    pub fn failed(&mut self, url: &str, error: String) {
        if let Some(p) = self.peers.get_mut(url) {
            p.last_error = Some(error);
        }
    }

    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(url, p)| PeerView {
                url: url.clone(),
                status: p.status.clone(),
                alive: self.is_alive(p, now),
                last_seen_ms: p.last_seen.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                last_error: p.last_error.clone(),
            })
            .collect()
    }

    /// Statuses of the peers alive now.
    pub fn alive(&self, now: Instant) -> Vec<&NodeStatus> {
        self.peers.values().filter(|p| self.is_alive(p, now)).filter_map(|p| p.status.as_ref()).collect()
    }

    /// The URL of a live peer by node id.
    pub fn url_of(&self, now: Instant, node: &NodeId) -> Option<String> {
        self.peers
            .iter()
            .find(|(_, p)| self.is_alive(p, now) && p.status.as_ref().is_some_and(|s| &s.node == node))
            .map(|(u, _)| u.clone())
    }

    /// The node that should hold the maintenance lease now, as this node
    /// sees it (`me` is this node's own status). `None` while no node
    /// qualifies (e.g. everyone started less than `hold_down` ago).
    pub fn leader(&self, now: Instant, me: &NodeStatus) -> Option<NodeId> {
        let held = |since: Instant| now.saturating_duration_since(since) >= self.timing.hold_down;
        let mut candidates: Vec<(u32, &NodeId)> = Vec::new();
        if me.ready && held(self.started) {
            candidates.push((me.priority, &me.node));
        }
        for p in self.peers.values() {
            if !self.is_alive(p, now) {
                continue;
            }
            if let (Some(s), Some(since)) = (&p.status, p.alive_since) {
                if s.ready && held(since) {
                    candidates.push((s.priority, &s.node));
                }
            }
        }
        candidates.into_iter().min().map(|(_, n)| n.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: &str, priority: u32, generation: u64) -> NodeStatus {
        NodeStatus {
            node: NodeId(node.into()),
            site: "dc1".into(),
            priority,
            version: "test".into(),
            generation,
            url: format!("http://{node}"),
            ready: true,
            load: Load::default(),
            settings_digest: String::new(),
        }
    }

    const TIMING: Timing = Timing { dead_after: Duration::from_secs(6), hold_down: Duration::from_secs(10) };

    /// Three nodes beat every 2 s on virtual time; each picks a leader.
    struct Sim {
        t0: Instant,
        nodes: Vec<(Membership, NodeStatus, bool)>,
    }

    impl Sim {
        fn new(priorities: &[(&str, u32)]) -> Sim {
            let t0 = Instant::now();
            let nodes = priorities
                .iter()
                .map(|(n, p)| {
                    let mut m = Membership::new(NodeId((*n).into()), t0, TIMING);
                    for (other, _) in priorities {
                        m.add(&format!("http://{other}"));
                    }
                    (m, status(n, *p, 1), true)
                })
                .collect();
            Sim { t0, nodes }
        }

        /// Runs heartbeats from `from` to `to` seconds; `up(i, t)` says
        /// whether node i runs at time t.
        fn run(&mut self, from: u64, to: u64, up: impl Fn(usize, u64) -> bool) -> Vec<Vec<Option<NodeId>>> {
            let mut leaders = Vec::new();
            for t in (from..to).step_by(2) {
                let now = self.t0 + Duration::from_secs(t);
                let statuses: Vec<NodeStatus> = self.nodes.iter().map(|n| n.1.clone()).collect();
                for i in 0..self.nodes.len() {
                    if !up(i, t) {
                        continue;
                    }
                    for (j, st) in statuses.iter().enumerate() {
                        let url = format!("http://{}", st.node);
                        if up(j, t) {
                            self.nodes[i].0.heard(now, &url, st.clone());
                        } else {
                            self.nodes[i].0.failed(&url, "connection refused".into());
                        }
                    }
                }
                leaders.push(
                    (0..self.nodes.len())
                        .map(|i| up(i, t).then(|| self.nodes[i].0.leader(now, &self.nodes[i].1)).flatten())
                        .collect(),
                );
            }
            leaders
        }
    }

    fn id(n: &str) -> Option<NodeId> {
        Some(NodeId(n.into()))
    }

    #[test]
    fn all_agree_on_the_preferred_node_after_the_hold_down() {
        let mut sim = Sim::new(&[("a", 2), ("b", 1), ("c", 3)]);
        let rounds = sim.run(0, 30, |_, _| true);
        assert!(rounds[0].iter().all(Option::is_none), "nobody leads before the hold-down: {:?}", rounds[0]);
        for r in &rounds[6..] {
            assert_eq!(r, &vec![id("b"), id("b"), id("b")], "one leader, the same everywhere");
        }
        assert!(sim.nodes[0].0.view(sim.t0 + Duration::from_secs(28)).iter().all(|p| p.alive));
        assert_eq!(sim.nodes[0].0.urls().len(), 2, "the node's own address was dropped from its seeds");
    }

    #[test]
    fn takeover_within_dead_after_and_no_preemption_before_the_hold_down() {
        let mut sim = Sim::new(&[("a", 2), ("b", 1), ("c", 3)]);
        sim.run(0, 30, |_, _| true);
        // b dies at t=30: a takes over once b is missed for dead_after (6 s).
        let rounds = sim.run(30, 60, |i, _| i != 1);
        let first_a = rounds.iter().position(|r| r[0] == id("a")).expect("a took over");
        assert!(first_a * 2 <= 6 + 2, "takeover after {} s", first_a * 2);
        for r in &rounds[first_a..] {
            assert_eq!((r[0].clone(), r[2].clone()), (id("a"), id("a")));
        }
        // b comes back (new generation) at t=60: a keeps the lease for the hold-down, then hands it back.
        sim.nodes[1].1.generation = 2;
        sim.nodes[1].0 = Membership::new(NodeId("b".into()), sim.t0 + Duration::from_secs(60), TIMING);
        for other in ["a", "c"] {
            sim.nodes[1].0.add(&format!("http://{other}"));
        }
        let rounds = sim.run(60, 90, |_, _| true);
        assert_eq!(rounds[0][0], id("a"), "no preemption at once");
        let back = rounds.iter().position(|r| r.iter().all(|l| *l == id("b"))).expect("b leads again");
        assert!(back * 2 >= 10, "hold-down respected: {} s", back * 2);
        for r in &rounds {
            let distinct: std::collections::BTreeSet<_> = r.iter().flatten().collect();
            assert!(distinct.len() <= 2, "at most the old and the new leader during a handover: {r:?}");
        }
    }

    #[test]
    fn a_late_answer_from_an_old_incarnation_is_ignored_and_unready_nodes_do_not_lead() {
        let t0 = Instant::now();
        let mut m = Membership::new(NodeId("a".into()), t0, TIMING);
        let mut me = status("a", 5, 1);
        m.heard(t0, "http://b", status("b", 1, 7));
        m.heard(t0 + Duration::from_secs(1), "http://b", status("b", 1, 6));
        assert_eq!(m.alive(t0 + Duration::from_secs(1))[0].generation, 7);
        // Heard every 2 s for 12 s: past the hold-down, b leads.
        for s in (2..=12).step_by(2) {
            m.heard(t0 + Duration::from_secs(s), "http://b", status("b", 1, 7));
        }
        let later = t0 + Duration::from_secs(12);
        assert_eq!(m.leader(later, &me), id("b"));
        let mut b = status("b", 1, 7);
        b.ready = false;
        m.heard(later, "http://b", b);
        assert_eq!(m.leader(later, &me), id("a"), "an unready node does not lead");
        me.ready = false;
        assert_eq!(m.leader(later, &me), None);
        assert_eq!(m.url_of(later, &NodeId("b".into())).as_deref(), Some("http://b"));
    }
}
