//! Hashes on Redis: a Redis hash per key, whose absolute deadline, size, write tag and
//! the time its idle expiry falls live in four reserved fields. Their names are not UTF-8,
//! so no field of the API (a `&str`) can ever collide with them, and reads leave them out.
//! Reads are one `HGETALL` (lazy) or a `MULTI`/`EXEC` transaction (eager), no Lua; writes
//! and expiry rolls are one Lua script each.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{self, Script, Value};

use super::{put_doubles, Call, RedisStore, Resend, ScriptCall};
use crate::id::random_u64;
use crate::metrics::StoreOp;
use crate::store::hash::{HashChanges, HashMode, HashWriteOptions, HashWriteOutcome, StoredHash};
use crate::store::{ttl_millis, unix_millis, StoreError};

/// Every reserved field name starts with these bytes (`\255\254` in the scripts).
const RESERVED: &[u8] = b"\xff\xfe";

/// The field that holds a hash's absolute deadline (milliseconds of Redis' clock).
const DEADLINE: &[u8] = b"\xff\xfed";

/// The field that holds the tag of a hash's last write (a decimal `u64`).
const TAG: &[u8] = b"\xff\xfet";

/// The field that holds when the hash's idle expiry falls (milliseconds of Redis' clock),
/// as the last write or roll set it: a lazy read needs no `PTTL`. A hash without it
/// (written before it was kept) is rolled by the read that finds it so, which adds it.
const EXPIRES: &[u8] = b"\xff\xfee";

/// Deletes a hash found past its deadline, unless it was recreated meanwhile (its deadline
/// field changed): a read rolls the expiry without the cap, so such a hash would otherwise
/// live on while a stale id keeps reading it.
pub(super) static DROP_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], '\255\254d') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// Rolls a hash's expiry to `min(ttl, deadline - now)` on Redis' clock (ARGV[1]: the
/// deadline field as read, ARGV[2]: the TTL) and returns the time left to the deadline
/// (ms, > 0); returns 0 when the hash was deleted or recreated meanwhile (its deadline
/// field changed), or is past its deadline, which deletes it.
pub(super) static ROLL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local d = redis.pcall('HGET', KEYS[1], '\255\254d')
if type(d) ~= 'string' or d ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(d) - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local ex = math.min(tonumber(ARGV[2]), left)
redis.call('HSET', KEYS[1], '\255\254e', string.format('%.0f', now + ex))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ex))
return left",
    )
});

