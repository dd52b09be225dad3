//! What the layer keeps in the store under one idempotency key.
//!
//! Two layouts, both with the response body as raw bytes (no base64 inflation):
//!
//! - `TSI1`, a 4-byte big-endian length, that many bytes of JSON metadata, the body. Claims
//!   are written so (instances of earlier versions read them during a rolling upgrade),
//!   and completed records of earlier versions are read back.
//! - `TSI2`, the body, the JSON metadata, its 4-byte big-endian length. Completed records
//!   are written so: the response is buffered straight into the record
//!   ([`RecordWriter`]), and the client's body is a slice of it, never a copy.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"TSI1";
const MAGIC_BODY_FIRST: &[u8; 4] = b"TSI2";

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

fn completed_meta(
    fingerprint: &[u8; 32],
    status: StatusCode,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
) -> Meta {
    Meta {
        state: 'c',
        fp: crate::id::hex(fingerprint),
        owner: None,
        status: Some(status.as_u16()),
        headers: pairs(headers),
        trailers: trailers.map(pairs),
    }
}

/// Builds a completed record (`TSI2`) while the response body is being buffered: the body
/// is copied once, from its frames into the record.
#[derive(Debug)]
pub(crate) struct RecordWriter {
    buf: BytesMut,
}

impl RecordWriter {
    /// A writer with room for `body_hint` bytes of body (and its metadata).
    pub(crate) fn new(body_hint: usize) -> Self {
        let mut buf = BytesMut::with_capacity(MAGIC_BODY_FIRST.len() + body_hint + 256);
        buf.put_slice(MAGIC_BODY_FIRST);
        Self { buf }
    }

    pub(crate) fn push_body(&mut self, chunk: &[u8]) {
        self.buf.put_slice(chunk);
    }

    /// How many body bytes were pushed.
    pub(crate) fn body_len(&self) -> usize {
        self.buf.len() - MAGIC_BODY_FIRST.len()
    }

    /// The body pushed so far, when the record will not be written after all.
    pub(crate) fn into_body(self) -> Bytes {
        self.buf.freeze().split_off(MAGIC_BODY_FIRST.len())
    }

    /// The finished record, and the body as a slice of it.
    pub(crate) fn finish(
        mut self,
        fingerprint: &[u8; 32],
        status: StatusCode,
        headers: &HeaderMap,
        trailers: Option<&HeaderMap>,
    ) -> (Bytes, Bytes) {
        let body_end = self.buf.len();
        let meta = completed_meta(fingerprint, status, headers, trailers);
        // Strings, numbers and lists of strings always serialize.
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        self.buf.reserve(meta.len() + 4);
        self.buf.put_slice(&meta);
        self.buf.put_u32(meta.len() as u32);
        let record = self.buf.freeze();
        let body = record.slice(MAGIC_BODY_FIRST.len()..body_end);
        (record, body)
    }
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
            Record::Completed(c) => {
                let mut writer = RecordWriter::new(c.body.len());
                writer.push_body(&c.body);
                return writer
                    .finish(&c.fingerprint, c.status, &c.headers, c.trailers.as_ref())
                    .0;
            }
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
        let (meta, body) = if let Some(rest) = raw.strip_prefix(MAGIC) {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or(CorruptRecord("truncated"))?;
            let len = u32::from_be_bytes(*len) as usize;
            if rest.len() < len {
                return Err(CorruptRecord("truncated"));
            }
            let body_start = raw.len() - (rest.len() - len);
            (&rest[..len], raw.slice(body_start..))
        } else if let Some(rest) = raw.strip_prefix(MAGIC_BODY_FIRST) {
            let (rest, len) = rest
                .split_last_chunk::<4>()
                .ok_or(CorruptRecord("truncated"))?;
            let len = u32::from_be_bytes(*len) as usize;
            let body_len = rest
                .len()
                .checked_sub(len)
                .ok_or(CorruptRecord("truncated"))?;
            let start = MAGIC_BODY_FIRST.len();
            (&rest[body_len..], raw.slice(start..start + body_len))
        } else {
            return Err(CorruptRecord("unknown format"));
        };
        let meta: Meta = serde_json::from_slice(meta).map_err(|_| CorruptRecord("bad metadata"))?;
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
                    body,
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

/// The 32 bytes of a 64-digit hex string (either case, as written by [`crate::id::hex`]
/// or by hand); `None` for any other text.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let decoded = base16ct::mixed::decode(text, &mut out).ok()?.len();
    (decoded == out.len()).then_some(out)
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

    /// Completed records written by earlier versions (`TSI1`) are still replayed.
    #[test]
    fn body_after_metadata_records_are_read() {
        let meta = br#"{"state":"c","fp":"0909090909090909090909090909090909090909090909090909090909090909","status":201,"headers":[["content-type","text/plain"]]}"#;
        let mut raw = b"TSI1".to_vec();
        raw.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        raw.extend_from_slice(meta);
        raw.extend_from_slice(b"old body");
        let Record::Completed(done) = Record::decode(&Bytes::from(raw)).unwrap() else {
            panic!("not completed");
        };
        assert_eq!(done.status, StatusCode::CREATED);
        assert_eq!(done.fingerprint, [9; 32]);
        assert_eq!(done.headers["content-type"], "text/plain");
        assert_eq!(done.body, Bytes::from_static(b"old body"));
    }

    /// The body handed to the client is the record's own bytes, not a copy.
    #[test]
    fn writer_body_is_a_slice_of_the_record() {
        let mut writer = RecordWriter::new(4);
        writer.push_body(b"ab");
        writer.push_body(b"cd");
        assert_eq!(writer.body_len(), 4);
        let (record, body) = writer.finish(&[1; 32], StatusCode::OK, &HeaderMap::new(), None);
        assert_eq!(body, Bytes::from_static(b"abcd"));
        let inside = record.as_ptr_range();
        assert!(inside.contains(&body.as_ptr()));
        let Record::Completed(done) = Record::decode(&record).unwrap() else {
            panic!("not completed");
        };
        assert_eq!(done.body, body);
        assert_eq!(done.status, StatusCode::OK);
    }

    #[test]
    fn fingerprints_are_64_hex_digits() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        let hex = crate::id::hex(&bytes);
        assert_eq!(hex.len(), 64);
        assert_eq!(unhex(&hex), Some(bytes));
        assert_eq!(unhex(&hex.to_uppercase()), Some(bytes));
        for bad in [
            &hex[..62],
            &hex[..63],
            &format!("{hex}00"),
            &format!("{}zz", &hex[..62]),
            &format!("{}é", &hex[..62]),
            "",
        ] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
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
            b"TSI2",
            b"TSI2\x00\x00\x00",
            b"TSI2{}\x00\x00\x00\x03",
            b"TSI2body{}\x00\x00\xff\xff",
            b"TSI2{\"state\":\"c\"}\x00\x00\x00\x0d",
        ] {
            assert!(Record::decode(&Bytes::copy_from_slice(raw)).is_err());
        }
    }
}
