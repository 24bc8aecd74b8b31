//! Inner frames, zero-copy (the Rust twin of `x0tta6bl4.protocol.frames`).
//!
//! A plaintext is `(type u8 ‖ length u16 ‖ body[length])*`. Decoding is as strict as the
//! reference and bounded by the input: the first invalid frame rejects the whole plaintext
//! with `bad_frame` (or `unknown_frame` for an unknown type below 0x80); types 0x80..0xFF are
//! skipped. Frames borrow from the plaintext; nothing is allocated per frame except the
//! duplicate check of LSDB_* origins.

use std::collections::HashSet;
use std::ops::Range;

pub const HEADER: usize = 3;
pub const MAX_NODE_ID: usize = 64;
pub const IGNORABLE: u8 = 0x80;
pub const HEARTBEAT_ECHO: u8 = 0x01;
pub const HEARTBEAT_PROBE: u8 = 0x02;
pub const HEARTBEAT_BODY: usize = 13;

pub const PADDING: u8 = 0x00;
pub const HEARTBEAT: u8 = 0x01;
pub const LINK_STATE_ADVERT: u8 = 0x03;
pub const ROUTED: u8 = 0x04;
pub const APP_DATA: u8 = 0x05;
pub const FRAGMENT: u8 = 0x06;
pub const LSDB_SUMMARY: u8 = 0x07;
pub const LSDB_ANNOUNCE: u8 = 0x08;
pub const LSDB_REQUEST: u8 = 0x09;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub seq: u32,
    pub echo: Option<(u32, u32)>,
    pub probe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed<'a> {
    pub src: &'a str,
    pub dst: &'a str,
    pub ttl: u8,
    pub flags: u8,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Padding(usize),
    Heartbeat(Heartbeat),
    LinkStateAdvert(&'a [u8]),
    Routed(Routed<'a>),
    AppData { channel: u16, payload: &'a [u8] },
    Fragment { msg_id: u32, total: u16, offset: u16, data: &'a [u8] },
    /// LSDB_SUMMARY / ANNOUNCE / REQUEST: the frame type and the validated entries' body.
    Entries { kind: u8, body: &'a [u8] },
}

#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    /// `bad_frame` or `unknown_frame`.
    pub reason: &'static str,
    pub message: String,
}

fn bad(message: impl Into<String>) -> FrameError {
    FrameError { reason: "bad_frame", message: message.into() }
}

#[inline]
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn routed(body: &[u8]) -> Result<Routed<'_>, FrameError> {
    let mut pos = 0;
    let mut ids: [&str; 2] = ["", ""];
    for (i, what) in ["source", "destination"].iter().enumerate() {
        if pos >= body.len() {
            return Err(bad(format!("ROUTED frame ends before the {what} node id")));
        }
        let size = body[pos] as usize;
        pos += 1;
        if !(1..=MAX_NODE_ID).contains(&size) || pos + size > body.len() {
            return Err(bad(format!("ROUTED frame has a bad {what} node id length")));
        }
        ids[i] = std::str::from_utf8(&body[pos..pos + size])
            .map_err(|_| bad(format!("ROUTED {what} node id is not UTF-8")))?;
        pos += size;
    }
    if pos + 2 > body.len() {
        return Err(bad("ROUTED frame ends before ttl and flags"));
    }
    Ok(Routed { src: ids[0], dst: ids[1], ttl: body[pos], flags: body[pos + 1], payload: &body[pos + 2..] })
}

/// Validate an LSDB_* body: `(origin_len u8 ‖ origin ‖ seq u64)*`, origins distinct UTF-8.
pub fn check_entries(body: &[u8]) -> Result<(), FrameError> {
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut pos = 0;
    while pos < body.len() {
        let size = body[pos] as usize;
        pos += 1;
        if !(1..=MAX_NODE_ID).contains(&size) || pos + size + 8 > body.len() {
            return Err(bad("LSDB_SUMMARY entry with a bad length"));
        }
        let origin = &body[pos..pos + size];
        if std::str::from_utf8(origin).is_err() {
            return Err(bad("LSDB_SUMMARY origin is not UTF-8"));
        }
        if !seen.insert(origin) {
            return Err(bad("LSDB_SUMMARY lists an origin twice"));
        }
        pos += size + 8;
    }
    Ok(())
}

/// Iterate an LSDB_* body already checked by [`check_entries`].
pub fn entries(body: &[u8]) -> impl Iterator<Item = (&str, u64)> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= body.len() {
            return None;
        }
        let size = body[pos] as usize;
        let origin = std::str::from_utf8(&body[pos + 1..pos + 1 + size]).unwrap_or("");
        let mut s = [0u8; 8];
        s.copy_from_slice(&body[pos + 1 + size..pos + 9 + size]);
        pos += size + 9;
        Some((origin, u64::from_be_bytes(s)))
    })
}