/// Both writes: `hash_apply` and `hash_compare_and_set_field`. ARGV[1] is the write's
/// numbers in one binary argument, seven little-endian doubles (see [`header`]): the mode
/// (0 existing, 1 upsert, 2 new), the lifetime of a hash it creates, the TTL, the size
/// limit (-1: none), the refresh interval (all in ms), the instance's clock (unix ms) and
/// the operation (-1 compare-and-set, -2 clear then set, n >= 0: delete n fields, then
/// set); ARGV[2] is the write tag. `apply`: the names of the fields to delete, then the
/// fields to set, name and value. Compare-and-set: ARGV[3] whether a value is expected
/// ('1'/'0'), ARGV[4] that value, ARGV[5] whether a new value is set, ARGV[6] the field,
/// ARGV[7] the new value (when set). Returns `1` written, `2` missing, `3` exists,
/// `{4, size}` too large, `{5, 0}` / `{5, 1, value}` changed (field absent / present).
///
/// The numbers travel as doubles (exact for integers below 2^53 ms, about 285,000
/// years) and are read by one `struct.unpack` (Redis' bundled `struct` library): every
/// argument costs Redis about a thousand instructions (the command's parsing, the `ARGV`
/// table), and every `tonumber` of a decimal string about two thousand (glibc's
/// `strtod`), against 65 k for the whole script when it took them as six decimal
/// arguments (PERFORMANCE.md, "Instructions per request"); one binary argument took 18 %
/// off the script's instructions. The stored fields stay decimal strings, which every
/// reader parses.
///
/// The fields to delete and to set are read from ARGV where they are, as ranges (`ds..de`,
/// `ss..se`), and the common answer is a number: every table the script builds or returns
/// costs Redis measurably (a script returning `{1}` costs about half a microsecond more
/// than one returning `1`), so the script builds none on a plain write but the `HMGET`
/// reply.
///
/// Few commands, since each `redis.call` costs Redis about half a microsecond or more: one
/// `HMGET` of the three reserved fields it needs (a key that is no hash answers an error:
/// no hash), `TIME` only when the clock could change an answer (below), one `HSET` of
/// the size, the tag and the set fields (one more per further 500 fields), `HDEL` when
/// fields are removed (one per 1,000), and `PEXPIRE` only when the expiry is due: when
/// the write creates or clears the hash, when the expiry field is missing, or when a roll
/// would lengthen the expiry left by the refresh interval or more (the same rule as a lazy
/// read; interval 0: every write). Numbers go to Redis as Lua numbers (no
/// `string.format`).
///
/// Redis' clock (`TIME`) decides whenever the answer could depend on which clock: when
/// the write creates a hash (its deadline) and when the deadline is less than a minute
/// beyond the TTL from the instance's clock (whether it has passed; how far the expiry
/// may go). Further from the deadline, both clocks give the same answers while they are
/// less than a minute apart (not expired; the expiry is the TTL), and the instance's
/// clock only dates the expiry field, which reads compare with their own clock anyway. A
/// clock running ahead of Redis' only makes writes ask for the time sooner; one running
/// more than a minute behind could let a write keep a hash past its deadline by the
/// difference less a minute.
///
/// The stored size is an **upper bound**: a write adds the lengths of the fields it sets
/// without reading the values they replace. Only when that bound would pass the limit
/// does the script read the whole hash (`HGETALL`), compute the exact size before and
/// after, refuse the write if it grows the hash past the limit, and store the exact
/// size; so a write costs no read per field, and the limit holds exactly.
pub(super) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
local mode, lifetime, ttl, max, every, now, op = struct.unpack('<ddddddd', ARGV[1])
local head = redis.pcall('HMGET', k, '\255\254d', '\255\254s', '\255\254e')
local deadline, expires = nil, nil
if not head['err'] then
  deadline = tonumber(head[1])
  expires = tonumber(head[3])
end
if deadline or mode ~= 0 then
  if not deadline or deadline - now <= ttl + 60000 then
    local t = redis.call('TIME')
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  end
end
if deadline and deadline <= now then deadline = nil end
local created, new = false, 0
if not deadline then
  if mode == 0 then return 2 end
  deadline = now + lifetime
  created = true
elseif mode == 2 then
  return 3
else
  new = tonumber(head[2]) or 0
end
local cleared, ds, de, ss, se = false, 1, 0, 1, 0
if op == -1 then
  local f = ARGV[6]
  local cur = false
  if not created then cur = redis.call('HGET', k, f) end
  local expected = false
  if ARGV[3] == '1' then expected = ARGV[4] end
  if cur ~= expected then
    if cur then return {5, 1, cur} end
    return {5, 0}
  end
  if ARGV[5] == '1' then ss, se = 6, 7 else ds, de = 6, 6 end
else
  if op == -2 then cleared = true end
  ds, de = 3, 2 + op
  if cleared then de = 2 end
  ss, se = de + 1, #ARGV
end
if created or cleared then
  local len = {}
  new = 0
  for i = ss, se, 2 do
    local f = ARGV[i]
    if len[f] then new = new - #f - len[f] end
    len[f] = #ARGV[i + 1]
    new = new + #f + len[f]
  end
else
  for i = ss, se, 2 do new = new + #ARGV[i] + #ARGV[i + 1] end
