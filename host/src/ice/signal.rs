//! ICE signals as `DataChannelNegotiation` messages (pure). A WireGuard path's
//! negotiation between two nodes is a `NegotiateDataChannel` stream whose first
//! message has `proto` "wireguard", `port` 0 and `dst` the peer's node ID (a data
//! channel's has "tcp" or "udp" and an address: the traffic's destination).
//! The controlling side's credentials travel as the `offer`, the other side's as the
//! `answer` — each a minimal SDP session (`a=ice-ufrag`, `a=ice-pwd`); candidates
//! trickle in `candidate` (the SDP `candidate:` attribute). A new offer restarts ICE.

use webmesh_api::v1::DataChannelNegotiation;

use super::shell::Signal;

/// `proto` of a WireGuard path's negotiation.
pub const WIREGUARD_PROTO: &str = "wireguard";
/// Longest offer, answer or candidate taken.
pub const MAX_TEXT: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("{field}: {why}")]
    Bad { field: &'static str, why: String },
}

fn bad(field: &'static str, why: impl Into<String>) -> SignalError {
    SignalError::Bad {
        field,
        why: why.into(),
    }
}

/// The session text carrying ICE credentials.
pub fn session(ufrag: &str, pass: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=webmesh-wireguard\r\nt=0 0\r\n\
         m=application 9 UDP wireguard\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pass}\r\n"
    )
}

/// ICE characters (RFC 8445: ALPHA / DIGIT / "+" / "/").
fn ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The credentials in a session text.
pub fn credentials(field: &'static str, text: &str) -> Result<(String, String), SignalError> {
    if text.len() > MAX_TEXT {
        return Err(bad(field, format!("longer than {MAX_TEXT} bytes")));
    }
    let attr = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::to_string)
    };
    let ufrag = attr("a=ice-ufrag:").ok_or_else(|| bad(field, "no a=ice-ufrag line"))?;
    let pass = attr("a=ice-pwd:").ok_or_else(|| bad(field, "no a=ice-pwd line"))?;
    // RFC 8445: ufrag 4–256 characters, password 22–256.
    if !(4..=256).contains(&ufrag.len()) || !ice_chars(&ufrag) {
        return Err(bad(field, "ice-ufrag must be 4 to 256 ICE characters"));
    }
    if !(22..=256).contains(&pass.len()) || !ice_chars(&pass) {
        return Err(bad(field, "ice-pwd must be 22 to 256 ICE characters"));
    }
    Ok((ufrag, pass))
}

/// Our signal as a message; `controlling` says whether credentials are the offer.
pub fn to_message(signal: &Signal, controlling: bool) -> DataChannelNegotiation {
    match signal {
        Signal::Credentials { ufrag, pass } => {
            let text = session(ufrag, pass);
            if controlling {
                DataChannelNegotiation {
                    offer: text,
                    ..Default::default()
                }
            } else {
                DataChannelNegotiation {
                    answer: text,
                    ..Default::default()
                }
            }
        }
        Signal::Candidate(c) => DataChannelNegotiation {
            candidate: c.clone(),
            ..Default::default()
        },
    }
}

/// What one message from the peer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The peer (re)starts ICE with these credentials.
    Offer(Signal),
    /// The peer answers with its credentials.
    Answer(Signal),
    Candidate(Signal),
    /// Nothing we use (an empty keep-alive, or the opening's routing fields).
    Nothing,
}

/// A message from the peer, checked.
pub fn from_message(m: &DataChannelNegotiation) -> Result<Incoming, SignalError> {
    let set = [&m.offer, &m.answer, &m.candidate]
        .iter()
        .filter(|s| !s.is_empty())
        .count();
    if set > 1 {
        return Err(bad(
            "offer",
            "a message carries one of offer, answer and candidate",
        ));
    }
    if !m.offer.is_empty() {
        let (ufrag, pass) = credentials("offer", &m.offer)?;
        return Ok(Incoming::Offer(Signal::Credentials { ufrag, pass }));
    }
    if !m.answer.is_empty() {
        let (ufrag, pass) = credentials("answer", &m.answer)?;
        return Ok(Incoming::Answer(Signal::Credentials { ufrag, pass }));
    }
    if !m.candidate.is_empty() {
        let c = m.candidate.trim();
        let c = c.strip_prefix("a=").unwrap_or(c);
        if c.len() > MAX_TEXT || !c.starts_with("candidate:") {
            return Err(bad(
                "candidate",
                "an SDP candidate attribute (candidate:...) of at most 2048 bytes",
            ));
        }
        return Ok(Incoming::Candidate(Signal::Candidate(c.to_string())));
    }
    Ok(Incoming::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_candidates_round_trip() {
        let creds = Signal::Credentials {
            ufrag: "abcd".into(),
            pass: "0123456789abcdefghij+/".into(),
        };
        let offer = to_message(&creds, true);
        assert!(offer.answer.is_empty());
        assert_eq!(from_message(&offer), Ok(Incoming::Offer(creds.clone())));
        let answer = to_message(&creds, false);
        assert!(answer.offer.is_empty());
        assert_eq!(from_message(&answer), Ok(Incoming::Answer(creds)));
        let c = Signal::Candidate("candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".into());
        assert_eq!(
            from_message(&to_message(&c, true)),
            Ok(Incoming::Candidate(c.clone()))
        );
        let with_a = DataChannelNegotiation {
            candidate: "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host".into(),
            ..Default::default()
        };
        assert_eq!(from_message(&with_a), Ok(Incoming::Candidate(c)));
        assert_eq!(
            from_message(&DataChannelNegotiation::default()),
            Ok(Incoming::Nothing)
        );
    }

    #[test]
    fn bad_signals_name_the_field() {
        let m = |offer: &str| DataChannelNegotiation {
            offer: offer.into(),
            ..Default::default()
        };
        let err = |m: DataChannelNegotiation| from_message(&m).unwrap_err().to_string();
        assert!(err(m("v=0")).starts_with("offer: no a=ice-ufrag"));
        assert!(err(m(&session("ab", "0123456789abcdefghij+/"))).contains("ice-ufrag must"));
        assert!(err(m(&session("abcd", "short"))).contains("ice-pwd must"));
        assert!(err(m(&session("ab d", "0123456789abcdefghij+/"))).contains("ice-ufrag"));
        assert!(err(m(&"x".repeat(MAX_TEXT + 1))).contains("longer than"));
        let two = DataChannelNegotiation {
            offer: session("abcd", "0123456789abcdefghij+/"),
            candidate: "candidate:1".into(),
            ..Default::default()
        };
        assert!(err(two).contains("one of"));
        let cand = DataChannelNegotiation {
            candidate: "typ host".into(),
            ..Default::default()
        };
        assert!(err(cand).starts_with("candidate:"));
    }
}
