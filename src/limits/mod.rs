//! Per-key state machines, kept by one Durable Object per key.
//!
//! The Durable Object in `edge` is a thin shell: it decodes a [`Command`],
//! calls [`KeyState::apply`] with the current time, saves the state, and
//! encodes the [`Reply`]. Everything that decides is here, with time passed
//! in, so it is tested exactly. Today the state counts requests; rate windows
//! and budget reservations extend this same machine.

use serde::{Deserialize, Serialize};

/// What the gateway asks a key's Durable Object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Admit one request (the one call on the request path).
    Admit,
    /// Read the key's usage.
    Usage,
}

/// The Durable Object's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request may proceed (always, for `Usage`).
    pub admitted: bool,
    /// The key's state after the command.
    pub state: KeyState,
}

/// Everything a key's Durable Object stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Requests admitted since the key was first seen.
    pub requests: u64,
    /// When the first request was admitted (Unix ms), 0 before any.
    pub first_request_ms: u64,
    /// When the last request was admitted (Unix ms), 0 before any.
    pub last_request_ms: u64,
}

impl KeyState {
    /// Applies a command at `now_ms`. Returns the reply and whether the
    /// state changed (and so must be saved).
    pub fn apply(&mut self, command: &Command, now_ms: u64) -> (Reply, bool) {
        let changed = match command {
            Command::Admit => {
                self.requests += 1;
                if self.first_request_ms == 0 {
                    self.first_request_ms = now_ms;
                }
                // Clocks can step backwards between isolates; never go back.
                self.last_request_ms = self.last_request_ms.max(now_ms);
                true
            }
            Command::Usage => false,
        };
        (
            Reply {
                admitted: true,
                state: self.clone(),
            },
            changed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_counts_and_keeps_first_and_last_time() {
        let mut s = KeyState::default();
        assert!(s.apply(&Command::Admit, 1_000).1);
        let (reply, changed) = s.apply(&Command::Admit, 900);
        assert!(changed && reply.admitted);
        assert_eq!(
            reply.state,
            KeyState {
                requests: 2,
                first_request_ms: 1_000,
                last_request_ms: 1_000
            }
        );
        let (reply, changed) = s.apply(&Command::Usage, 5_000);
        assert!(!changed);
        assert_eq!(reply.state.requests, 2);
    }

    #[test]
    fn commands_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Command::Admit).unwrap(),
            r#"{"op":"admit"}"#
        );
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"op":"usage"}"#).unwrap(),
            Command::Usage
        );
    }
}
