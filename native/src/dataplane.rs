//! The packet path of one mesh node: the I/O thread, the keypair and forwarding tables, the
//! end-to-end sessions, heartbeat probes, the TUN device (wireguard-go `device/` and
//! boringtun `device/` are the models).
//!
//! Python (the control plane) owns handshakes, routing, identity and policy. It attaches the
//! [`SessionCore`]s it installs keys into (`attach`), installs the forwarding table
//! (`set_routes`) and the overlay map (`set_overlay`); this module does the rest per packet
//! and hands up, through a bounded queue and an eventfd, only what Python must see:
//! handshake datagrams, control frames (LSA, LSDB_*, FRAGMENT, HEARTBEAT), keypair
//! promotions, application datagrams on channels other than the TUN's, TUN packets for a
//! destination without an end-to-end session yet.
//!
//! Concurrency: one I/O thread reads (recvmmsg) and forwards (sendmmsg); Python threads call
//! in to configure and to send. Tables are behind an `RwLock`; each session behind its own
//! `Mutex` (the I/O thread never takes the GIL, so Python holding the GIL while waiting on a
//! session lock cannot deadlock). Memory is bounded: the hand-up queue holds at most
//! [`MAX_EVENTS`] events / [`MAX_EVENT_BYTES`] bytes (then drops and counts), tables are as
//! large as Python makes them, buffers are reused.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::frames::{self, Frame, Heartbeat};
use crate::offload::{self, Coalescer, VNET_HDR_LEN};
use crate::sys::{self, GsoRun, RecvBatch, BATCH};
use crate::transport::{SessionCore, DROP_REASONS, HEADER_SIZE, MIN_DATAGRAM_SIZE, TRANSPORT};

/// Events held for Python at most (then new ones are dropped: `handup_overflow`).
pub const MAX_EVENTS: usize = 16_384;
/// Bytes of events held for Python at most.
pub const MAX_EVENT_BYTES: usize = 32 << 20;
/// `x0tta6bl4.node.model.PING_CHANNEL`.
pub const PING_CHANNEL: u16 = 0xFFFF;
/// `x0tta6bl4.node.overlay.TUN_CHANNEL`.
pub const TUN_CHANNEL: u16 = 0x0800;
const PING_SIZE: usize = 13;
/// Seqs of heartbeats the data plane sends itself (answers to PROBEs) start here, far from
/// the failure detector's own (which start at 0); the peer echoes them and our detector
/// ignores the echo of a seq it did not send.
const NATIVE_HEARTBEAT_SEQ: u32 = 0x8000_0000;
const RECV_BUF: usize = 65_536;
/// A TUN read: the virtio-net header and the largest IPv4 packet.
const TUN_READ_BUF: usize = VNET_HDR_LEN + offload::MAX_IP_PACKET + 1;
/// Datagrams queued for one flush at most (then sent before more are built).
const OUTBOX_FLUSH: usize = 256;
/// A link's PROBEs are answered natively at most this often (seconds): a peer cannot make us
/// send more than it sends, and never more than 50 answers a second.
const PROBE_ANSWER_GAP: f64 = 0.02;

/// Counter names (`x0tta6bl4_node_packets_dropped_total{reason}` for the drops, the node's
/// counters for the rest); indices into [`Counters`].
pub const COUNTER_NAMES: &[&str] = &[
    "rx_datagrams",
    "tx_datagrams",
    "send_errors",
    "forwarded",
    "probes_answered",
    "handup_overflow",
    "unknown_index",
    "bad_frame",
    "unknown_frame",
    "ttl_expired",
    "no_route",
    "no_link",
    "e2e_bad_frame",
    "e2e_unknown_frame",
    "e2e_unexpected_frame",
    "bad_ping",
    "tun_packets_in",
    "tun_packets_out",
    "tun_bytes_in",
    "tun_bytes_out",
    "tun_short_packet",
    "tun_not_ipv4",
    "tun_bad_header",
    "tun_bad_length",
    "tun_spoofed_source",
    "tun_not_for_us",
    "tun_bad_source",
    "tun_no_destination",
    "tun_write_failed",
    "pings_answered",
    "recv_truncated",
    // offloads (not drops): TUN super-packets read and the segments cut from them, segments
    // merged into super-packets written, UDP_SEGMENT sends and UDP_GRO runs received
    "tun_gso_reads",
    "tun_gso_segments",
    "tun_writes",
    "tun_coalesced",
    "udp_gso_sends",
    "udp_gso_datagrams",
    "udp_gro_runs",
    "udp_gro_datagrams",
    "udp_gso_disabled",
    // TUN reads whose virtio-net header we cannot use (drops): inconsistent, a GSO type we do
    // not cut, segments larger than the overlay MTU
    "tun_bad_gso",
    "tun_unsupported_gso",
    "tun_gso_oversize",
    // per drop reason of the link / end-to-end sessions (bad_length ... expired)
    "bad_length",
    "bad_type",
    "decrypt_failed",
    "replay",
    "expired",
    "e2e_bad_length",
    "e2e_bad_type",
    "e2e_unknown_index",
    "e2e_decrypt_failed",
    "e2e_replay",
    "e2e_expired",
];

fn counter_index(name: &str) -> usize {
    COUNTER_NAMES.iter().position(|n| *n == name).unwrap_or(0)
}

pub struct Counters(Vec<AtomicU64>);

impl Counters {
    fn new() -> Self {
        Counters(COUNTER_NAMES.iter().map(|_| AtomicU64::new(0)).collect())
    }
    #[inline]
    pub fn add(&self, name: &str, n: u64) {
        if let Some(c) = self.0.get(counter_index(name)) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .zip(&self.0)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}

/// Which table a session belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Link,
    E2e,
}

/// One peer's session as the data plane holds it.
pub struct Peer {
    pub node_id: String,
    pub kind: Kind,
    pub session: Arc<Mutex<SessionCore>>,
    pub addr: Mutex<Option<SocketAddr>>,
    /// `f64` bits of the monotonic time of the last authentic packet; 0: never.
    last_received: AtomicU64,
    /// Python's failure detector says the link is up (our PROBE answers do not probe).
    pub up: AtomicBool,
    native_seq: AtomicU32,
    last_probe_answer: AtomicU64,
}

impl Peer {
    pub fn last_received(&self) -> Option<f64> {
        let bits = self.last_received.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }
}

/// The overlay address map of TUN mode (`x0tta6bl4.node.overlay.Overlay`).
#[derive(Default)]
pub struct Overlay {
    pub local_ip: [u8; 4],
    pub mtu: usize,
    pub by_ip: HashMap<[u8; 4], String>,
    pub ip_of: HashMap<String, [u8; 4]>,
}

#[derive(Default)]
pub struct Tables {
    links: HashMap<String, Arc<Peer>>,
    e2e: HashMap<String, Arc<Peer>>,
    link_index: HashMap<u32, Arc<Peer>>,
    e2e_index: HashMap<u32, Arc<Peer>>,
    routes: HashMap<String, String>,
    overlay: Option<Overlay>,
    blocked_ports: HashSet<u16>,
}