end
if max >= 0 and new > max then
  if created then return {4, new} end
  local all = redis.call('HGETALL', k)
  local old, len = 0, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) ~= '\255\254' then
      len[f] = #all[i + 1]
      old = old + #f + len[f]
    end
  end
  if not cleared then
    new = old
    for i = ds, de do
      local f = ARGV[i]
      if len[f] then new = new - #f - len[f] end
      len[f] = nil
    end
    for i = ss, se, 2 do
      local f = ARGV[i]
      if len[f] then new = new - #f - len[f] end
      len[f] = #ARGV[i + 1]
      new = new + #f + len[f]
    end
  end
  if new > max and new > old then return {4, new} end
end
if created or cleared then
  redis.call('DEL', k)
elseif de >= ds then
  for i = ds, de, 1000 do
    local last = i + 999
    if last > de then last = de end
    redis.call('HDEL', k, unpack(ARGV, i, last))
  end
end
local ex = deadline - now
if ttl < ex then ex = ttl end
local roll = true
if expires and not (created or cleared) then
  local left = expires - now
  roll = left <= 0 or left > ex or left + every <= ex
end
local last = ss + 999
if last > se then last = se end
if created or cleared then
  redis.call('HSET', k, '\255\254d', deadline, '\255\254s', new, '\255\254t', ARGV[2],
    '\255\254e', now + ex, unpack(ARGV, ss, last))
elseif roll then
  redis.call('HSET', k, '\255\254s', new, '\255\254t', ARGV[2], '\255\254e', now + ex,
    unpack(ARGV, ss, last))
else
  redis.call('HSET', k, '\255\254s', new, '\255\254t', ARGV[2], unpack(ARGV, ss, last))
end
if se > last then
  for i = last + 1, se, 1000 do
    local l = i + 999
    if l > se then l = se end
    redis.call('HSET', k, unpack(ARGV, i, l))
  end
end
if roll then redis.call('PEXPIRE', k, ex) end
return 1
",
    )
});

/// Milliseconds of a `TIME` reply (seconds and microseconds, as bulk strings).
fn server_millis(time: Value) -> Option<u64> {
    let Value::Array(parts) = time else {
        return None;
    };
    let number = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<u64>().ok(),
        _ => None,
    };
    let (secs, micros) = (number(parts.first()?)?, number(parts.get(1)?)?);
    secs.checked_mul(1000)?.checked_add(micros / 1000)
}

/// A hash as `HGETALL` answered it.
struct Read {
    fields: BTreeMap<String, Bytes>,
    /// The deadline field, as stored (what `ROLL` and `DROP_EXPIRED` compare).
    raw_deadline: Vec<u8>,
    /// The deadline, unix milliseconds of Redis' clock.
    deadline: u64,
    /// The write tag; `None` for a hash written before tags were kept.
    tag: Option<u64>,
    /// When the idle expiry falls (unix milliseconds of Redis' clock); `None` for a hash
    /// written before it was kept.
    expires_at: Option<u64>,
}

impl Read {
    fn stored(self, lifetime_left: Duration, expires_in: Duration) -> StoredHash {
        StoredHash {
            fields: self.fields,
            lifetime_left,
            expires_in,
            tag: self.tag,
        }
    }
}

