//! The transport session state machine (the Rust twin of `x0tta6bl4.protocol.session`,
//! `keypairs.py`): previous/current/next keypairs, counters, replay windows, timers.
//!
//! Datagram: `type u8 = 4 ‖ receiver_index u32 ‖ counter u64 ‖ AES-256-GCM(pt) ‖ tag[16]`,
//! the 13-byte header is the associated data, the nonce is `0^32 ‖ counter`. Every rule, limit
//! and drop reason is the reference's (docs/transport.md is the spec); the cross tests in
//! `tests/unit/test_native_session.py` hold both to the same bytes and the same behaviour.
//!
//! Sans-IO: the caller passes `now` (monotonic seconds). Not thread-safe by itself; the
//! Python wrapper and the I/O thread share it behind a mutex.

use crate::aead::{Cipher, TAG_SIZE};
use crate::replay::ReplayFilter;

pub const TRANSPORT: u8 = 4;
pub const HEADER_SIZE: usize = 13;
pub const MIN_DATAGRAM_SIZE: usize = HEADER_SIZE + TAG_SIZE;
pub const MAX_UDP_PAYLOAD_SIZE: usize = 65507;
pub const MAX_TRANSPORT_DATAGRAM_SIZE: usize = 1472;
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
pub const REKEY_AFTER_TIME: f64 = 120.0;
pub const REJECT_AFTER_TIME: f64 = 180.0;
pub const KEEPALIVE_TIMEOUT: f64 = 10.0;
pub const RESPONDER_REKEY_DELAY: f64 = 15.0;

/// Why a datagram was dropped (`RemoteProtocolError.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    BadLength = 0,
    BadType = 1,
    UnknownIndex = 2,
    DecryptFailed = 3,
    Replay = 4,
    Expired = 5,
}

pub const DROP_REASONS: [DropReason; 6] = [
    DropReason::BadLength,
    DropReason::BadType,
    DropReason::UnknownIndex,
    DropReason::DecryptFailed,
    DropReason::Replay,
    DropReason::Expired,
];

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadLength => "bad_length",
            DropReason::BadType => "bad_type",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::Replay => "replay",
            DropReason::Expired => "expired",
        }
    }
}

/// A rejected datagram: the reason and a message for humans (never key material).
#[derive(Debug)]
pub struct Drop {
    pub reason: DropReason,
    pub message: String,
}

/// The caller's mistake (`LocalProtocolError`).
#[derive(Debug)]
pub struct LocalError(pub String);

/// What `install` needs of a handshake's `TransportKeys`.
pub struct Keys<'a> {
    pub send_key: &'a [u8],
    pub recv_key: &'a [u8],
    pub local_index: u32,
    pub remote_index: u32,
    pub is_initiator: bool,
}

/// One handshake's keys in use. Key material is never printed.
pub struct Keypair {
    send: Cipher,
    recv: Cipher,
    pub local_index: u32,
    pub remote_index: u32,
    pub is_initiator: bool,
    pub created_at: f64,
    pub expires_at: f64,
    pub send_counter: u64,
    replay: ReplayFilter,
}

impl Keypair {
    pub fn new(keys: &Keys<'_>, now: f64, reject_after_time: f64) -> Result<Self, LocalError> {
        let err = || LocalError("transport keys must be 32-byte AES-256-GCM keys".into());
        Ok(Keypair {
            send: Cipher::new(keys.send_key).ok_or_else(err)?,
            recv: Cipher::new(keys.recv_key).ok_or_else(err)?,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            is_initiator: keys.is_initiator,
            created_at: now,
            expires_at: now + reject_after_time,
            send_counter: 0,
            replay: ReplayFilter::new(),
        })
    }
}

/// Limits; WireGuard's constants by default.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub rekey_after_time: f64,
    pub reject_after_time: f64,
    pub rekey_after_messages: u64,
    pub reject_after_messages: u64,
    pub responder_rekey_delay: f64,
    pub keepalive_timeout: f64,
    pub max_datagram_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rekey_after_time: REKEY_AFTER_TIME,
            reject_after_time: REJECT_AFTER_TIME,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            reject_after_messages: REJECT_AFTER_MESSAGES,
            responder_rekey_delay: RESPONDER_REKEY_DELAY,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            max_datagram_size: MAX_TRANSPORT_DATAGRAM_SIZE,
        }
    }
}