/// What is handed up to Python.
pub enum Event {
    /// A datagram the data plane does not handle (handshakes): `core.receive_datagram`.
    Datagram { data: Vec<u8>, addr: SocketAddr, t: f64 },
    /// Control frames of an authentic link packet (and/or its keypair promotion).
    Link { peer: String, plaintext: Vec<u8>, promoted: bool, t: f64, answered_probe: bool },
    /// An end-to-end datagram for us that is not for a native session (handshakes).
    E2eDatagram { src: String, payload: Vec<u8>, t: f64 },
    /// Frames of an authentic end-to-end packet for Python (other channels, pongs, promotion).
    E2e { src: String, plaintext: Vec<u8>, promoted: bool, t: f64 },
    /// A TUN packet for `dest` without an established end-to-end session (or too big).
    TunPacket { dest: String, packet: Vec<u8> },
}

impl Event {
    fn size(&self) -> usize {
        64 + match self {
            Event::Datagram { data, .. } => data.len(),
            Event::Link { plaintext, .. } | Event::E2e { plaintext, .. } => plaintext.len(),
            Event::E2eDatagram { payload, .. } => payload.len(),
            Event::TunPacket { packet, .. } => packet.len(),
        }
    }
}

/// The native echo benchmark's state (`x0tta6bl4 bench dataplane`).
pub struct EchoBench {
    pub dest: String,
    pub in_flight: HashMap<u32, f64>,
    pub next_seq: u32,
    pub done: u64,
    pub latencies: Vec<f64>,
    pub max_samples: usize,
    pub deadline: f64,
}

pub struct Config {
    pub node_id: String,
    pub ttl: u8,
}

/// Everything the I/O thread and the Python side share.
pub struct Shared {
    pub config: Config,
    /// The UDP socket; None once closed (the port is free again for a restart).
    sock: RwLock<Option<Arc<OwnedFd>>>,
    pub local_addr: SocketAddr,
    tun: Mutex<Option<Arc<OwnedFd>>>,
    tun_raw: AtomicI32,
    /// The TUN descriptor has `IFF_VNET_HDR` (reads and writes carry a virtio-net header).
    tun_vnet: AtomicBool,
    /// Offloads the kernel accepted for the TUN (`TUN_F_*`), 0 without.
    pub tun_offload: AtomicU32,
    /// Merge received TCP segments into super-packets for the TUN (with `tun_vnet`).
    tun_coalesce: AtomicBool,
    /// UDP_SEGMENT sends (off where the kernel refuses them: `udp_gso_disabled`).
    udp_gso: AtomicBool,
    /// The kernel knows UDP_SEGMENT.
    udp_gso_supported: bool,
    /// UDP_GRO is on for the socket.
    udp_gro: AtomicBool,
    wake: OwnedFd,
    pub notify: OwnedFd,
    pub tables: RwLock<Tables>,
    events: Mutex<(VecDeque<Event>, usize)>,
    pub counters: Counters,
    pub stop: AtomicBool,
    pub bench: Mutex<Option<EchoBench>>,
    pub bench_cv: Condvar,
}

/// Datagrams built during one batch, sent with one sendmmsg (UDP_SEGMENT runs where the
/// kernel allows), and the TUN packets to write (coalesced where the TUN takes offloads).
pub struct Outbox {
    packets: Vec<(Vec<u8>, SocketAddr)>,
    free: Vec<Vec<u8>>,
    runs: Vec<GsoRun>,
    tun: Coalescer,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox { packets: Vec::with_capacity(BATCH), free: Vec::new(), runs: Vec::new(), tun: Coalescer::new() }
    }
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.free.pop().unwrap_or_else(|| Vec::with_capacity(2048));
        b.clear();
        b
    }
    fn push(&mut self, buf: Vec<u8>, addr: SocketAddr) {
        self.packets.push((buf, addr));
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < OUTBOX_FLUSH {
            self.free.push(buf);
        }
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The IPv4 checks of `Overlay.outbound` / `inbound`: `(src, dst, total_length)`.
fn parse_ipv4(p: &[u8]) -> Result<([u8; 4], [u8; 4], usize), &'static str> {
    if p.len() < 20 {
        return Err("tun_short_packet");
    }
    if p[0] >> 4 != 4 {
        return Err("tun_not_ipv4");
    }
    let hl = ((p[0] & 0x0F) as usize) * 4;
    if hl < 20 || hl > p.len() {
        return Err("tun_bad_header");
    }
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    if total < hl || total > p.len() {
        return Err("tun_bad_length");
    }
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&p[12..16]);
    dst.copy_from_slice(&p[16..20]);
    Ok((src, dst, total))
}

impl Shared {
    pub fn new(config: Config, sock: OwnedFd) -> io::Result<Arc<Shared>> {
        sys::set_nonblocking(&sock)?;
        sys::set_buffer(&sock, libc::SO_RCVBUF, 4 << 20);
        sys::set_buffer(&sock, libc::SO_SNDBUF, 4 << 20);
        let std_sock = std::net::UdpSocket::from(sock);
        let local_addr = std_sock.local_addr()?;
        let sock = OwnedFd::from(std_sock);
        let udp_gro = sys::enable_udp_gro(&sock);
        let udp_gso = sys::udp_gso_supported(&sock);
        Ok(Arc::new(Shared {
            config,
            sock: RwLock::new(Some(Arc::new(sock))),
            local_addr,
            tun: Mutex::new(None),
            tun_raw: AtomicI32::new(-1),
            tun_vnet: AtomicBool::new(false),
            tun_offload: AtomicU32::new(0),
            tun_coalesce: AtomicBool::new(true),
            udp_gso: AtomicBool::new(udp_gso),
            udp_gso_supported: udp_gso,
            udp_gro: AtomicBool::new(udp_gro),
            wake: sys::eventfd()?,
            notify: sys::eventfd()?,
            tables: RwLock::new(Tables::default()),
            events: Mutex::new((VecDeque::new(), 0)),
            counters: Counters::new(),
            stop: AtomicBool::new(false),
            bench: Mutex::new(None),
            bench_cv: Condvar::new(),
        }))
    }

    pub fn udp_gso_enabled(&self) -> bool {
        self.udp_gso.load(Ordering::Relaxed)
    }

    pub fn udp_gro_enabled(&self) -> bool {
        self.udp_gro.load(Ordering::Relaxed)
    }

    /// Turn offloads on or off at run time (`bench tun --breakdown` measures each one): the
    /// TUN's (segmentation by the kernel and coalescing here), UDP_SEGMENT sends, UDP_GRO
    /// receives. A switch the kernel does not support stays off; returns the offloads now on.
    pub fn set_offload(&self, tun: Option<bool>, gso: Option<bool>, gro: Option<bool>) -> (u32, bool, bool) {
        if let Some(on) = tun {
            let fd = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(fd) = fd.filter(|_| self.tun_vnet.load(Ordering::SeqCst)) {
                let flags = if on { apply_tun_offload(&fd) } else { sys::tun_set_offload(&fd, 0).map(|_| 0).unwrap_or(0) };
                self.tun_offload.store(flags, Ordering::SeqCst);
            }
            self.tun_coalesce.store(on, Ordering::SeqCst);
        }
        if let Some(on) = gso {
            self.udp_gso.store(on && self.udp_gso_supported, Ordering::SeqCst);
        }
        if let Some(on) = gro {
            if let Some(sock) = self.socket() {
                let now = if on { sys::enable_udp_gro(&sock) } else { !sys::disable_udp_gro(&sock) };
                self.udp_gro.store(now, Ordering::SeqCst);
            }
        }
        (self.tun_offload.load(Ordering::SeqCst), self.udp_gso_enabled(), self.udp_gro_enabled())
    }

