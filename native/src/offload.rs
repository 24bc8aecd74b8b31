//! TUN offloads (`IFF_VNET_HDR`): the virtio-net header, segmentation of the kernel's TCP and
//! UDP super-packets (TSO/USO) and coalescing of received TCP segments (GRO) — the user-space
//! half of what a NIC driver does. wireguard-go's `tun/offload_linux.go` is the model; this is
//! our own code, IPv4 only (the overlay carries IPv4).
//!
//! With offloads on, a read from the TUN returns a 10-byte [`VnetHdr`] and either one IP
//! packet or a *super-packet*: one IP/TCP (or IP/UDP) header and up to 64 KB of payload, to be
//! cut into `gso_size` pieces ([`split`]). A write takes the same header: we write many TCP
//! segments of one flow as one super-packet ([`Coalescer`]), so the kernel's TCP receives one
//! buffer where it would have received ~45, and the TUN costs one system call instead of ~45.
//!
//! Checksums: segments we cut get full IPv4 and TCP/UDP checksums (the receiver's kernel checks
//! them as on any packet); segments we coalesce must carry valid checksums, and the written
//! super-packet asks for checksum completion (`NEEDS_CSUM`), which for local delivery the
//! kernel treats as verified — so each coalesced segment's checksum is verified here first.
//! Everything is bounded by the input: malformed headers give an error, never a panic.

use std::collections::HashMap;