fn body<'a>(kind: u8, b: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
    Ok(Some(match kind {
        APP_DATA => {
            if b.len() < 2 {
                return Err(bad("APP_DATA frame shorter than its channel"));
            }
            Frame::AppData { channel: be16(b), payload: &b[2..] }
        }
        HEARTBEAT => {
            if b.len() != HEARTBEAT_BODY {
                return Err(bad(format!("heartbeat frame body of {} bytes", b.len())));
            }
            let (seq, flags, echo_seq, delay) = (be32(b), b[4], be32(&b[5..]), be32(&b[9..]));
            if flags & !(HEARTBEAT_ECHO | HEARTBEAT_PROBE) != 0 {
                return Err(bad(format!("heartbeat with reserved flags 0x{flags:02x}")));
            }
            let probe = flags & HEARTBEAT_PROBE != 0;
            let echo = if flags & HEARTBEAT_ECHO != 0 {
                Some((echo_seq, delay))
            } else {
                if echo_seq != 0 || delay != 0 {
                    return Err(bad("heartbeat echo fields set without the ECHO flag"));
                }
                None
            };
            Frame::Heartbeat(Heartbeat { seq, echo, probe })
        }
        ROUTED => Frame::Routed(routed(b)?),
        LSDB_SUMMARY | LSDB_ANNOUNCE | LSDB_REQUEST => {
            check_entries(b)?;
            Frame::Entries { kind, body: b }
        }
        FRAGMENT => {
            if b.len() <= 8 {
                return Err(bad("FRAGMENT frame without data"));
            }
            let (msg_id, total, offset) = (be32(b), be16(&b[4..]), be16(&b[6..]));
            let data = &b[8..];
            if offset as usize + data.len() > total as usize {
                return Err(bad("FRAGMENT data runs past its message's total"));
            }
            Frame::Fragment { msg_id, total, offset, data }
        }
        LINK_STATE_ADVERT => Frame::LinkStateAdvert(b),
        PADDING => {
            if b.iter().any(|&x| x != 0) {
                return Err(bad("PADDING frame with non-zero bytes"));
            }
            Frame::Padding(b.len())
        }
        k if k & IGNORABLE != 0 => return Ok(None),
        k => {
            return Err(FrameError {
                reason: "unknown_frame",
                message: format!("unknown frame type 0x{k:02x}"),
            })
        }
    }))
}

/// Decode `data` into `out` as `(frame, byte range of its encoding)`; on error `out` is
/// cleared.
pub fn decode<'a>(
    data: &'a [u8],
    out: &mut Vec<(Frame<'a>, Range<usize>)>,
) -> Result<(), FrameError> {
    out.clear();
    let mut pos = 0;
    let end = data.len();
    while pos < end {
        if pos + HEADER > end {
            out.clear();
            return Err(bad("truncated frame header"));
        }
        let kind = data[pos];
        let length = be16(&data[pos + 1..]) as usize;
        let start = pos;
        pos += HEADER;
        if pos + length > end {
            out.clear();
            return Err(bad(format!("frame length {length} runs past the plaintext")));
        }
        match body(kind, &data[pos..pos + length]) {
            Ok(Some(frame)) => out.push((frame, start..pos + length)),
            Ok(None) => {}
            Err(e) => {
                out.clear();
                return Err(e);
            }
        }
        pos += length;
    }
    Ok(())
}

// --- encoding ---------------------------------------------------------------------------------

/// Append a HEARTBEAT frame.
pub fn put_heartbeat(out: &mut Vec<u8>, hb: Heartbeat) {
    let mut flags = if hb.probe { HEARTBEAT_PROBE } else { 0 };
    let (echo_seq, delay) = match hb.echo {
        Some(e) => {
            flags |= HEARTBEAT_ECHO;
            e
        }
        None => (0, 0),
    };
    out.extend_from_slice(&[HEARTBEAT, 0, HEARTBEAT_BODY as u8]);
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&echo_seq.to_be_bytes());
    out.extend_from_slice(&delay.to_be_bytes());
}

/// Append a ROUTED frame; false (nothing appended) if a field is out of range.
pub fn put_routed(out: &mut Vec<u8>, src: &str, dst: &str, ttl: u8, flags: u8, payload: &[u8]) -> bool {
    let body = 2 + src.len() + dst.len() + 2 + payload.len();
    if !(1..=MAX_NODE_ID).contains(&src.len()) || !(1..=MAX_NODE_ID).contains(&dst.len()) || body > 0xFFFF {
        return false;
    }
    out.push(ROUTED);
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.push(src.len() as u8);
    out.extend_from_slice(src.as_bytes());
    out.push(dst.len() as u8);
    out.extend_from_slice(dst.as_bytes());
    out.extend_from_slice(&[ttl, flags]);
    out.extend_from_slice(payload);
    true
}

/// Append an APP_DATA frame; false if the payload is too large for the u16 length.
pub fn put_app_data(out: &mut Vec<u8>, channel: u16, payload: &[u8]) -> bool {
    let body = 2 + payload.len();
    if body > 0xFFFF {
        return false;
    }
    out.push(APP_DATA);
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(payload);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_round_trip_and_strictness() {
        let mut b = Vec::new();
        put_heartbeat(&mut b, Heartbeat { seq: 7, echo: Some((3, 99)), probe: true });
        put_app_data(&mut b, 5, b"xy");
        let mut out = Vec::new();
        decode(&b, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, Frame::Heartbeat(Heartbeat { seq: 7, echo: Some((3, 99)), probe: true }));
        let mut bad = b.clone();
        bad.push(0x10);
        let mut out2 = Vec::new();
        assert_eq!(decode(&bad, &mut out2).unwrap_err().reason, "bad_frame");
        assert!(out2.is_empty());
        assert_eq!(decode(&[0x10, 0, 0], &mut out2).unwrap_err().reason, "unknown_frame");
        decode(&[0x90, 0, 1, 7], &mut out2).unwrap();
        assert!(out2.is_empty());
    }
}