    pub fn socket(&self) -> Option<Arc<OwnedFd>> {
        self.sock.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Drop our reference to the socket (the I/O thread must have stopped): it closes.
    pub fn close_socket(&self) {
        *self.sock.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.set_tun(None).ok();
    }

    fn tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tables_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    // --- configuration (Python) ---------------------------------------------------------------

    /// Attach (or replace) the session of `node_id` in the table of `kind`.
    pub fn attach(&self, kind: Kind, node_id: &str, session: Arc<Mutex<SessionCore>>, addr: Option<SocketAddr>) {
        let peer = Arc::new(Peer {
            node_id: node_id.to_owned(),
            kind,
            session,
            addr: Mutex::new(addr),
            last_received: AtomicU64::new(0),
            up: AtomicBool::new(false),
            native_seq: AtomicU32::new(NATIVE_HEARTBEAT_SEQ),
            last_probe_answer: AtomicU64::new(0),
        });
        let mut t = self.tables_mut();
        let old = match kind {
            Kind::Link => t.links.insert(node_id.to_owned(), peer),
            Kind::E2e => t.e2e.insert(node_id.to_owned(), peer),
        };
        if let Some(old) = old {
            let index = match kind {
                Kind::Link => &mut t.link_index,
                Kind::E2e => &mut t.e2e_index,
            };
            index.retain(|_, p| !Arc::ptr_eq(p, &old));
        }
    }

    /// Forget `node_id`'s session of `kind` (and every index pointing to it).
    pub fn detach(&self, kind: Kind, node_id: &str) {
        let mut t = self.tables_mut();
        let old = match kind {
            Kind::Link => t.links.remove(node_id),
            Kind::E2e => t.e2e.remove(node_id),
        };
        if let Some(old) = old {
            let index = match kind {
                Kind::Link => &mut t.link_index,
                Kind::E2e => &mut t.e2e_index,
            };
            index.retain(|_, p| !Arc::ptr_eq(p, &old));
        }
    }

    /// Re-read the live local indices of `node_id`'s session (after an install or a timer).
    pub fn reindex(&self, kind: Kind, node_id: &str) {
        let mut t = self.tables_mut();
        let peer = match kind {
            Kind::Link => t.links.get(node_id).cloned(),
            Kind::E2e => t.e2e.get(node_id).cloned(),
        };
        let Some(peer) = peer else { return };
        let live = match peer.session.lock() {
            Ok(s) => s.local_indices(),
            Err(_) => Vec::new(),
        };
        let index = match kind {
            Kind::Link => &mut t.link_index,
            Kind::E2e => &mut t.e2e_index,
        };
        index.retain(|i, p| !Arc::ptr_eq(p, &peer) || live.contains(i));
        for i in live {
            index.insert(i, peer.clone());
        }
    }

    pub fn set_addr(&self, node_id: &str, addr: SocketAddr) {
        if let Some(p) = self.tables().links.get(node_id) {
            *p.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        }
    }

    pub fn set_link_up(&self, node_id: &str, up: bool) {
        if let Some(p) = self.tables().links.get(node_id) {
            p.up.store(up, Ordering::Relaxed);
        }
    }

    pub fn set_routes(&self, routes: HashMap<String, String>) {
        self.tables_mut().routes = routes;
    }

    pub fn set_overlay(&self, overlay: Option<Overlay>) {
        self.tables_mut().overlay = overlay;
    }

    pub fn set_blocked_ports(&self, ports: HashSet<u16>) {
        self.tables_mut().blocked_ports = ports;
    }

    /// Hand over the TUN descriptor (or take it away). A descriptor opened with
    /// `IFF_VNET_HDR` gets the offloads the kernel accepts: checksums and TCP segmentation
    /// (TSO4), UDP segmentation (USO, Linux 6.2) where available.
    pub fn set_tun(&self, fd: Option<OwnedFd>) -> io::Result<()> {
        let mut vnet = false;
        let mut offload = 0;
        if let Some(fd) = &fd {
            sys::set_nonblocking(fd)?;
            vnet = sys::tun_flags(fd).map(|f| f & sys::IFF_VNET_HDR != 0).unwrap_or(false);
            if vnet && self.tun_coalesce.load(Ordering::SeqCst) {
                offload = apply_tun_offload(fd);
            }
        }
        self.tun_vnet.store(vnet, Ordering::SeqCst);
        self.tun_offload.store(offload, Ordering::SeqCst);
        let mut slot = self.tun.lock().unwrap_or_else(|e| e.into_inner());
        self.tun_raw.store(fd.as_ref().map_or(-1, |f| f.as_raw_fd()), Ordering::SeqCst);
        *slot = fd.map(Arc::new);
        drop(slot);
        sys::eventfd_signal(&self.wake);
        Ok(())
    }

    pub fn last_received(&self, kind: Kind) -> Vec<(String, f64)> {
        let t = self.tables();
        let table = match kind {
            Kind::Link => &t.links,
            Kind::E2e => &t.e2e,
        };
        table
            .values()
            .filter_map(|p| p.last_received().map(|t| (p.node_id.clone(), t)))
            .collect()
    }

    pub fn wake(&self) {
        sys::eventfd_signal(&self.wake);
    }

    // --- events -------------------------------------------------------------------------------

    fn hand_up(&self, event: Event) {
        let size = event.size();
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.0.len() >= MAX_EVENTS || q.1 + size > MAX_EVENT_BYTES {
            drop(q);
            self.counters.add("handup_overflow", 1);
            return;
        }
        let was_empty = q.0.is_empty();
        q.0.push_back(event);
        q.1 += size;
        drop(q);
        if was_empty {
            sys::eventfd_signal(&self.notify);
        }
    }

    /// Take up to `max` queued events (Python, when the notify fd is readable). If more
    /// remain, the notify fd stays readable, so the event loop comes back after its other
    /// callbacks (the reference driver reads 64 datagrams per readiness callback likewise).
    pub fn drain_events(&self, max: usize) -> Vec<Event> {
        sys::eventfd_clear(&self.notify);
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.0.len().min(max);
        let out: Vec<Event> = q.0.drain(..n).collect();
        q.1 = q.1.saturating_sub(out.iter().map(Event::size).sum());
        if !q.0.is_empty() {
            sys::eventfd_signal(&self.notify);
        }
        out
    }

    // --- sending ------------------------------------------------------------------------------

    /// Send `packets` now (Python's output, or the calling thread's); how many were taken.
    pub fn send(&self, packets: &[(&[u8], SocketAddr)]) -> usize {
        let blocked = {
            let t = self.tables();
            if t.blocked_ports.is_empty() {
                None
            } else {
                Some(t.blocked_ports.clone())
            }
        };
        let filtered: Vec<(&[u8], SocketAddr)> = match &blocked {
            None => packets.to_vec(),
            Some(b) => packets.iter().filter(|(_, a)| !b.contains(&a.port())).cloned().collect(),
        };
        let Some(sock) = self.socket() else { return 0 };
        let sent = sys::send_batch(&sock, &filtered).unwrap_or(0);
        self.counters.add("tx_datagrams", sent as u64);
        if sent < filtered.len() {
            self.counters.add("send_errors", (filtered.len() - sent) as u64);
        }
        sent
    }

    /// Send the datagrams and write the TUN packets `out` holds.
    fn flush(&self, out: &mut Outbox) {
        if !out.tun.is_empty() {
            self.flush_tun(out);
        }
        if out.packets.is_empty() {
            return;
        }
        {
            let refs: Vec<(&[u8], SocketAddr)> = out.packets.iter().map(|(b, a)| (b.as_slice(), *a)).collect();
            if self.udp_gso.load(Ordering::Relaxed) && refs.len() > 1 {
                self.send_runs(&refs, &mut out.runs);
            } else {
                self.send(&refs);
            }
        }
        let packets = std::mem::take(&mut out.packets);
        for (buf, _) in packets {
            out.recycle(buf);
        }
    }

    /// Send `packets` as UDP_SEGMENT runs (one system call moves up to 64 datagrams to a
    /// peer); where the kernel refuses a run, UDP_SEGMENT is turned off and the rest goes
    /// datagram by datagram.
    fn send_runs(&self, packets: &[(&[u8], SocketAddr)], runs: &mut Vec<GsoRun>) {
        let blocked = {
            let t = self.tables();
            if t.blocked_ports.is_empty() { None } else { Some(t.blocked_ports.clone()) }
        };
        let filtered: Vec<(&[u8], SocketAddr)> = match &blocked {
            None => packets.to_vec(),
            Some(b) => packets.iter().filter(|(_, a)| !b.contains(&a.port())).cloned().collect(),
        };
        let Some(sock) = self.socket() else { return };
        sys::gso_runs(&filtered, runs);
        let mut done = 0;
        while done < runs.len() {
            let (n, err) = sys::send_gso(&sock, &filtered, &runs[done..]);
            for r in &runs[done..done + n] {
                self.counters.add("tx_datagrams", r.count as u64);
                if r.count > 1 {
                    self.counters.add("udp_gso_sends", 1);
                    self.counters.add("udp_gso_datagrams", r.count as u64);
                }
            }
            done += n;
            let Some(err) = err else { break };
            let failed = runs[done];
            let refused = matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP));
            if failed.count > 1 && refused {
                // The device cannot segment (no checksum offload, an old kernel): plain sends.
                self.udp_gso.store(false, Ordering::Relaxed);
                self.counters.add("udp_gso_disabled", 1);
                let rest: Vec<(&[u8], SocketAddr)> = runs[done..].iter().flat_map(|r| filtered[r.start..r.start + r.count].iter().cloned()).collect();
                let sent = sys::send_batch(&sock, &rest).unwrap_or(0);
                self.counters.add("tx_datagrams", sent as u64);
                self.counters.add("send_errors", (rest.len() - sent) as u64);
                return;
            }
            if err.kind() == io::ErrorKind::WouldBlock {
                // The send buffer is full: the rest is dropped, as a lossy link would.
                let lost: usize = runs[done..].iter().map(|r| r.count).sum();
                self.counters.add("send_errors", lost as u64);
                return;
            }
            // One bad destination (an ICMP error reported here): skip its run.
            self.counters.add("send_errors", failed.count as u64);
            done += 1;
        }
    }

    fn flush_tun(&self, out: &mut Outbox) {
        let tun = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let vnet = self.tun_vnet.load(Ordering::Relaxed);
        let merged = std::mem::take(&mut out.tun.merged);
        if merged > 0 {
            self.counters.add("tun_coalesced", merged);
        }
        out.tun.flush(vnet, |packet| {
            let Some(fd) = &tun else { return };
            if sys::write_packet(fd, packet) {
                self.counters.add("tun_writes", 1);
            } else {
                self.counters.add("tun_write_failed", 1);
            }
        });
    }

    /// Seal `build`'s plaintext under `peer`'s session into a datagram for its address.
    fn seal_to(&self, peer: &Peer, now: f64, out: &mut Outbox, build: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let Some(addr) = *peer.addr.lock().unwrap_or_else(|e| e.into_inner()) else {
            self.counters.add("no_link", 1);
            return false;
        };
        let mut buf = out.buffer();
        buf.resize(HEADER_SIZE, 0);
        if !build(&mut buf) {
            out.recycle(buf);
            return false;
        }
        let sealed = match peer.session.lock() {
            Ok(mut s) => s.seal_reserved(&mut buf, HEADER_SIZE, now).is_ok(),
            Err(_) => false,
        };
        if !sealed {
            self.counters.add("no_link", 1);
            out.recycle(buf);
            return false;
        }
        out.push(buf, addr);
        true
    }

    /// Send a ROUTED frame towards `dst` (from a peer link, or ours when `from` is None).
    fn forward(&self, from: Option<&str>, r: &frames::Routed<'_>, now: f64, out: &mut Outbox) {
        let frames::Routed { src, dst, ttl, flags, payload } = *r;
        let ttl = if from.is_some() { ttl.saturating_sub(1) } else { ttl };
        if ttl == 0 {
            self.counters.add("ttl_expired", 1);
            return;
        }
        let hop = {
            let t = self.tables();
            match t.routes.get(dst) {
                Some(hop) if Some(hop.as_str()) != from => t.links.get(hop).cloned(),
                _ => {
                    drop(t);
                    self.counters.add("no_route", 1);
                    return;
                }
            }
        };
        let Some(hop) = hop else {
            self.counters.add("no_link", 1);
            return;
        };
        let ok = self.seal_to(&hop, now, out, |buf| frames::put_routed(buf, src, dst, ttl, flags, payload));
        if ok && from.is_some() {
            self.counters.add("forwarded", 1);
        }
    }

    /// Seal `frames` (built by `build`) in the end-to-end session to `dest` and route it.
    fn send_e2e(&self, peer: &Peer, now: f64, out: &mut Outbox, build: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let mut buf = Vec::with_capacity(1500);
        buf.resize(HEADER_SIZE, 0);
        if !build(&mut buf) {
            return false;
        }
        let sealed = match peer.session.lock() {
            Ok(mut s) => s.seal_reserved(&mut buf, HEADER_SIZE, now).is_ok(),
            Err(_) => false,
        };
        if !sealed {
            return false;
        }
        let routed = frames::Routed { src: &self.config.node_id, dst: &peer.node_id, ttl: self.config.ttl, flags: 0, payload: &buf };
        self.forward(None, &routed, now, out);
        true
    }

    // --- receiving ----------------------------------------------------------------------------

    /// One datagram from `addr` (the I/O thread).
    pub fn on_datagram(&self, buf: &mut [u8], addr: SocketAddr, now: f64, out: &mut Outbox) {
        if buf.len() < MIN_DATAGRAM_SIZE || buf[0] != TRANSPORT {
            self.hand_up(Event::Datagram { data: buf.to_vec(), addr, t: now });
            return;
        }
        let peer = self.tables().link_index.get(&be32(&buf[1..5])).cloned();
        let Some(peer) = peer else {
            self.counters.add("unknown_index", 1);
            return;
        };
        let opened = match peer.session.lock() {
            Ok(mut s) => s.open_in_place(buf, now),
            Err(_) => return,
        };
        match opened {
            Err(d) => self.counters.add(d.reason.as_str(), 1),
            Ok(o) => {
                peer.last_received.store(now.to_bits(), Ordering::Relaxed);
                self.on_link_plaintext(&peer, &buf[o.start..o.start + o.len], o.promoted, now, out);
            }
        }
    }

    fn on_link_plaintext(&self, peer: &Peer, plaintext: &[u8], promoted: bool, now: f64, out: &mut Outbox) {
        let mut decoded = Vec::new();
        if let Err(e) = frames::decode(plaintext, &mut decoded) {
            self.counters.add(e.reason, 1);
            if promoted {
                self.hand_up(Event::Link { peer: peer.node_id.clone(), plaintext: Vec::new(), promoted, t: now, answered_probe: false });
            }
            return;
        }
        let mut control: Vec<u8> = Vec::new();
        let mut answered = false;
        for (frame, range) in &decoded {
            match frame {
                Frame::Routed(r) => {
                    if r.dst == self.config.node_id {
                        self.on_e2e(r.src, r.payload, now, out);
                    } else {
                        self.forward(Some(&peer.node_id), r, now, out);
                    }
                }
                Frame::Padding(_) => {}
                Frame::Heartbeat(hb) => {
                    // Not an answer to one of our own answers (two probing ends would
                    // ping-pong), and at most one answer per PROBE_ANSWER_GAP per link.
                    let echoes_ours = matches!(hb.echo, Some((s, _)) if s & NATIVE_HEARTBEAT_SEQ != 0);
                    let last = f64::from_bits(peer.last_probe_answer.load(Ordering::Relaxed));
                    if hb.probe && !echoes_ours && now - last >= PROBE_ANSWER_GAP {
                        peer.last_probe_answer.store(now.to_bits(), Ordering::Relaxed);
                        // The peer's link is down: answer now, not when Python gets to it.
                        let seq = peer.native_seq.fetch_add(1, Ordering::Relaxed) | NATIVE_HEARTBEAT_SEQ;
                        let reply = Heartbeat { seq, echo: Some((hb.seq, 0)), probe: !peer.up.load(Ordering::Relaxed) };
                        if self.seal_to(peer, now, out, |b| {
                            frames::put_heartbeat(b, reply);
                            true
                        }) {
                            answered = true;
                            self.counters.add("probes_answered", 1);
                        }
                    }
                    let at = control.len();
                    control.extend_from_slice(&plaintext[range.clone()]);
                    if answered {
                        // Python sees the heartbeat without the PROBE bit: it was answered.
                        control[at + frames::HEADER + 4] &= !frames::HEARTBEAT_PROBE;
                    }
                }
                _ => control.extend_from_slice(&plaintext[range.clone()]),
            }
        }
        if !control.is_empty() || promoted {
            self.hand_up(Event::Link { peer: peer.node_id.clone(), plaintext: control, promoted, t: now, answered_probe: answered });
        }
    }

    /// An end-to-end datagram addressed to us, from node `src`.
    fn on_e2e(&self, src: &str, payload: &[u8], now: f64, out: &mut Outbox) {
        let peer = if payload.len() >= MIN_DATAGRAM_SIZE && payload[0] == TRANSPORT {
            self.tables().e2e_index.get(&be32(&payload[1..5])).cloned()
        } else {
            None
        };
        let Some(peer) = peer else {
            self.hand_up(Event::E2eDatagram { src: src.to_owned(), payload: payload.to_vec(), t: now });
            return;
        };
        let mut buf = payload.to_vec();
        let opened = match peer.session.lock() {
            Ok(mut s) => s.open_in_place(&mut buf, now),
            Err(_) => return,
        };
        let o = match opened {
            Err(d) => {
                self.counters.add(&format!("e2e_{}", d.reason.as_str()), 1);
                return;
            }
            Ok(o) => o,
        };
        peer.last_received.store(now.to_bits(), Ordering::Relaxed);
        let plaintext = &buf[o.start..o.start + o.len];
        let mut decoded = Vec::new();
        if let Err(e) = frames::decode(plaintext, &mut decoded) {
            self.counters.add(if e.reason == "bad_frame" { "e2e_bad_frame" } else { "e2e_unknown_frame" }, 1);
            if o.promoted {
                self.hand_up(Event::E2e { src: peer.node_id.clone(), plaintext: Vec::new(), promoted: true, t: now });
            }
            return;
        }
        let mut up: Vec<u8> = Vec::new();
        for (frame, range) in &decoded {
            match frame {
                Frame::AppData { channel: TUN_CHANNEL, payload } if self.tun_raw.load(Ordering::Relaxed) >= 0 => {
                    self.tun_inbound(&peer.node_id, payload, out);
                }
                Frame::AppData { channel: PING_CHANNEL, payload } => {
                    if !self.on_ping(&peer, payload, now, out) {
                        up.extend_from_slice(&plaintext[range.clone()]);
                    }
                }
                Frame::AppData { .. } => up.extend_from_slice(&plaintext[range.clone()]),
                _ => self.counters.add("e2e_unexpected_frame", 1),
            }
        }
        if !up.is_empty() || o.promoted {
            self.hand_up(Event::E2e { src: peer.node_id.clone(), plaintext: up, promoted: o.promoted, t: now });
        }
    }

    /// A mesh echo: answer a request natively; a reply is the benchmark's (true) or Python's.
    fn on_ping(&self, peer: &Peer, payload: &[u8], now: f64, out: &mut Outbox) -> bool {
        if payload.len() != PING_SIZE {
            self.counters.add("bad_ping", 1);
            return true;
        }
        match payload[0] {
            0 => {
                let mut reply = [0u8; PING_SIZE];
                reply.copy_from_slice(payload);
                reply[0] = 1;
                if self.send_e2e(peer, now, out, |b| frames::put_app_data(b, PING_CHANNEL, &reply)) {
                    self.counters.add("pings_answered", 1);
                }
                true
            }
            1 => self.on_bench_pong(peer, be32(&payload[1..5]), now, out),
            _ => false,
        }
    }

    fn tun_inbound(&self, src: &str, packet: &[u8], out: &mut Outbox) {
        let t = self.tables();
        let Some(overlay) = &t.overlay else { return };
        let (ip_src, ip_dst, total) = match parse_ipv4(packet) {
            Ok(v) => v,
            Err(reason) => {
                self.counters.add(reason, 1);
                return;
            }
        };
        if overlay.ip_of.get(src) != Some(&ip_src) {
            self.counters.add("tun_spoofed_source", 1);
            return;
        }
        if ip_dst != overlay.local_ip {
            self.counters.add("tun_not_for_us", 1);
            return;
        }
        drop(t);
        self.counters.add("tun_packets_in", 1);
        self.counters.add("tun_bytes_in", total as u64);
        if self.tun_vnet.load(Ordering::Relaxed) {
            out.tun.push(&packet[..total], self.tun_coalesce.load(Ordering::Relaxed));
            return;
        }
        let tun = self.tun.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(fd) = tun {
            if sys::write_packet(&fd, &packet[..total]) {
                self.counters.add("tun_writes", 1);
            } else {
                self.counters.add("tun_write_failed", 1);
            }
        }
    }

    /// A read from a TUN with a virtio-net header: one packet or a super-packet to cut into
    /// segments of at most the overlay MTU (a header asking for larger ones is dropped and
    /// counted). However many segments a read holds, at most [`OUTBOX_FLUSH`] datagrams wait
    /// to be sent.
    pub fn tun_read_offloaded(&self, read: &mut [u8], scratch: &mut Vec<u8>, now: f64, out: &mut Outbox) {
        let gso = offload::VnetHdr::decode(read).is_some_and(|h| h.gso_type != offload::GSO_NONE);
        let mtu = self.tables().overlay.as_ref().map_or(offload::MAX_IP_PACKET, |o| o.mtu);
        let emit = |segment: &[u8]| {
            self.tun_outbound(segment, now, out);
            if out.packets.len() >= OUTBOX_FLUSH {
                self.flush(out);
            }
        };
        match offload::split(read, mtu, scratch, emit) {
            Ok(n) if gso => {
                self.counters.add("tun_gso_reads", 1);
                self.counters.add("tun_gso_segments", n as u64);
            }
            Ok(_) => {}
            Err(e) => self.counters.add(e.counter(), 1),
        }
    }

    /// A packet read from the TUN device.
    fn tun_outbound(&self, packet: &[u8], now: f64, out: &mut Outbox) {
        let (dest, e2e, total) = {
            let t = self.tables();
            let Some(overlay) = &t.overlay else { return };
            let (src, dst, total) = match parse_ipv4(packet) {
                Ok(v) => v,
                Err(reason) => {
                    self.counters.add(reason, 1);
                    return;
                }
            };
            if src != overlay.local_ip {
                self.counters.add("tun_bad_source", 1);
                return;
            }
            let Some(dest) = overlay.by_ip.get(&dst).cloned() else {
                self.counters.add("tun_no_destination", 1);
                return;
            };
            if total > overlay.mtu {
                // Too big: Python answers with ICMP "fragmentation needed" (overlay.py).
                drop(t);
                self.hand_up(Event::TunPacket { dest, packet: packet.to_vec() });
                return;
            }
            let e2e = t.e2e.get(&dest).cloned();
            (dest, e2e, total)
        };
        let ready = e2e.as_ref().is_some_and(|p| p.session.lock().map(|s| s.can_send()).unwrap_or(false));
        if let (true, Some(peer)) = (ready, e2e) {
            if self.send_e2e(&peer, now, out, |b| frames::put_app_data(b, TUN_CHANNEL, &packet[..total])) {
                self.counters.add("tun_packets_out", 1);
                self.counters.add("tun_bytes_out", total as u64);
                return;
            }
        }
        self.hand_up(Event::TunPacket { dest, packet: packet[..total].to_vec() });
    }

    // --- the echo benchmark ---------------------------------------------------------------------

    fn bench_ping(&self, peer: &Peer, bench: &mut EchoBench, now: f64, out: &mut Outbox) {
        let seq = bench.next_seq;
        bench.next_seq = bench.next_seq.wrapping_add(1);
        let mut ping = [0u8; PING_SIZE];
        ping[1..5].copy_from_slice(&seq.to_be_bytes());
        ping[5..13].copy_from_slice(&sys::wall_us().to_be_bytes());
        if self.send_e2e(peer, now, out, |b| frames::put_app_data(b, PING_CHANNEL, &ping)) {
            bench.in_flight.insert(seq, now);
        }
    }

    fn on_bench_pong(&self, peer: &Peer, seq: u32, now: f64, out: &mut Outbox) -> bool {
        let mut guard = self.bench.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bench) = guard.as_mut() else { return false };
        if bench.dest != peer.node_id {
            return false;
        }
        let Some(sent) = bench.in_flight.remove(&seq) else { return true };
        bench.done += 1;
        if bench.latencies.len() < bench.max_samples {
            bench.latencies.push(now - sent);
        }
        if now < bench.deadline {
            self.bench_ping(peer, bench, now, out);
        } else if bench.in_flight.is_empty() {
            self.bench_cv.notify_all();
        }
        true
    }

    /// Keep `window` native echoes to `dest` in flight until `duration` seconds have passed;
    /// `(completed, seconds, round-trip samples)`. Blocks the calling thread (GIL released).
    pub fn echo_bench(&self, dest: &str, window: usize, duration: f64, max_samples: usize) -> Result<(u64, f64, Vec<f64>), String> {
        let peer = self.tables().e2e.get(dest).cloned().ok_or_else(|| format!("no end-to-end session with {dest}"))?;
        if !peer.session.lock().map(|s| s.can_send()).unwrap_or(false) {
            return Err(format!("the end-to-end session with {dest} is not established"));
        }
        let start = sys::monotonic();
        let deadline = start + duration;
        let mut out = Outbox::new();
        {
            let mut guard = self.bench.lock().unwrap_or_else(|e| e.into_inner());
            let mut bench = EchoBench {
                dest: dest.to_owned(),
                in_flight: HashMap::new(),
                next_seq: 1,
                done: 0,
                latencies: Vec::new(),
                max_samples,
                deadline,
            };
            for _ in 0..window {
                self.bench_ping(&peer, &mut bench, start, &mut out);
            }
            *guard = Some(bench);
        }
        self.flush(&mut out);
        // Top the window up if echoes were lost; stop at the deadline (+ 1 s for stragglers).
        loop {
            let guard = self.bench.lock().unwrap_or_else(|e| e.into_inner());
            let (mut guard, _) = self
                .bench_cv
                .wait_timeout(guard, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            let now = sys::monotonic();
            let Some(bench) = guard.as_mut() else { break };
            if now >= deadline && (bench.in_flight.is_empty() || now >= deadline + 1.0) {
                break;
            }
            if now < deadline {
                let lost: Vec<u32> = bench.in_flight.iter().filter(|(_, t)| now - **t > 1.0).map(|(s, _)| *s).collect();
                for seq in lost {
                    bench.in_flight.remove(&seq);
                    self.bench_ping(&peer, bench, now, &mut out);
                }
                while bench.in_flight.len() < window {
                    self.bench_ping(&peer, bench, now, &mut out);
                    if bench.in_flight.is_empty() {
                        break;
                    }
                }
            }
            drop(guard);
            self.flush(&mut out);
        }
        let bench = self.bench.lock().unwrap_or_else(|e| e.into_inner()).take();
        let bench = bench.ok_or("benchmark state vanished")?;
        Ok((bench.done, deadline - start, bench.latencies))
    }
}

