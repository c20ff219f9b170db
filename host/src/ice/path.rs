//! One peer's path through NAT, sans IO: an ICE agent (`is`, str0m's) over this node's
//! candidates — host addresses, the server-reflexive address a STUN server saw, a TURN
//! relay — and the peer's, signalled as SDP candidate strings. What comes out: STUN
//! packets to send (from which local address, to where), and the selected pair: direct
//! when it runs from one of our own or reflexive addresses, relayed when it runs
//! through our TURN allocation. ICE keeps checking, so a relayed path gives way to a
//! direct one when that starts to work.

use std::net::SocketAddr;
use std::time::Instant;

use is::stun::{StunMessage, StunPacket};
use is::{Candidate, IceAgent, IceAgentEvent, IceConnectionState, IceCreds, Protocol};

/// This node's side of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// An address of one of our interfaces (the ICE socket's).
    Host(SocketAddr),
    /// What a STUN server saw of `base` (the NAT's public side).
    Reflexive { addr: SocketAddr, base: SocketAddr },
    /// A TURN allocation made from `base`.
    Relayed { addr: SocketAddr, base: SocketAddr },
}

/// How the selected path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Relayed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relayed => "relayed",
        }
    }
}

/// The pair to send WireGuard's packets on: from `local` (an address of ours, or our
/// relay), to `remote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send on this pair from now on (it may change: always use the latest).
    Selected(Selected),
    /// Checks stopped getting answers; the last pair may be dead.
    Disconnected,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("candidate {0:?}: {1}")]
    Candidate(String, String),
}

/// Candidates a path takes from the peer, at most (each one costs checks).
pub const MAX_REMOTE_CANDIDATES: usize = 32;

pub struct Path {
    agent: IceAgent,
    relays: Vec<SocketAddr>,
    /// The peer's relayed candidates: a pair to one of them runs through its relay.
    remote_relays: Vec<SocketAddr>,
    remotes: usize,
    selected: Option<Selected>,
    events: std::collections::VecDeque<Event>,
}

impl Path {
    /// A path; the controlling side nominates (say, the node with the smaller ID).
    pub fn new(controlling: bool) -> Path {
        let mut agent = IceAgent::new(IceCreds::new());
        agent.set_controlling(controlling);
        agent.set_max_candidate_pairs(100);
        Path {
            agent,
            relays: Vec::new(),
            remote_relays: Vec::new(),
            remotes: 0,
            selected: None,
            events: Default::default(),
        }
    }

    /// Our ICE username fragment and password, for the peer.
    pub fn credentials(&self) -> (String, String) {
        let c = self.agent.local_credentials();
        (c.ufrag.clone(), c.pass.clone())
    }

    pub fn set_remote_credentials(&mut self, ufrag: String, pass: String) {
        self.agent.set_remote_credentials(IceCreds { ufrag, pass });
    }

    /// Adds one of our candidates; the SDP string to signal to the peer, if new.
    pub fn add_local(&mut self, c: Local) -> Result<Option<String>, PathError> {
        let made = match c {
            Local::Host(a) => Candidate::host(a, Protocol::Udp),
            Local::Reflexive { addr, base } => {
                Candidate::server_reflexive(addr, base, Protocol::Udp)
            }
            Local::Relayed { addr, base } => {
                self.relays.push(addr);
                Candidate::relayed(addr, base, Protocol::Udp)
            }
        }
        .map_err(|e| PathError::Candidate(format!("{c:?}"), e.to_string()))?;
        Ok(self
            .agent
            .add_local_candidate(made)
            .map(|c| c.to_sdp_string()))
    }

    /// Adds a candidate the peer signalled.
    pub fn add_remote(&mut self, sdp: &str) -> Result<SocketAddr, PathError> {
        if self.remotes >= MAX_REMOTE_CANDIDATES {
            return Err(PathError::Candidate(
                sdp.chars().take(80).collect(),
                format!("more than {MAX_REMOTE_CANDIDATES} candidates"),
            ));
        }
        let c = Candidate::from_sdp_string(sdp)
            .map_err(|e| PathError::Candidate(sdp.chars().take(80).collect(), e.to_string()))?;
        self.remotes += 1;
        if c.kind() == is::CandidateKind::Relayed {
            self.remote_relays.push(c.addr());
        }
        let addr = c.addr();
        self.agent.add_remote_candidate(c);
        Ok(addr)
    }

    /// A datagram from `source` that arrived at our `destination` (a host address or
    /// our relay); true if it was this path's STUN.
    pub fn handle(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(message) = StunMessage::parse(data) else {
            return false;
        };
        if !self.agent.accepts_message(&message) {
            return false;
        }
        let used = self.agent.handle_packet(
            now,
            StunPacket {
                proto: Protocol::Udp,
                source,
                destination,
                message,
            },
        );
        self.drain();
        used
    }

    /// A STUN packet to send: from `source` (ours or our relay) to `destination`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.agent
            .poll_transmit()
            .map(|t| (t.source, t.destination, t.contents.to_vec()))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        self.drain();
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.agent.poll_timeout()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn selected(&self) -> Option<Selected> {
        self.selected
    }

    fn drain(&mut self) {
        while let Some(ev) = self.agent.poll_event() {
            match ev {
                IceAgentEvent::NominatedSend {
                    source,
                    destination,
                    ..
                } => {
                    let kind = if self.relays.contains(&source)
                        || self.remote_relays.contains(&destination)
                    {
                        Kind::Relayed
                    } else {
                        Kind::Direct
                    };
                    let s = Selected {
                        local: source,
                        remote: destination,
                        kind,
                    };
                    if self.selected != Some(s) {
                        self.selected = Some(s);
                        self.events.push_back(Event::Selected(s));
                    }
                }
                IceAgentEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    self.events.push_back(Event::Disconnected);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
