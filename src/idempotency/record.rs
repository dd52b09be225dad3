//! What the layer keeps in the store under one idempotency key.
//!
//! Layout: `TSI1`, a 4-byte big-endian length, that many bytes of JSON metadata, then the
//! response body as raw bytes (no base64 inflation of large bodies).

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"TSI1";

/// The state of one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A request holds the key (a lease with the lock TTL) and is running.
    InProgress {
        /// Random token of the instance and request holding the lease (fencing).
        owner: String,
        fingerprint: [u8; 32],
    },
    /// The request finished; its response is replayed for retries.
    Completed(Box<Completed>),
}

/// A stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) body: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    /// `p`: in progress, `c`: completed.
    state: char,
    fp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trailers: Option<Vec<(String, String)>>,
}

/// A stored record that could not be read back: written by something else, or corrupt.
#[derive(Debug, thiserror::Error)]
#[error("unreadable idempotency record: {0}")]
pub(crate) struct CorruptRecord(&'static str);

fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .filter_map(|(name, value)| {
            // Replayable header values are visible ASCII; an opaque one is not replayed.
            let value = value.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect()
}

fn map(pairs: Vec<(String, String)>) -> Result<HeaderMap, CorruptRecord> {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CorruptRecord("bad header name"))?;
        let value = HeaderValue::from_str(&value).map_err(|_| CorruptRecord("bad header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl Record {
    pub(crate) fn encode(&self) -> Bytes {
        let (meta, body) = match self {
            Record::InProgress { owner, fingerprint } => (
                Meta {
                    state: 'p',
                    fp: crate::id::hex(fingerprint),
                    owner: Some(owner.clone()),
                    status: None,
                    headers: Vec::new(),
                    trailers: None,
                },
                &Bytes::new(),
            ),
            Record::Completed(c) => (
                Meta {
                    state: 'c',
                    fp: crate::id::hex(&c.fingerprint),
                    owner: None,
                    status: Some(c.status.as_u16()),
                    headers: pairs(&c.headers),
                    trailers: c.trailers.as_ref().map(pairs),
                },
                &c.body,
            ),
        };
        // Strings, numbers and lists of strings always serialize.
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let mut out = BytesMut::with_capacity(8 + meta.len() + body.len());
        out.put_slice(MAGIC);
        out.put_u32(meta.len() as u32);
        out.put_slice(&meta);
        out.put_slice(body);
        out.freeze()
    }

    pub(crate) fn decode(raw: &Bytes) -> Result<Self, CorruptRecord> {
        let rest = raw
            .strip_prefix(MAGIC)
            .ok_or(CorruptRecord("unknown format"))?;
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(CorruptRecord("truncated"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(CorruptRecord("truncated"));
        }
        let meta: Meta =
            serde_json::from_slice(&rest[..len]).map_err(|_| CorruptRecord("bad metadata"))?;
        let fingerprint = unhex(&meta.fp).ok_or(CorruptRecord("bad fingerprint"))?;
        match meta.state {
            'p' => Ok(Record::InProgress {
                owner: meta.owner.ok_or(CorruptRecord("no owner"))?,
                fingerprint,
            }),
            'c' => {
                let status = meta
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(CorruptRecord("bad status"))?;
                Ok(Record::Completed(Box::new(Completed {
                    fingerprint,
                    status,
                    headers: map(meta.headers)?,
                    trailers: meta.trailers.map(map).transpose()?,
                    body: raw.slice(raw.len() - (rest.len() - len)..),
                })))
            }
            _ => Err(CorruptRecord("unknown state")),
        }
    }

    pub(crate) fn fingerprint(&self) -> &[u8; 32] {
        match self {
            Record::InProgress { fingerprint, .. } => fingerprint,
            Record::Completed(c) => &c.fingerprint,
        }
    }
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let claim = Record::InProgress {
            owner: "o1".into(),
            fingerprint: [7; 32],
        };
        assert_eq!(Record::decode(&claim.encode()).unwrap(), claim);

        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("link", HeaderValue::from_static("</a>; rel=a"));
        headers.append("link", HeaderValue::from_static("</b>; rel=b"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let done = Record::Completed(Box::new(Completed {
            fingerprint: [9; 32],
            status: StatusCode::CREATED,
            headers,
            trailers: Some(trailers),
            body: Bytes::from_static(b"\x00\xffbinary body"),
        }));
        let decoded = Record::decode(&done.encode()).unwrap();
        assert_eq!(decoded, done);
        assert_eq!(decoded.fingerprint(), &[9; 32]);
    }

    #[test]
    fn garbage_is_refused_not_panicking() {
        for raw in [
            &b""[..],
            b"TSI1",
            b"TSI1\x00\x00\x00\xff{}",
            b"TSI1\x00\x00\x00\x02{}",
            b"XXXX\x00\x00\x00\x02{}",
            b"TSI1\x00\x00\x00\x0c{\"state\":\"p\"}",
        ] {
            assert!(Record::decode(&Bytes::copy_from_slice(raw)).is_err());
        }
    }
}