/// The hash of an `HGETALL` reply; `None` when the key is absent, holds a plain value, or
/// holds a hash that is not one of ours (no deadline).
fn fields_and_deadline(all: Value) -> Result<Option<Read>, StoreError> {
    let items = match all {
        Value::Array(items) => items,
        // A plain value under the key answers WRONGTYPE to HGETALL: no hash.
        Value::ServerError(e) if e.code() == "WRONGTYPE" => return Ok(None),
        _ => return Err(unexpected("read")),
    };
    let mut deadline = None;
    let mut tag = None;
    let mut expires_at = None;
    let mut fields = BTreeMap::new();
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        let (Value::BulkString(name), Value::BulkString(value)) = (name, value) else {
            return Err(unexpected("read"));
        };
        if name.starts_with(RESERVED) {
            if name == DEADLINE {
                deadline = Some(value);
            } else if name == TAG {
                tag = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse().ok());
            } else if name == EXPIRES {
                expires_at = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| t.parse().ok());
            }
            continue;
        }
        let name = String::from_utf8(name).map_err(|_| unexpected("field name"))?;
        fields.insert(name, Bytes::from(value));
    }
    let Some(raw) = deadline else {
        return Ok(None);
    };
    let at = std::str::from_utf8(&raw)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or_else(|| unexpected("deadline"))?;
    Ok(Some(Read {
        fields,
        raw_deadline: raw,
        deadline: at,
        tag,
        expires_at,
    }))
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Unexpected(format!("unexpected reply to a hash {what}").into())
}

/// What a write does besides the mode: the last number of its [`header`].
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Compare-and-set of one field (`hash_compare_and_set_field`).
    CompareAndSet,
    /// Clear the hash, then set the fields.
    ClearThenSet,
    /// Delete the first `deletes` fields named, then set the rest.
    Apply { deletes: usize },
}

/// ARGV[1] of [`WRITE`]: the write's numbers as seven little-endian `f64`s, which the
/// script reads with one `struct.unpack('<ddddddd', ..)`: the mode (0 existing, 1
/// upsert, 2 new), the lifetime of a hash it creates (ms, 0 for `Existing`), the TTL
/// (ms), the size limit (-1: none), the refresh interval (ms), the instance's clock (unix
/// ms) and the operation (-1 compare-and-set, -2 clear then set, else how many fields to
/// delete). Every number is an integer below 2^53 (exact as a double) but the limit and
/// the interval, which may be `u64::MAX` ("none"): as doubles they stay above anything
/// they are compared with.
fn header(options: &HashWriteOptions, op: Op) -> Result<[u8; 56], StoreError> {
    let (mode, lifetime) = match options.mode {
        HashMode::Existing => (0.0, 0),
        HashMode::Upsert { lifetime } => (1.0, ttl_millis(lifetime)?),
        HashMode::New { lifetime } => (2.0, ttl_millis(lifetime)?),
    };
    let op = match op {
        Op::CompareAndSet => -1.0,
        Op::ClearThenSet => -2.0,
        Op::Apply { deletes } => deletes as f64,
    };
    let numbers = [
        mode,
        lifetime as f64,
        ttl_millis(options.ttl)? as f64,
        options.max_bytes.map_or(-1.0, |max| max as f64),
        u64::try_from(options.refresh.as_millis()).unwrap_or(u64::MAX) as f64,
        unix_millis() as f64,
        op,
    ];
    let mut header = [0; 56];
    put_doubles(&mut header, numbers);
    Ok(header)
}

/// The common head of a write: the key, the [`header`], the write tag.
fn head<'a>(
    script: &'a Script,
    key: impl redis::ToRedisArgs,
    options: &HashWriteOptions,
    op: Op,
) -> Result<ScriptCall<'a>, StoreError> {
    let header = header(options, op)?;
    let mut call = ScriptCall::new(script, key);
    call.arg(&header[..])
        .arg(options.tag.unwrap_or_else(random_u64));
    Ok(call)
}

/// The write script's answer: a number, or a table whose first item is one (the number
/// alone, the common answer, costs no allocation).
fn outcome(reply: Value) -> Result<HashWriteOutcome, StoreError> {
    let (code, mut rest) = match reply {
        Value::Int(code) => (code, Vec::new().into_iter()),
        Value::Array(items) => {
            let mut items = items.into_iter();
            match items.next() {
                Some(Value::Int(code)) => (code, items),
                _ => return Err(unexpected("write")),
            }
        }
        _ => return Err(unexpected("write")),
    };
    let mut int = || match rest.next() {
        Some(Value::Int(n)) => Some(n),
        _ => None,
    };
    Ok(match code {
        1 => HashWriteOutcome::Written,
        2 => HashWriteOutcome::Missing,
        3 => HashWriteOutcome::Exists,
        4 => HashWriteOutcome::TooLarge(
            int()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| unexpected("write"))?,
        ),
        5 => match int() {
            Some(0) => HashWriteOutcome::Changed(None),
            Some(1) => match rest.next() {
                Some(Value::BulkString(value)) => HashWriteOutcome::Changed(Some(value.into())),
                _ => return Err(unexpected("write")),
            },
            _ => return Err(unexpected("write")),
        },
        _ => return Err(unexpected("write")),
    })
}