/// The I/O thread: poll the socket, the TUN and the wake-up fd; read in batches, handle, send
/// in batches. Returns when `stop` is set.
pub fn run(shared: Arc<Shared>) {
    let mut batch = RecvBatch::new(RECV_BUF);
    let mut out = Outbox::new();
    let mut tun_buf = vec![0u8; TUN_READ_BUF];
    let mut scratch: Vec<u8> = Vec::with_capacity(2048);
    let Some(socket) = shared.socket() else { return };
    let sock = socket.as_raw_fd();
    let wake = shared.wake.as_raw_fd();
    while !shared.stop.load(Ordering::Relaxed) {
        let tun_fd = shared.tun_raw.load(Ordering::Relaxed);
        let fds: Vec<i32> = if tun_fd >= 0 { vec![sock, wake, tun_fd] } else { vec![sock, wake] };
        let ready = match sys::poll(&fds, 500) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if ready[1] != 0 {
            sys::eventfd_clear(&shared.wake);
        }
        if ready[0] != 0 {
            // Drain the socket, up to 8 batches before the TUN gets a turn.
            for _ in 0..8 {
                let n = match sys::recv_batch(&socket, &mut batch) {
                    Ok(n) => n,
                    Err(_) => {
                        shared.counters.add("send_errors", 1); // an ICMP error queued on the socket
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                let now = sys::monotonic();
                shared.counters.add("rx_datagrams", n as u64);
                let blocked = {
                    let t = shared.tables();
                    if t.blocked_ports.is_empty() { None } else { Some(t.blocked_ports.clone()) }
                };
                for i in 0..n {
                    let Some(addr) = batch.addrs[i] else {
                        shared.counters.add("recv_truncated", 1);
                        continue;
                    };
                    if blocked.as_ref().is_some_and(|b| b.contains(&addr.port())) {
                        continue;
                    }
                    let len = batch.lens[i];
                    let gso = batch.gso[i];
                    if gso == 0 || gso >= len {
                        shared.on_datagram(&mut batch.bufs[i][..len], addr, now, &mut out);
                        continue;
                    }
                    // UDP GRO: a run of datagrams from one sender, each `gso` bytes but the last.
                    shared.counters.add("udp_gro_runs", 1);
                    let mut runs = 0;
                    for chunk in batch.bufs[i][..len].chunks_mut(gso) {
                        shared.on_datagram(chunk, addr, now, &mut out);
                        runs += 1;
                    }
                    shared.counters.add("udp_gro_datagrams", runs);
                    shared.counters.add("rx_datagrams", runs - 1);
                    if out.packets.len() >= OUTBOX_FLUSH {
                        shared.flush(&mut out);
                    }
                }
                shared.flush(&mut out);
                if n < BATCH {
                    break;
                }
            }
        }
        if tun_fd >= 0 && ready[2] != 0 {
            let tun = shared.tun.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(tun) = tun {
                let vnet = shared.tun_vnet.load(Ordering::Relaxed);
                for _ in 0..BATCH {
                    match sys::read_packet(&tun, &mut tun_buf) {
                        Ok(Some(n)) => {
                            let now = sys::monotonic();
                            if vnet {
                                shared.tun_read_offloaded(&mut tun_buf[..n], &mut scratch, now, &mut out);
                            } else {
                                shared.tun_outbound(&tun_buf[..n], now, &mut out);
                            }
                            if out.packets.len() >= BATCH {
                                shared.flush(&mut out);
                            }
                        }
                        _ => break,
                    }
                }
                shared.flush(&mut out);
            }
        }
    }
}

/// Ask the kernel for the TUN offloads we handle, the most first: checksums and TCP
/// segmentation, plus UDP segmentation where the kernel has it (6.2). The flags it took.
fn apply_tun_offload(fd: &OwnedFd) -> u32 {
    let tso = sys::TUN_F_CSUM | sys::TUN_F_TSO4;
    for flags in [tso | sys::TUN_F_USO4 | sys::TUN_F_USO6, tso] {
        if sys::tun_set_offload(fd, flags).is_ok() {
            return flags;
        }
    }
    0
}

/// Names of the session drop reasons counted above (for docs and tests).
pub fn session_drop_counters() -> Vec<&'static str> {
    DROP_REASONS.iter().map(|r| r.as_str()).collect()
}

/// The baseline of `bench dataplane`: raw UDP echo between two loopback sockets, each served
/// by a thread with the same recvmmsg/sendmmsg batching as [`run`], `window` datagrams of
/// `size` bytes in flight for `duration` seconds. `(completed echoes, seconds, round-trip
/// samples)`.
pub fn raw_echo(window: usize, duration: f64, size: usize, max_samples: usize) -> io::Result<(u64, f64, Vec<f64>)> {
    use std::net::UdpSocket;
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    let server_addr = server.local_addr()?;
    let server_fd = OwnedFd::from(server);
    let client_fd = OwnedFd::from(client);
    sys::set_nonblocking(&server_fd)?;
    sys::set_nonblocking(&client_fd)?;
    // The same batching as the data plane: UDP_GRO on receive, UDP_SEGMENT runs on send where
    // the kernel has them (Shared::new, Shared::flush).
    let gso = sys::udp_gso_supported(&client_fd);
    sys::enable_udp_gro(&server_fd);
    sys::enable_udp_gro(&client_fd);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut batch = RecvBatch::new(RECV_BUF);
        let mut runs = Vec::new();
        while !stop_server.load(Ordering::Relaxed) {
            if sys::poll(&[server_fd.as_raw_fd()], 100).map(|r| r[0] == 0).unwrap_or(true) {
                continue;
            }
            loop {
                let n = sys::recv_batch(&server_fd, &mut batch).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let replies: Vec<(&[u8], SocketAddr)> = (0..n)
                    .filter_map(|i| batch.addrs[i].map(|a| (i, a)))
                    .flat_map(|(i, a)| datagrams(&batch, i).map(move |d| (d, a)))
                    .collect();
                send_echo(&server_fd, &replies, &mut runs, gso);
                if n < BATCH {
                    break;
                }
            }
        }
    });
    let mut batch = RecvBatch::new(RECV_BUF);
    let mut runs = Vec::new();
    let mut in_flight: HashMap<u64, f64> = HashMap::new();
    let mut latencies = Vec::new();
    let mut next: u64 = 0;
    let mut done: u64 = 0;
    let start = sys::monotonic();
    let deadline = start + duration;
    let payload = |seq: u64| {
        let mut p = vec![0u8; size.max(8)];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        p
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for _ in 0..window {
        out.push(payload(next));
        in_flight.insert(next, start);
        next += 1;
    }
    loop {
        if !out.is_empty() {
            let refs: Vec<(&[u8], SocketAddr)> = out.iter().map(|p| (p.as_slice(), server_addr)).collect();
            send_echo(&client_fd, &refs, &mut runs, gso);
            out.clear();
        }
        let now = sys::monotonic();
        if now >= deadline && (in_flight.is_empty() || now >= deadline + 1.0) {
            break;
        }
        if sys::poll(&[client_fd.as_raw_fd()], 100).map(|r| r[0] == 0).unwrap_or(true) {
            // Lost datagrams: replace them so the window stays full.
            let now = sys::monotonic();
            let lost: Vec<u64> = in_flight.iter().filter(|(_, t)| now - **t > 1.0).map(|(s, _)| *s).collect();
            for seq in lost {
                in_flight.remove(&seq);
                if now < deadline {
                    out.push(payload(next));
                    in_flight.insert(next, now);
                    next += 1;
                }
            }
            continue;
        }
        loop {
            let n = sys::recv_batch(&client_fd, &mut batch).unwrap_or(0);
            let now = sys::monotonic();
            for i in 0..n {
                for d in datagrams(&batch, i) {
                    if d.len() < 8 {
                        continue;
                    }
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&d[..8]);
                    if let Some(sent) = in_flight.remove(&u64::from_be_bytes(s)) {
                        done += 1;
                        if latencies.len() < max_samples {
                            latencies.push(now - sent);
                        }
                        if now < deadline {
                            out.push(payload(next));
                            in_flight.insert(next, now);
                            next += 1;
                        }
                    }
                }
            }
            if n < BATCH {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    Ok((done, duration, latencies))
}

/// The datagrams of received message `i`: one, or a UDP_GRO run cut at its segment size.
fn datagrams(batch: &RecvBatch, i: usize) -> std::slice::Chunks<'_, u8> {
    let data = &batch.bufs[i][..batch.lens[i]];
    let size = if batch.gso[i] == 0 { data.len() } else { batch.gso[i] };
    data.chunks(size.max(1))
}

/// Send with UDP_SEGMENT runs where the kernel has them, as `Shared::flush` does.
fn send_echo(fd: &OwnedFd, packets: &[(&[u8], SocketAddr)], runs: &mut Vec<GsoRun>, gso: bool) {
    if gso && packets.len() > 1 {
        sys::gso_runs(packets, runs);
        let _ = sys::send_gso(fd, packets, runs);
    } else {
        let _ = sys::send_batch(fd, packets);
    }
}

#[cfg(test)]
mod tests {
    //! Hostile TUN reads on the offload path: whatever the virtio-net header claims, a bad read
    //! is dropped and counted, nothing beyond the MTU leaves, and the queues stay bounded.
    use super::*;
    use crate::offload::tests::tcp;
    use crate::offload::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4};
    use crate::transport::{Keys, Limits};

    const MTU: usize = 1400;
    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    /// Node "a" (overlay 10.0.0.1) with "b" (10.0.0.2) in its overlay map; with `session`, an
    /// established end-to-end session to "b" and a link to it whose address is the returned
    /// socket (so segments are sealed and sent for real).
    fn node(session: bool) -> (Arc<Shared>, Option<std::net::UdpSocket>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let shared = Shared::new(Config { node_id: "a".into(), ttl: 8 }, OwnedFd::from(sock)).unwrap();
        let mut overlay = Overlay { local_ip: A, mtu: MTU, ..Default::default() };
        overlay.by_ip.insert(B, "b".into());
        overlay.ip_of.insert("b".into(), B);
        shared.set_overlay(Some(overlay));
        if !session {
            return (shared, None);
        }
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for (kind, base) in [(Kind::Link, 10u32), (Kind::E2e, 20)] {
            let (k1, k2) = ([base as u8; 32], [base as u8 + 1; 32]);
            let mut i = SessionCore::new(Limits::default()).unwrap();
            let mut r = SessionCore::new(Limits::default()).unwrap();
            i.install(&Keys { send_key: &k1, recv_key: &k2, local_index: base, remote_index: base + 1, is_initiator: true }, 0.0).unwrap();
            r.install(&Keys { send_key: &k2, recv_key: &k1, local_index: base + 1, remote_index: base, is_initiator: false }, 0.0).unwrap();
            let mut keepalive = r.seal(b"", 0.0).unwrap();
            assert!(i.open_in_place(&mut keepalive, 0.0).unwrap().promoted);
            shared.attach(kind, "b", Arc::new(Mutex::new(i)), Some(peer.local_addr().unwrap()));
        }
        shared.set_routes(HashMap::from([("b".to_string(), "b".to_string())]));
        (shared, Some(peer))
    }

    fn read(hdr: VnetHdr, packet: &[u8]) -> Vec<u8> {
        let mut r = hdr.encode().to_vec();
        r.extend_from_slice(packet);
        r
    }

    fn counter(shared: &Shared, name: &str) -> u64 {
        shared.counters.snapshot().iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }

    /// A TCP super-packet from a to b (the kernel's TSO output): `payload` bytes in one read.
    fn super_packet(payload: usize) -> Vec<u8> {
        let mut p = tcp(1, 0x10, &vec![7u8; payload], &[]);
        p[12..16].copy_from_slice(&A);
        p[16..20].copy_from_slice(&B);
        offload::ipv4_header_checksum(&mut p, 20);
        p
    }

    #[test]
    fn malformed_virtio_headers_are_dropped_and_counted() {
        let (shared, _) = node(false);
        let mut out = Outbox::new();
        let mut scratch = Vec::new();
        let good = super_packet(4000);
        let mut udp_claim = good.clone();
        udp_claim[9] = 17; // a TCP GSO header on a UDP packet
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0u8; 5], "tun_short_packet"),
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 0, ..Default::default() }, &good), "tun_bad_gso"),
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 1000, ..Default::default() }, &good[..good.len() - 1]), "tun_bad_gso"),
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 1000, ..Default::default() }, &udp_claim), "tun_bad_gso"),
            (read(VnetHdr { gso_type: GSO_UDP_L4, gso_size: 1000, ..Default::default() }, &good), "tun_bad_gso"),
            (read(VnetHdr { flags: F_NEEDS_CSUM, csum_start: 60_000, ..Default::default() }, &good[..100]), "tun_bad_gso"),
            (read(VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 99, ..Default::default() }, &good[..100]), "tun_bad_gso"),
            (read(VnetHdr { gso_type: 4, gso_size: 1000, ..Default::default() }, &good), "tun_unsupported_gso"),
            (read(VnetHdr { gso_type: 3, gso_size: 1000, ..Default::default() }, &good), "tun_unsupported_gso"),
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 1000, ..Default::default() }, &[0x60; 60]), "tun_unsupported_gso"),
            // segments larger than the overlay MTU: dropped whole, not handed up for ICMP
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 1361, ..Default::default() }, &good), "tun_gso_oversize"),
            (read(VnetHdr { gso_type: GSO_TCPV4, gso_size: u16::MAX, ..Default::default() }, &good), "tun_gso_oversize"),
        ];
        for (i, (mut r, name)) in cases.into_iter().enumerate() {
            let before = counter(&shared, name);
            shared.tun_read_offloaded(&mut r, &mut scratch, 0.0, &mut out);
            assert_eq!(counter(&shared, name), before + 1, "case {i}: {name}");
        }
        assert!(shared.drain_events(usize::MAX).is_empty(), "nothing handed up");
        assert!(out.packets.is_empty() && out.tun.is_empty(), "nothing sent");
        assert_eq!(counter(&shared, "tun_gso_reads"), 0);
        // The largest acceptable segment size is cut and handed up (no session yet).
        let mut r = read(VnetHdr { gso_type: GSO_TCPV4, gso_size: 1360, ..Default::default() }, &good);
        shared.tun_read_offloaded(&mut r, &mut scratch, 0.0, &mut out);
        let events = shared.drain_events(usize::MAX);
        assert_eq!(events.len(), 3);
        for e in &events {
            let Event::TunPacket { dest, packet } = e else { panic!("not a TUN packet") };
            assert!(dest == "b" && packet.len() <= MTU);
            assert!(offload::l4_checksum_ok(packet, 20, 6));
        }
        assert_eq!((counter(&shared, "tun_gso_reads"), counter(&shared, "tun_gso_segments")), (1, 3));
    }

    #[test]
    fn a_read_of_tiny_segments_stays_bounded() {
        // One 64 KB read cut into 1-byte segments: 65 k packets from one system call.
        let big = super_packet(offload::MAX_IP_PACKET - 40);
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1, ..Default::default() };
        // Without a session they are handed up: the queue stops at MAX_EVENTS, the rest counted.
        let (shared, _) = node(false);
        let mut out = Outbox::new();
        shared.tun_read_offloaded(&mut read(hdr, &big), &mut Vec::new(), 0.0, &mut out);
        let overflow = counter(&shared, "handup_overflow");
        assert_eq!(overflow as usize + MAX_EVENTS, big.len() - 40);
        assert_eq!(shared.drain_events(usize::MAX).len(), MAX_EVENTS);
        // With one they are sealed and sent as they are cut: never more than OUTBOX_FLUSH wait.
        let (shared, peer) = node(true);
        let peer = peer.unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut out = Outbox::new();
        shared.tun_read_offloaded(&mut read(hdr, &big), &mut Vec::new(), 0.0, &mut out);
        assert!(out.packets.len() < OUTBOX_FLUSH);
        shared.flush(&mut out);
        let segments = (big.len() - 40) as u64;
        assert_eq!(counter(&shared, "tun_packets_out"), segments);
        assert_eq!(counter(&shared, "tx_datagrams") + counter(&shared, "send_errors"), segments);
        let mut buf = [0u8; 65_536];
        assert!(peer.recv_from(&mut buf).is_ok(), "datagrams reached the link's address");
    }
}
