//! The stored record of one refresh token.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What the store keeps under `rt:{T}:tok:<hash>`. Never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    /// Subject the token speaks for.
    pub(super) sub: String,
    /// Session id the family belongs to (the `sid` of its access tokens).
    pub(super) sid: String,
    /// Family id, shared by every token rotated from one login.
    pub(super) fam: String,
    /// Position in the family: 0 at login, +1 per rotation.
    pub(super) gen: u64,
    /// When the family was created (the login), Unix milliseconds.
    pub(super) created: u64,
    /// The family's absolute end, Unix milliseconds.
    pub(super) fexp: u64,
    /// This token's own end, Unix milliseconds (never after `fexp`).
    pub(super) exp: u64,
    /// Set once the token has been exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consumed: Option<Consumed>,
}

/// How a token was consumed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Consumed {
    /// When, Unix milliseconds.
    pub(super) at: u64,
    /// Hash of the token that replaced it.
    pub(super) next: String,
}

impl Record {
    pub(super) fn encode(&self) -> Result<Bytes, serde_json::Error> {
        serde_json::to_vec(self).map(Bytes::from)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The same record, consumed at `at` and replaced by the token hashed `next`.
    pub(super) fn consumed_by(&self, at: u64, next: &str) -> Self {
        Self {
            consumed: Some(Consumed {
                at,
                next: next.to_owned(),
            }),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let record = Record {
            sub: "alice".into(),
            sid: "s1".into(),
            fam: "f1".into(),
            gen: 3,
            created: 1,
            fexp: 10,
            exp: 5,
            consumed: None,
        };
        let bytes = record.encode().unwrap();
        let back = Record::decode(&bytes).unwrap();
        assert!(back.consumed.is_none());
        let consumed = back.consumed_by(4, "h").encode().unwrap();
        let back = Record::decode(&consumed).unwrap();
        assert_eq!(back.consumed.map(|c| (c.at, c.next)), Some((4, "h".into())));
        assert!(Record::decode(b"not json").is_err());
    }
}