impl RedisStore {
    /// One transaction, sent as one pipeline (one round trip): `MULTI`, `TIME`, `HGETALL`,
    /// `PEXPIRE`, `EXEC`. No Lua: a script costs Redis several times the CPU of these
    /// three commands. The deadline is checked here against the `TIME` of the same
    /// transaction (Redis' clock, as the writes use: no skew between instances and Redis).
    /// The expiry is rolled to `ttl` without the cap by the deadline, so a hash read in
    /// its last `ttl` before the deadline may stay in Redis up to `ttl` after it, where
    /// every operation sees it as absent; the read that finds it past its deadline deletes
    /// it (one more round trip, once).
    pub(super) async fn hash_read_refresh(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        let ms = ttl_millis(ttl)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .cmd("HGETALL")
            .arg(self.arg(key))
            .cmd("PEXPIRE")
            .arg(self.arg(key))
            .arg(ms)
            // A plain value under the key answers WRONGTYPE to HGETALL: no hash.
            .ignore_errors();
        let pipe = &pipe;
        let reply: Vec<Value> = self
            .run(
                StoreOp::HashGetAllAndRefresh,
                Resend::Harmless,
                |mut conn| async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        let [time, all, _expire]: [Value; 3] = reply.try_into().map_err(|_| unexpected("read"))?;
        let now = server_millis(time).ok_or_else(|| unexpected("read"))?;
        let Some(read) = fields_and_deadline(all)? else {
            return Ok(None);
        };
        if read.deadline <= now {
            self.drop_expired(key, &read.raw_deadline).await?;
            return Ok(None);
        }
        let left = Duration::from_millis(read.deadline - now);
        Ok(Some(read.stored(left, Duration::from_millis(ms))))
    }

    /// Deletes the hash at `key` found past its deadline `raw`, unless it was recreated.
    async fn drop_expired(&self, key: &str, raw: &[u8]) -> Result<(), StoreError> {
        let mut call = self.script_call(&DROP_EXPIRED, key);
        call.arg(raw);
        self.write::<i64>(
            StoreOp::HashGetAllAndRefresh,
            Resend::Harmless,
            Call::Script(call),
        )
        .await?;
        Ok(())
    }

    /// One `HGETALL` (one round trip, no transaction, no Lua): the expiry left comes from
    /// the reserved field every write and roll sets beside `PEXPIRE`, read against this
    /// instance's clock, like the deadline. Only when the expiry left is `every` or more
    /// below what a roll would set (`ttl`, capped by the deadline) does a second round
    /// trip roll it (`ROLL`, capped on Redis' clock). Redis removes the hash at its
    /// deadline on its own, as every write and every lazy roll caps the expiry there; a
    /// hash that this instance's clock finds past its deadline (one an eager read rolled
    /// past it, or a clock running ahead) goes through `ROLL`, which decides on Redis'
    /// clock. A clock running behind Redis' by `d` rolls up to `d` late, so an idle
    /// session may end up to `every + d` before `ttl` (instead of `every`).
    pub(super) async fn hash_read_lazily(
        &self,
        key: &str,
        ttl: Duration,
        every: Duration,
    ) -> Result<Option<StoredHash>, StoreError> {
        if every.is_zero() {
            return self.hash_read_refresh(key, ttl).await;
        }
        let ttl_ms = ttl_millis(ttl)?;
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.arg(key));
        let cmd = &cmd;
        let all: Value = self
            .run(
                StoreOp::HashGetAllAndRefresh,
                Resend::Harmless,
                |mut conn| async move {
                    // The reply as parsed, not through `query_async`, which copies every
                    // array into a new one to find errors nested in it (an `HGETALL`
                    // reply has none): 800 instructions a read.
                    match conn.req_packed_command(cmd).await? {
                        // A plain value under the key: no hash.
                        Value::ServerError(e) if e.code() == "WRONGTYPE" => {
                            Ok(Value::Array(Vec::new()))
                        }
                        Value::ServerError(e) => Err(e.into()),
                        reply => Ok(reply),
                    }
                },
            )
            .await?;
        let Some(read) = fields_and_deadline(all)? else {
            return Ok(None);
        };
        // Past the deadline by this instance's clock: `ROLL` decides on Redis' clock (it
        // deletes the hash if so), so a clock running ahead ends no session early.
        let now = unix_millis();
        let left = read.deadline.saturating_sub(now);
        // No expiry field (a hash from before it was kept): roll, which adds it.
        let expires_in = read
            .expires_at
            .map(|at| at.saturating_sub(now))
            .filter(|&n| n.saturating_add(every_ms) > ttl_ms.min(left));
        if let Some(expires_in) = expires_in.filter(|_| left > 0) {
            let (left, expires_in) = (
                Duration::from_millis(left),
                Duration::from_millis(expires_in),
            );
            return Ok(Some(read.stored(left, expires_in)));
        }
        let mut call = self.script_call(&ROLL, key);
        call.arg(read.raw_deadline.as_slice()).arg(ttl_ms);
        let left: i64 = self
            .write(
                StoreOp::HashGetAllAndRefresh,
                Resend::Harmless,
                Call::Script(call),
            )
            .await?;
        // Deleted, recreated or past its deadline meanwhile: what was read is gone.
        Ok(u64::try_from(left).ok().filter(|&l| l > 0).map(|l| {
            let expires_in = Duration::from_millis(ttl_ms.min(l));
            read.stored(Duration::from_millis(l), expires_in)
        }))
    }