/// `sizeof(struct virtio_net_hdr)`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum from `csum_start` to the end, stored at
/// `csum_start + csum_offset` (which holds the pseudo-header sum).
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// The largest IPv4 packet (the total length field).
pub const MAX_IP_PACKET: usize = 65_535;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr` (host byte order: the TUN's default on every host we run on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        if b.len() < VNET_HDR_LEN {
            return None;
        }
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

// --- the Internet checksum (RFC 1071) ------------------------------------------------------------

/// Add `data` to a one's-complement running sum. Words are read in host order, 8 bytes at a
/// time (the sum is byte-order independent, RFC 1071 §2(B)); `data` must start at an even
/// offset of the checksummed stream.
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(v);
        acc = s + carry as u64;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        let (s, carry) = acc.overflowing_add(u64::from_ne_bytes(b));
        acc = s + carry as u64;
    }
    acc
}

/// Fold a running sum to 16 bits, as the two bytes to store (not complemented).
#[inline]
pub fn fold(acc: u64) -> [u8; 2] {
    let mut s = (acc >> 32) + (acc & 0xFFFF_FFFF);
    s = (s >> 32) + (s & 0xFFFF_FFFF);
    s = (s >> 16) + (s & 0xFFFF);
    s = (s >> 16) + (s & 0xFFFF);
    (s as u16).to_ne_bytes()
}

/// The checksum field value for a sum taken with the field zeroed.
#[inline]
pub fn finish(acc: u64) -> [u8; 2] {
    let f = fold(acc);
    [!f[0], !f[1]]
}

/// The IPv4 pseudo-header's sum (source, destination, protocol, upper-layer length).
#[inline]
pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let l = (len as u16).to_be_bytes();
    let b = [src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, proto, l[0], l[1]];
    sum(&b, 0)
}

/// Recompute the IPv4 header checksum of `ip[..ihl]`.
#[inline]
pub fn ipv4_header_checksum(ip: &mut [u8], ihl: usize) {
    ip[10] = 0;
    ip[11] = 0;
    let c = finish(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c);
}

/// Does the TCP/UDP checksum of this IPv4 packet verify?
pub fn l4_checksum_ok(ip: &[u8], ihl: usize, proto: u8) -> bool {
    let l4 = &ip[ihl..];
    let acc = sum(l4, pseudo_sum(&ip[12..16], &ip[16..20], proto, l4.len()));
    fold(acc) == [0xFF, 0xFF]
}

// --- segmentation (TUN read) ---------------------------------------------------------------------

/// Why a packet read from the TUN could not be cut into segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// Shorter than the virtio-net header.
    Short,
    /// Inconsistent header (lengths, checksum position, GSO fields).
    BadHeader,
    /// A GSO type we do not cut (IPv6, legacy UFO).
    Unsupported,
    /// Segments would be larger than the overlay carries (`gso_size` beyond the MTU).
    Oversize,
}

impl SplitError {
    pub fn counter(self) -> &'static str {
        match self {
            SplitError::Short => "tun_short_packet",
            SplitError::BadHeader => "tun_bad_gso",
            SplitError::Unsupported => "tun_unsupported_gso",
            SplitError::Oversize => "tun_gso_oversize",
        }
    }
}

/// Cut one TUN read (`VnetHdr` + packet) into IP packets of at most one segment each, calling
/// `emit` with each (built in `scratch`). Without GSO the packet is emitted once, its checksum
/// completed if the kernel left it partial (a packet beyond the MTU is the caller's to refuse:
/// it answers with ICMP "fragmentation needed"). A super-packet whose segments would exceed
/// `max_segment` bytes (the overlay MTU) is refused whole: nothing is emitted. Returns the
/// number of packets emitted.
pub fn split(read: &mut [u8], max_segment: usize, scratch: &mut Vec<u8>, mut emit: impl FnMut(&[u8])) -> Result<usize, SplitError> {
    let hdr = VnetHdr::decode(read).ok_or(SplitError::Short)?;
    let pkt = &mut read[VNET_HDR_LEN..];
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            let start = hdr.csum_start as usize;
            let at = start + hdr.csum_offset as usize;
            if at + 2 > pkt.len() || start >= pkt.len() {
                return Err(SplitError::BadHeader);
            }
            let c = finish(sum(&pkt[start..], 0));
            pkt[at..at + 2].copy_from_slice(&c);
        }
        emit(pkt);
        return Ok(1);
    }
    let gso = hdr.gso_type & !GSO_ECN;
    if gso != GSO_TCPV4 && gso != GSO_UDP_L4 {
        return Err(SplitError::Unsupported);
    }
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return Err(SplitError::Unsupported);
    }
    let ihl = ((pkt[0] & 0x0F) as usize) * 4;
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    if ihl < 20 || total != pkt.len() || hdr.gso_size == 0 {
        return Err(SplitError::BadHeader);
    }
    let proto = pkt[9];
    let l4_len = match (gso, proto) {
        (GSO_TCPV4, PROTO_TCP) => {
            if pkt.len() < ihl + 20 {
                return Err(SplitError::BadHeader);
            }
            let thl = ((pkt[ihl + 12] >> 4) as usize) * 4;
            if thl < 20 || pkt.len() < ihl + thl {
                return Err(SplitError::BadHeader);
            }
            thl
        }
        (GSO_UDP_L4, PROTO_UDP) => 8,
        _ => return Err(SplitError::BadHeader),
    };
    let hl = ihl + l4_len;
    if pkt.len() < hl {
        return Err(SplitError::BadHeader);
    }
    let gso_size = hdr.gso_size as usize;
    let payload_len = pkt.len() - hl;
    if payload_len == 0 {
        return Err(SplitError::BadHeader);
    }
    if hl + gso_size.min(payload_len) > max_segment {
        return Err(SplitError::Oversize);
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let (head, payload) = pkt.split_at(hl);
    let mut n = 0usize;
    let mut seq = if proto == PROTO_TCP { u32::from_be_bytes([head[ihl + 4], head[ihl + 5], head[ihl + 6], head[ihl + 7]]) } else { 0 };
    let segments = payload_len.div_ceil(gso_size);
    for (i, chunk) in payload.chunks(gso_size).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(head);
        scratch.extend_from_slice(chunk);
        let seg = &mut scratch[..];
        let total = hl + chunk.len();
        seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        // Each segment its own IP id (as the kernel's GSO does); DF segments ignore it.
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        ipv4_header_checksum(seg, ihl);
        let l4 = total - ihl;
        if proto == PROTO_TCP {
            seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
            seq = seq.wrapping_add(chunk.len() as u32);
            let mut flags = seg[ihl + 13];
            if i + 1 < segments {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            seg[ihl + 13] = flags;
            seg[ihl + 16] = 0;
            seg[ihl + 17] = 0;
            let c = finish(sum(&seg[ihl..], pseudo_sum(&seg[12..16], &seg[16..20], PROTO_TCP, l4)));
            seg[ihl + 16..ihl + 18].copy_from_slice(&c);
        } else {
            seg[ihl + 4..ihl + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
            seg[ihl + 6] = 0;
            seg[ihl + 7] = 0;
            let mut c = finish(sum(&seg[ihl..], pseudo_sum(&seg[12..16], &seg[16..20], PROTO_UDP, l4)));
            if c == [0, 0] {
                c = [0xFF, 0xFF]; // RFC 768: zero means "no checksum"
            }
            seg[ihl + 6..ihl + 8].copy_from_slice(&c);
        }
        emit(seg);
        n += 1;
    }
    Ok(n)
}

// --- coalescing (TUN write) ----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Flow {
    src: [u8; 4],
    dst: [u8; 4],
    ports: [u8; 4],
}

struct Item {
    /// `VNET_HDR_LEN` bytes of room, then the (growing) IP packet.
    buf: Vec<u8>,
    /// 0: a packet written as it came (no GSO).
    gso_size: usize,
    segments: usize,
    ihl: usize,
    hl: usize,
    next_seq: u32,
    open: bool,
}

/// Packets on their way into the TUN: consecutive in-order TCP segments of one flow become one
/// super-packet; everything else is written as it came, in arrival order per flow.
pub struct Coalescer {
    items: Vec<Item>,
    flows: HashMap<Flow, usize>,
    free: Vec<Vec<u8>>,
    /// Segments merged into a previous one (statistics).
    pub merged: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP segment that may join a super-packet: IPv4 without options or fragmentation, ACK
/// (and maybe PSH) only, a payload, a valid checksum. `(ihl, tcp header length, payload length)`.
fn coalescable(p: &[u8]) -> Option<(usize, usize, usize)> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != PROTO_TCP {
        return None;
    }
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    // No fragment: MF clear and offset 0 (DF may be set).
    if total != p.len() || u16::from_be_bytes([p[6], p[7]]) & 0x3FFF != 0 {
        return None;
    }
    let thl = ((p[32] >> 4) as usize) * 4;
    let flags = p[33];
    if thl < 20 || 20 + thl >= total || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    if !l4_checksum_ok(p, 20, PROTO_TCP) {
        return None;
    }
    Some((20, thl, total - 20 - thl))
}

impl Coalescer {
    pub fn new() -> Self {
        Coalescer { items: Vec::new(), flows: HashMap::new(), free: Vec::new(), merged: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    fn new_item(&mut self, p: &[u8], gso: Option<(usize, usize, usize)>) -> usize {
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.resize(VNET_HDR_LEN, 0);
        buf.extend_from_slice(p);
        let (gso_size, ihl, hl, next_seq) = match gso {
            Some((ihl, thl, payload)) => {
                let seq = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
                (payload, ihl, ihl + thl, seq.wrapping_add(payload as u32))
            }
            None => (0, 0, 0, 0),
        };
        let open = gso.is_some() && p[33] & TCP_PSH == 0;
        self.items.push(Item { buf, gso_size, segments: 1, ihl, hl, next_seq, open });
        self.items.len() - 1
    }

    /// Queue one IP packet (already checked by the caller: IPv4, lengths consistent);
    /// `merge`: it may join a super-packet (else it is written as it came).
    pub fn push(&mut self, p: &[u8], merge: bool) {
        let flow = (p.len() >= 24 && p[9] == PROTO_TCP && p[0] >> 4 == 4).then(|| Flow {
            src: [p[12], p[13], p[14], p[15]],
            dst: [p[16], p[17], p[18], p[19]],
            ports: {
                let ihl = ((p[0] & 0x0F) as usize) * 4;
                if p.len() >= ihl + 4 {
                    [p[ihl], p[ihl + 1], p[ihl + 2], p[ihl + 3]]
                } else {
                    [0; 4]
                }
            },
        });
        let Some(flow) = flow.filter(|_| merge) else {
            self.new_item(p, None);
            return;
        };
        let Some(seg) = coalescable(p) else {
            // Written as it came; later segments of the flow must not jump ahead of it.
            self.flows.remove(&flow);
            self.new_item(p, None);
            return;
        };
        if let Some(&i) = self.flows.get(&flow) {
            if self.try_append(i, p, seg) {
                self.merged += 1;
                return;
            }
        }
        let i = self.new_item(p, Some(seg));
        self.flows.insert(flow, i);
    }

    fn try_append(&mut self, i: usize, p: &[u8], (ihl, thl, payload): (usize, usize, usize)) -> bool {
        let it = &mut self.items[i];
        if !it.open || it.gso_size == 0 {
            return false;
        }
        let h = &it.buf[VNET_HDR_LEN..VNET_HDR_LEN + it.hl];
        let seq = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
        let fits = it.buf.len() - VNET_HDR_LEN + payload <= MAX_IP_PACKET;
        if ihl != it.ihl
            || ihl + thl != it.hl
            || seq != it.next_seq
            || payload > it.gso_size
            || !fits
            // same TOS, DF and TTL
            || h[1] != p[1]
            || h[6] != p[6]
            || h[8] != p[8]
            // same acknowledgement number and window
            || h[ihl + 8..ihl + 12] != p[ihl + 8..ihl + 12]
            || h[ihl + 14..ihl + 16] != p[ihl + 14..ihl + 16]
            // same options (timestamps included)
            || h[ihl + 20..it.hl] != p[ihl + 20..ihl + thl]
        {
            return false;
        }
        it.buf.extend_from_slice(&p[ihl + thl..]);
        it.segments += 1;
        it.next_seq = seq.wrapping_add(payload as u32);
        let psh = p[ihl + 13] & TCP_PSH != 0;
        if psh {
            it.buf[VNET_HDR_LEN + ihl + 13] |= TCP_PSH;
        }
        if psh || payload < it.gso_size {
            it.open = false;
        }
        true
    }

    /// Write every queued item (header + packet) with `write`, in arrival order; empties the
    /// queue. `vnet`: the TUN takes a virtio-net header (else items are plain packets and are
    /// never merged: callers push into a coalescer only when `vnet` is true).
    pub fn flush(&mut self, vnet: bool, mut write: impl FnMut(&[u8])) {
        for mut it in self.items.drain(..) {
            if it.segments > 1 {
                let total = it.buf.len() - VNET_HDR_LEN;
                let ihl = it.ihl;
                let p = &mut it.buf[VNET_HDR_LEN..];
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ipv4_header_checksum(p, ihl);
                // NEEDS_CSUM: the field holds the pseudo-header sum; the kernel completes it.
                let seed = fold(pseudo_sum(&p[12..16], &p[16..20], PROTO_TCP, total - ihl));
                p[ihl + 16..ihl + 18].copy_from_slice(&seed);
                let hdr = VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: GSO_TCPV4,
                    hdr_len: it.hl as u16,
                    gso_size: it.gso_size as u16,
                    csum_start: ihl as u16,
                    csum_offset: 16,
                };
                it.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.encode());
            } else {
                it.buf[..VNET_HDR_LEN].fill(0);
            }
            if vnet {
                write(&it.buf);
            } else {
                write(&it.buf[VNET_HDR_LEN..]);
            }
            if self.free.len() < 64 && it.buf.capacity() <= 2 * (MAX_IP_PACKET + VNET_HDR_LEN) {
                self.free.push(it.buf);
            }
        }
        self.flows.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4/TCP segment (10.0.0.1:1000 -> 10.0.0.2:5201) with a valid checksum.
    pub(crate) fn tcp(seq: u32, flags: u8, payload: &[u8], opts: &[u8]) -> Vec<u8> {
        let thl = 20 + opts.len();
        let total = 20 + thl + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = ((thl / 4) as u8) << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p[40..40 + opts.len()].copy_from_slice(opts);
        p[20 + thl..].copy_from_slice(payload);
        ipv4_header_checksum(&mut p, 20);
        let c = finish(sum(&p[20..], pseudo_sum(&[10, 0, 0, 1], &[10, 0, 0, 2], PROTO_TCP, total - 20)));
        p[36..38].copy_from_slice(&c);
        p
    }

    fn ip_ok(p: &[u8]) -> bool {
        fold(sum(&p[..20], 0)) == [0xFF, 0xFF]
    }

    #[test]
    fn checksum_matches_the_reference_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 sums to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(u16::from_be_bytes(fold(sum(&b, 0))), 0xddf2);
        // Odd length: the last byte is the high byte of a word.
        assert_eq!(u16::from_be_bytes(fold(sum(&[0x01, 0x02, 0x03], 0))), 0x0402);
        let p = tcp(1, TCP_ACK, b"hello", &[]);
        assert!(l4_checksum_ok(&p, 20, PROTO_TCP) && ip_ok(&p));
    }

    #[test]
    fn split_cuts_a_tcp_super_packet_into_valid_segments() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let big = tcp(1_000, TCP_ACK | TCP_PSH, &payload, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        let mut read = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 52, gso_size: 1200, csum_start: 20, csum_offset: 16 }
            .encode()
            .to_vec();
        read.extend_from_slice(&big);
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = split(&mut read, MAX_IP_PACKET, &mut Vec::new(), |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 5);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(ip_ok(s) && l4_checksum_ok(s, 20, PROTO_TCP), "segment {i}");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(u32::from_be_bytes([s[24], s[25], s[26], s[27]]), 1_000 + 1200 * i as u32);
            assert_eq!(s[33] & TCP_PSH != 0, i == 4, "PSH only on the last");
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(joined, payload);
        // The coalescer puts them back together into one super-packet.
        let mut c = Coalescer::new();
        for s in &segs {
            c.push(s, true);
        }
        assert_eq!(c.len(), 1);
        let mut written = Vec::new();
        c.flush(true, |w| written.push(w.to_vec()));
        let w = &written[0];
        let h = VnetHdr::decode(w).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len, h.csum_start, h.csum_offset), (GSO_TCPV4, 1200, 52, 20, 16));
        let p = &w[VNET_HDR_LEN..];
        assert!(ip_ok(p));
        assert_eq!(&p[52..], &payload[..]);
        assert_eq!(p[33] & TCP_PSH, TCP_PSH);
        // The seed + the data sums to the full checksum.
        let mut full = p.to_vec();
        let c = finish(sum(&full[20..], 0));
        full[36..38].copy_from_slice(&c);
        assert!(l4_checksum_ok(&full, 20, PROTO_TCP));
    }

    #[test]
    fn split_without_gso_completes_a_partial_checksum() {
        let mut p = tcp(5, TCP_ACK, b"abc", &[]);
        let seed = fold(pseudo_sum(&p[12..16], &p[16..20], PROTO_TCP, p.len() - 20));
        p[36..38].copy_from_slice(&seed);
        let mut read = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() }.encode().to_vec();
        read.extend_from_slice(&p);
        let mut out = Vec::new();
        split(&mut read, MAX_IP_PACKET, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap();
        assert!(l4_checksum_ok(&out[0], 20, PROTO_TCP));
    }

    #[test]
    fn split_rejects_inconsistent_headers() {
        let big = tcp(1, TCP_ACK, &[0u8; 3000], &[]);
        for hdr in [
            VnetHdr { gso_type: GSO_TCPV4, gso_size: 0, ..Default::default() },
            VnetHdr { gso_type: GSO_UDP_L4, gso_size: 1000, ..Default::default() },
            VnetHdr { flags: F_NEEDS_CSUM, csum_start: 4000, ..Default::default() },
        ] {
            let mut read = hdr.encode().to_vec();
            read.extend_from_slice(&big);
            assert_eq!(split(&mut read, MAX_IP_PACKET, &mut Vec::new(), |_| {}), Err(SplitError::BadHeader));
        }
        let mut read = VnetHdr { gso_type: 4, gso_size: 1000, ..Default::default() }.encode().to_vec();
        read.extend_from_slice(&big);
        assert_eq!(split(&mut read, MAX_IP_PACKET, &mut Vec::new(), |_| {}), Err(SplitError::Unsupported));
        assert_eq!(split(&mut [0u8; 5], MAX_IP_PACKET, &mut Vec::new(), |_| {}), Err(SplitError::Short));
        // Segments beyond the overlay MTU: refused whole, nothing emitted; one byte less fits.
        for (gso_size, expect) in [(1361u16, Err(SplitError::Oversize)), (1360, Ok(3))] {
            let mut read = VnetHdr { gso_type: GSO_TCPV4, gso_size, ..Default::default() }.encode().to_vec();
            read.extend_from_slice(&big);
            let mut emitted = 0;
            assert_eq!(split(&mut read, 1400, &mut Vec::new(), |s| { assert!(s.len() <= 1400); emitted += 1 }), expect);
            assert_eq!(emitted, expect.unwrap_or(0));
        }
        // A super-packet smaller than one segment is judged by its own size.
        let small = tcp(1, TCP_ACK, &[0u8; 100], &[]);
        let mut read = VnetHdr { gso_type: GSO_TCPV4, gso_size: 9000, ..Default::default() }.encode().to_vec();
        read.extend_from_slice(&small);
        assert_eq!(split(&mut read, 1400, &mut Vec::new(), |_| {}), Ok(1));
    }

    #[test]
    fn split_cuts_udp() {
        let mut p = vec![0u8; 28 + 3000];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + 3000) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut read = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_UDP_L4, gso_size: 1400, csum_start: 20, csum_offset: 6, hdr_len: 28 }
            .encode()
            .to_vec();
        read.extend_from_slice(&p);
        let mut out = Vec::new();
        assert_eq!(split(&mut read, MAX_IP_PACKET, &mut Vec::new(), |s| out.push(s.to_vec())).unwrap(), 3);
        for s in &out {
            assert!(ip_ok(s) && l4_checksum_ok(s, 20, PROTO_UDP));
            assert_eq!(u16::from_be_bytes([s[24], s[25]]) as usize, s.len() - 20);
        }
        assert_eq!(out[2].len(), 28 + 200);
    }

    #[test]
    fn coalescer_keeps_order_and_refuses_what_must_stay_apart() {
        let a = tcp(100, TCP_ACK, &[1u8; 100], &[]);
        let b = tcp(200, TCP_ACK, &[2u8; 100], &[]);
        let gap = tcp(400, TCP_ACK, &[3u8; 100], &[]);
        let fin = tcp(500, TCP_ACK | TCP_FIN, &[4u8; 100], &[]);
        let after = tcp(600, TCP_ACK, &[5u8; 100], &[]);
        let mut bad = tcp(700, TCP_ACK, &[6u8; 100], &[]);
        bad[60] ^= 1; // checksum no longer verifies
        let mut c = Coalescer::new();
        for p in [&a, &b, &gap, &fin, &after, &bad] {
            c.push(p, true);
        }
        let mut written = Vec::new();
        c.flush(true, |w| written.push(w.to_vec()));
        let seqs: Vec<(u32, u8)> = written
            .iter()
            .map(|w| (u32::from_be_bytes([w[34], w[35], w[36], w[37]]), VnetHdr::decode(w).unwrap().gso_type))
            .collect();
        // a+b merged; the gap, the FIN, the one after the FIN and the bad one written alone.
        assert_eq!(seqs, vec![(100, GSO_TCPV4), (400, 0), (500, 0), (600, 0), (700, 0)]);
        assert_eq!(written[1].len(), VNET_HDR_LEN + gap.len());
        assert_eq!(&written[2][VNET_HDR_LEN..], &fin[..]);
        // Without a vnet header items are plain packets.
        let mut c = Coalescer::new();
        c.push(&gap, true);
        let mut plain = Vec::new();
        c.flush(false, |w| plain.push(w.to_vec()));
        assert_eq!(plain, vec![gap.clone()]);
    }

    #[test]
    fn coalescer_stops_at_a_short_segment_and_at_the_size_limit() {
        let mut c = Coalescer::new();
        c.push(&tcp(0, TCP_ACK, &[0u8; 1000], &[]), true);
        c.push(&tcp(1000, TCP_ACK, &[0u8; 500], &[]), true);
        c.push(&tcp(1500, TCP_ACK, &[0u8; 1000], &[]), true);
        assert_eq!(c.len(), 2);
        let mut c = Coalescer::new();
        let mut seq = 0;
        for _ in 0..70 {
            c.push(&tcp(seq, TCP_ACK, &[0u8; 1000], &[]), true);
            seq += 1000;
        }
        let mut sizes = Vec::new();
        c.flush(true, |w| sizes.push(w.len() - VNET_HDR_LEN));
        assert!(sizes.iter().all(|s| *s <= MAX_IP_PACKET));
        assert_eq!(sizes.len(), 2);
    }
}