impl Limits {
    /// The reference's constructor checks, with its messages (`ValueError`).
    pub fn validate(&self) -> Result<(), String> {
        let sum = self.rekey_after_time + self.responder_rekey_delay;
        if !(0.0 < sum && sum < self.reject_after_time) {
            return Err(
                "need 0 < rekey_after_time + responder_rekey_delay < reject_after_time".into()
            );
        }
        if self.responder_rekey_delay < 0.0 {
            return Err("responder_rekey_delay must not be negative".into());
        }
        if !(0 < self.rekey_after_messages
            && self.rekey_after_messages <= self.reject_after_messages
            && self.reject_after_messages <= REJECT_AFTER_MESSAGES)
        {
            return Err(
                "need 0 < rekey_after_messages <= reject_after_messages <= REJECT_AFTER_MESSAGES"
                    .into(),
            );
        }
        if self.keepalive_timeout <= 0.0 {
            return Err("keepalive_timeout must be positive".into());
        }
        if !(MIN_DATAGRAM_SIZE <= self.max_datagram_size
            && self.max_datagram_size <= MAX_UDP_PAYLOAD_SIZE)
        {
            return Err(format!(
                "max_datagram_size must be within [{MIN_DATAGRAM_SIZE}, {MAX_UDP_PAYLOAD_SIZE}]"
            ));
        }
        Ok(())
    }

    pub fn max_plaintext_size(&self) -> usize {
        self.max_datagram_size - MIN_DATAGRAM_SIZE
    }
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub keypairs_installed: u64,
    pub keypairs_promoted: u64,
    pub keypairs_expired: u64,
    pub dropped: [u64; 6],
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Previous,
    Current,
    Next,
}

/// The session: three keypair slots, counters, timers.
pub struct SessionCore {
    pub limits: Limits,
    pub previous: Option<Box<Keypair>>,
    pub current: Option<Box<Keypair>>,
    pub next: Option<Box<Keypair>>,
    rekey_signalled: bool,
    keepalive_due: Option<f64>,
    pub stats: Stats,
}

/// The result of a successful open: where the plaintext lies in the caller's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub start: usize,
    pub len: usize,
    pub promoted: bool,
    pub counter: u64,
}

#[inline]
pub fn parse_header(datagram: &[u8]) -> Option<(u8, u32, u64)> {
    if datagram.len() < HEADER_SIZE {
        return None;
    }
    let index = u32::from_be_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&datagram[5..13]);
    Some((datagram[0], index, u64::from_be_bytes(c)))
}

impl SessionCore {
    pub fn new(limits: Limits) -> Result<Self, String> {
        limits.validate()?;
        Ok(SessionCore {
            limits,
            previous: None,
            current: None,
            next: None,
            rekey_signalled: false,
            keepalive_due: None,
            stats: Stats::default(),
        })
    }

    pub fn can_send(&self) -> bool {
        self.current.is_some()
    }

    fn live(&self) -> impl Iterator<Item = &Keypair> {
        [&self.previous, &self.current, &self.next].into_iter().filter_map(|k| k.as_deref())
    }

    /// The slot of the live keypair with `local_index` (current, previous, next order).
    pub fn lookup(&self, local_index: u32) -> Option<Slot> {
        for (slot, kp) in [
            (Slot::Current, &self.current),
            (Slot::Previous, &self.previous),
            (Slot::Next, &self.next),
        ] {
            if matches!(kp, Some(k) if k.local_index == local_index) {
                return Some(slot);
            }
        }
        None
    }

    pub fn slot(&self, slot: Slot) -> Option<&Keypair> {
        match slot {
            Slot::Previous => self.previous.as_deref(),
            Slot::Current => self.current.as_deref(),
            Slot::Next => self.next.as_deref(),
        }
    }

    fn slot_mut(&mut self, slot: Slot) -> Option<&mut Keypair> {
        match slot {
            Slot::Previous => self.previous.as_deref_mut(),
            Slot::Current => self.current.as_deref_mut(),
            Slot::Next => self.next.as_deref_mut(),
        }
    }

    /// Every local index of a live keypair.
    pub fn local_indices(&self) -> Vec<u32> {
        self.live().map(|k| k.local_index).collect()
    }

    fn check_unique(&self, index: u32, keep: &[Slot]) -> Result<(), LocalError> {
        for slot in keep {
            if matches!(self.slot(*slot), Some(k) if k.local_index == index) {
                return Err(LocalError(format!(
                    "local index {index} is already used by a live keypair"
                )));
            }
        }
        Ok(())
    }