    pub(super) async fn hash_write_changes(
        &self,
        key: &str,
        changes: &HashChanges,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        // Clearing, everything goes first: the fields to delete are moot.
        let op = if changes.clear {
            Op::ClearThenSet
        } else {
            Op::Apply {
                deletes: changes.delete.len(),
            }
        };
        let mut call = head(&WRITE, self.arg(key), &options, op)?;
        if !changes.clear {
            for name in &changes.delete {
                call.arg(name.as_str());
            }
        }
        for (name, value) in &changes.set {
            call.arg(name.as_str()).arg(value.as_ref());
        }
        let reply: Value = self
            .write(StoreOp::HashApply, Resend::Never, Call::Script(call))
            .await?;
        outcome(reply)
    }

    pub(super) async fn hash_swap_field(
        &self,
        key: &str,
        field: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: HashWriteOptions,
    ) -> Result<HashWriteOutcome, StoreError> {
        let mut call = head(&WRITE, self.arg(key), &options, Op::CompareAndSet)?;
        call.arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(if new.is_some() { "1" } else { "0" })
            .arg(field);
        if let Some(new) = &new {
            call.arg(new.as_ref());
        }
        let reply: Value = self
            .write(
                StoreOp::HashCompareAndSetField,
                Resend::Never,
                Call::Script(call),
            )
            .await?;
        outcome(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(items: Vec<Value>) -> Value {
        Value::Array(items)
    }

    #[test]
    fn write_answers_are_numbers_or_tables() {
        let ok = |reply| outcome(reply).expect("a valid answer");
        assert_eq!(ok(Value::Int(1)), HashWriteOutcome::Written);
        assert_eq!(ok(Value::Int(2)), HashWriteOutcome::Missing);
        assert_eq!(ok(Value::Int(3)), HashWriteOutcome::Exists);
        assert_eq!(ok(array(vec![Value::Int(1)])), HashWriteOutcome::Written);
        assert_eq!(
            ok(array(vec![Value::Int(4), Value::Int(70)])),
            HashWriteOutcome::TooLarge(70)
        );
        assert_eq!(
            ok(array(vec![Value::Int(5), Value::Int(0)])),
            HashWriteOutcome::Changed(None)
        );
        assert_eq!(
            ok(array(vec![
                Value::Int(5),
                Value::Int(1),
                Value::BulkString(b"v".to_vec())
            ])),
            HashWriteOutcome::Changed(Some(Bytes::from_static(b"v")))
        );
    }

    /// The numbers of a write's header, as the script's `struct.unpack('<ddddddd', ..)`
    /// reads them.
    fn numbers(header: [u8; 56]) -> Vec<f64> {
        header
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }

    #[test]
    fn write_header_carries_mode_numbers_and_operation() {
        let before = unix_millis() as f64;
        let existing = HashWriteOptions::new(HashMode::Existing, Duration::from_secs(60));
        let n = numbers(header(&existing, Op::Apply { deletes: 3 }).expect("valid"));
        assert_eq!(n[..5], [0.0, 0.0, 60_000.0, -1.0, 0.0]);
        assert!(
            n[5] >= before && n[5] <= unix_millis() as f64,
            "clock {}",
            n[5]
        );
        assert_eq!(n[6], 3.0);

        let upsert = HashWriteOptions::new(
            HashMode::Upsert {
                lifetime: Duration::from_secs(3600),
            },
            Duration::from_millis(1500),
        )
        .max_bytes(4096)
        .refresh_interval(Duration::from_secs(5));
        let n = numbers(header(&upsert, Op::ClearThenSet).expect("valid"));
        assert_eq!(
            [n[0], n[1], n[2], n[3], n[4], n[6]],
            [1.0, 3_600_000.0, 1500.0, 4096.0, 5000.0, -2.0]
        );

        let new = HashWriteOptions::new(
            HashMode::New {
                lifetime: Duration::from_millis(1),
            },
            Duration::from_millis(1),
        )
        .refresh_interval(Duration::MAX);
        let n = numbers(header(&new, Op::CompareAndSet).expect("valid"));
        assert_eq!([n[0], n[1], n[6]], [2.0, 1.0, -1.0]);
        // "No interval": above any expiry it is compared with.
        assert!(n[4] >= u64::MAX as f64);
    }

    #[test]
    fn write_header_refuses_invalid_durations() {
        let zero_ttl = HashWriteOptions::new(HashMode::Existing, Duration::ZERO);
        assert!(matches!(
            header(&zero_ttl, Op::CompareAndSet),
            Err(StoreError::InvalidTtl(_))
        ));
        let zero_lifetime = HashWriteOptions::new(
            HashMode::New {
                lifetime: Duration::ZERO,
            },
            Duration::from_secs(1),
        );
        assert!(matches!(
            header(&zero_lifetime, Op::ClearThenSet),
            Err(StoreError::InvalidTtl(_))
        ));
    }

    #[test]
    fn malformed_write_answers_are_errors() {
        for reply in [
            Value::Nil,
            Value::Int(0),
            Value::Int(9),
            Value::BulkString(b"1".to_vec()),
            array(vec![]),
            array(vec![Value::Int(4)]),
            array(vec![Value::Int(4), Value::Int(-1)]),
            array(vec![Value::Int(5)]),
            array(vec![Value::Int(5), Value::Int(1)]),
            array(vec![Value::Int(5), Value::Int(2)]),
        ] {
            let shown = format!("{reply:?}");
            assert!(
                matches!(outcome(reply), Err(StoreError::Unexpected(_))),
                "{shown} must be an error"
            );
        }
    }
}