    /// Put a handshake's keys to use (initiator: `next`; responder: `current`).
    pub fn install(&mut self, keys: &Keys<'_>, now: f64) -> Result<(), LocalError> {
        let kp = Box::new(Keypair::new(keys, now, self.limits.reject_after_time)?);
        if keys.is_initiator {
            self.check_unique(kp.local_index, &[Slot::Previous, Slot::Current])?;
            self.next = Some(kp);
        } else {
            self.check_unique(kp.local_index, &[Slot::Current])?;
            self.previous = self.current.take();
            self.current = Some(kp);
            self.next = None;
            self.rekey_signalled = false;
            self.keepalive_due = Some(now);
        }
        self.stats.keypairs_installed += 1;
        Ok(())
    }

    /// Seal `buf[start..]` (the plaintext, preceded by `start` bytes the caller keeps) into a
    /// datagram at `buf[start - 13..]`: the caller reserves 13 bytes before the plaintext.
    /// Without reservation use [`SessionCore::seal`].
    pub fn seal_reserved(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        now: f64,
    ) -> Result<(), LocalError> {
        let max_pt = self.limits.max_plaintext_size();
        let reject = self.limits.reject_after_messages;
        if start < HEADER_SIZE || buf.len() < start {
            return Err(LocalError("no room for the transport header".into()));
        }
        let size = buf.len() - start;
        let Some(kp) = self.current.as_deref_mut() else {
            return Err(LocalError(
                "no current keypair: handshake not completed or confirmed".into(),
            ));
        };
        let counter = kp.send_counter;
        if counter >= reject {
            return Err(LocalError("the current keypair has sent its maximum of messages".into()));
        }
        if now >= kp.expires_at {
            return Err(LocalError("the current keypair has expired".into()));
        }
        if size > max_pt {
            return Err(LocalError(format!(
                "plaintext of {size} bytes exceeds the maximum of {max_pt}"
            )));
        }
        kp.send_counter = counter + 1;
        let h = start - HEADER_SIZE;
        buf[h] = TRANSPORT;
        buf[h + 1..h + 5].copy_from_slice(&kp.remote_index.to_be_bytes());
        buf[h + 5..h + 13].copy_from_slice(&counter.to_be_bytes());
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(&buf[h..start]);
        if !kp.send.seal_in_place(counter, &header, buf, start) {
            return Err(LocalError("AES-GCM refused the plaintext".into()));
        }
        self.stats.packets_sent += 1;
        self.keepalive_due = None;
        Ok(())
    }

    /// `plaintext` → a new datagram.
    pub fn seal(&mut self, plaintext: &[u8], now: f64) -> Result<Vec<u8>, LocalError> {
        let mut buf = Vec::with_capacity(HEADER_SIZE + plaintext.len() + TAG_SIZE);
        buf.resize(HEADER_SIZE, 0);
        buf.extend_from_slice(plaintext);
        self.seal_reserved(&mut buf, HEADER_SIZE, now)?;
        Ok(buf)
    }

    fn drop(&mut self, reason: DropReason, message: String) -> Drop {
        self.stats.dropped[reason as usize] += 1;
        Drop { reason, message }
    }

    /// Authenticate and decrypt `datagram` in place. On success the plaintext is
    /// `datagram[13 .. 13 + len]`.
    pub fn open_in_place(&mut self, datagram: &mut [u8], now: f64) -> Result<Opened, Drop> {
        let size = datagram.len();
        if size < MIN_DATAGRAM_SIZE || size > self.limits.max_datagram_size {
            return Err(self.drop(
                DropReason::BadLength,
                format!("transport datagram of {size} bytes"),
            ));
        }
        let (msg_type, index, counter) = parse_header(datagram).expect("length checked");
        let fast = msg_type == TRANSPORT
            && matches!(&self.current, Some(k) if k.local_index == index && now < k.expires_at);
        let slot = if fast {
            Slot::Current
        } else {
            if msg_type != TRANSPORT {
                return Err(self.drop(
                    DropReason::BadType,
                    format!("message type {msg_type} is not transport"),
                ));
            }
            let Some(slot) = self.lookup(index) else {
                return Err(self.drop(
                    DropReason::UnknownIndex,
                    format!("no keypair with index {index}"),
                ));
            };
            if now >= self.slot(slot).map_or(f64::NEG_INFINITY, |k| k.expires_at) {
                return Err(self.drop(
                    DropReason::Expired,
                    format!("keypair {index} has expired"),
                ));
            }
            slot
        };
        let reject = self.limits.reject_after_messages;
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(&datagram[..HEADER_SIZE]);
        let kp = self.slot_mut(slot).expect("slot found above");
        let Some(len) = kp.recv.open_in_place(counter, &header, &mut datagram[HEADER_SIZE..])
        else {
            return Err(self.drop(
                DropReason::DecryptFailed,
                "transport packet failed authentication".into(),
            ));
        };
        // Only an authentic packet may move the replay window.
        if !kp.replay.validate_counter(counter, reject) {
            if counter >= reject {
                return Err(self.drop(
                    DropReason::Expired,
                    format!("counter {counter} is past the limit"),
                ));
            }
            return Err(self.drop(
                DropReason::Replay,
                format!("counter {counter} replayed or too old"),
            ));
        }
        self.stats.packets_received += 1;
        if len > 0 && self.keepalive_due.is_none() {
            self.keepalive_due = Some(now + self.limits.keepalive_timeout);
        }
        let promoted = slot == Slot::Next;
        if promoted {
            self.previous = self.current.take();
            self.current = self.next.take();
            self.rekey_signalled = false;
            self.stats.keypairs_promoted += 1;
        }
        Ok(Opened { start: HEADER_SIZE, len, promoted, counter })
    }

    fn rekey_deadline(&self, kp: &Keypair) -> f64 {
        let mut delay = self.limits.rekey_after_time;
        if !kp.is_initiator {
            delay += self.limits.responder_rekey_delay;
        }
        kp.created_at + delay
    }

    pub fn needs_rekey(&self, now: f64) -> bool {
        match self.current.as_deref() {
            None => false,
            Some(kp) => {
                kp.send_counter >= self.limits.rekey_after_messages
                    || now >= self.rekey_deadline(kp)
            }
        }
    }

    pub fn needs_keepalive(&self, now: f64) -> bool {
        matches!(self.keepalive_due, Some(due) if now >= due) && self.current.is_some()
    }

    pub fn get_timer(&self) -> Option<f64> {
        let mut deadline: Option<f64> = None;
        let mut fold = |d: f64| deadline = Some(deadline.map_or(d, |x: f64| x.min(d)));
        for kp in self.live() {
            fold(kp.expires_at);
        }
        if let Some(current) = self.current.as_deref() {
            if !self.rekey_signalled {
                fold(self.rekey_deadline(current));
            }
            if let Some(due) = self.keepalive_due {
                fold(due);
            }
        }
        deadline
    }

    pub fn handle_timer(&mut self, now: f64) {
        let mut expired = 0;
        for slot in [&mut self.previous, &mut self.current, &mut self.next] {
            if matches!(slot, Some(k) if k.expires_at <= now) {
                *slot = None;
                expired += 1;
            }
        }
        self.stats.keypairs_expired += expired;
        match self.current.as_deref() {
            None => self.keepalive_due = None,
            Some(kp) => {
                if now >= self.rekey_deadline(kp) {
                    self.rekey_signalled = true;
                }
            }
        }
    }

    pub fn keepalive_due(&self) -> Option<f64> {
        self.keepalive_due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SessionCore, SessionCore) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut i = SessionCore::new(Limits::default()).unwrap();
        let mut r = SessionCore::new(Limits::default()).unwrap();
        i.install(&Keys { send_key: &a, recv_key: &b, local_index: 1, remote_index: 2, is_initiator: true }, 0.0).unwrap();
        r.install(&Keys { send_key: &b, recv_key: &a, local_index: 2, remote_index: 1, is_initiator: false }, 0.0).unwrap();
        let mut ka = r.seal(b"", 0.0).unwrap();
        assert!(i.open_in_place(&mut ka, 0.0).unwrap().promoted);
        (i, r)
    }

    #[test]
    fn round_trip_and_replay() {
        let (mut i, mut r) = pair();
        let mut d = i.seal(b"hello", 1.0).unwrap();
        let copy = d.clone();
        let o = r.open_in_place(&mut d, 1.0).unwrap();
        assert_eq!(&d[o.start..o.start + o.len], b"hello");
        let mut again = copy;
        assert_eq!(r.open_in_place(&mut again, 1.0).unwrap_err().reason, DropReason::Replay);
    }
}
