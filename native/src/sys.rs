//! The libc syscall wrappers of the I/O loop: the only `unsafe` outside the PyO3 edge.
//!
//! Each function takes safe Rust types, checks its bounds, and returns `io::Result`. Batched
//! datagram I/O follows wireguard-go's `conn/` (recvmmsg/sendmmsg); TUN creation is the
//! `TUNSETIFF` ioctl of `x0tta6bl4.node.tun`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 32;

fn cvt(rc: libc::c_int) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

fn cvt_ssize(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Take ownership of a descriptor handed over from Python (`socket.detach()`).
pub fn owned_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller passes ownership of a valid, open descriptor (checked above) that
    // nothing else will close.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

pub fn set_buffer(fd: &OwnedFd, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &bytes as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// An eventfd (non-blocking, close-on-exec): the I/O thread's wake-up and Python's
/// "events ready" signal.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd creates a new descriptor that we own from here on.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local; a full counter (EAGAIN) is harmless.
    unsafe {
        libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
    }
}

pub fn eventfd_clear(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local.
    unsafe {
        libc::read(fd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
    }
}

/// poll() on up to 4 descriptors; the `revents` of each (0 where not ready).
pub fn poll(fds: &[RawFd], timeout_ms: i32) -> io::Result<[i16; 4]> {
    let mut pfds: [libc::pollfd; 4] = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4];
    let n = fds.len().min(4);
    for (slot, fd) in pfds.iter_mut().zip(fds) {
        slot.fd = *fd;
        slot.events = libc::POLLIN;
    }
    // SAFETY: pfds holds n initialised entries.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([0; 4]);
        }
        return Err(e);
    }
    let mut out = [0i16; 4];
    for (slot, pfd) in out.iter_mut().zip(&pfds[..n]) {
        *slot = pfd.revents;
    }
    Ok(out)
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family checked).
            let sin: libc::sockaddr_in = unsafe { std::ptr::read(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family checked).
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Receive buffers for one recvmmsg call.
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    pub lens: [usize; BATCH],
    pub addrs: [Option<SocketAddr>; BATCH],
    /// UDP GRO: the datagram is a run of `gso[i]`-byte datagrams (the last may be shorter)
    /// from one sender; 0: one datagram.
    pub gso: [usize; BATCH],
    storage: Vec<libc::sockaddr_storage>,
    control: Vec<[u64; CONTROL_WORDS]>,
}

impl RecvBatch {
    pub fn new(buf_size: usize) -> Self {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; buf_size]).collect(),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            gso: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            storage: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            control: vec![[0u64; CONTROL_WORDS]; BATCH],
        }
    }
}

/// recvmmsg(MSG_DONTWAIT) into `batch`; the number of datagrams (0 when none is queued).
pub fn recv_batch(fd: &OwnedFd, batch: &mut RecvBatch) -> io::Result<usize> {
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    // SAFETY: mmsghdr is plain old data; zero is a valid initial value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for (i, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).enumerate() {
        iov.iov_base = batch.bufs[i].as_mut_ptr() as *mut libc::c_void;
        iov.iov_len = batch.bufs[i].len();
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
        msg.msg_hdr.msg_name = &mut batch.storage[i] as *mut _ as *mut libc::c_void;
        msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_hdr.msg_control = batch.control[i].as_mut_ptr() as *mut libc::c_void;
        msg.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
    }
    // SAFETY: every msghdr points at a live buffer of its stated length, at a live
    // sockaddr_storage and at a live control buffer; the arrays outlive the call.
    let rc = unsafe {
        libc::recvmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    let n = rc as usize;
    for (i, msg) in msgs.iter().enumerate().take(n) {
        batch.lens[i] = (msg.msg_len as usize).min(batch.bufs[i].len());
        batch.addrs[i] = from_storage(&batch.storage[i]);
        if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            batch.addrs[i] = None; // truncated: dropped by the caller
        }
        batch.gso[i] = gro_size(&msg.msg_hdr);
    }
    Ok(n)
}

/// The UDP_GRO segment size in a received message's control data (0: none).
fn gro_size(hdr: &libc::msghdr) -> usize {
    let mut size = 0usize;
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen` (at most our buffer); the
    // CMSG_* macros stay within that length; the payload is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO && (*c).cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                size = v.max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    size
}

/// `SOL_UDP` / `IPPROTO_UDP`.
pub const SOL_UDP: libc::c_int = 17;
/// Send a buffer as a run of equal-sized datagrams (Linux 4.18).
pub const UDP_SEGMENT: libc::c_int = 103;
/// Receive runs of datagrams from one sender as one buffer (Linux 5.0).
pub const UDP_GRO: libc::c_int = 104;
/// Control buffer per message: room for a UDP_GRO / UDP_SEGMENT cmsg (and spare).
const CONTROL_WORDS: usize = 8;
/// Datagrams per UDP_SEGMENT send at most (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per UDP_SEGMENT send at most (an IPv4 datagram's payload, with margin).
pub const GSO_MAX_BYTES: usize = 65_000;

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(rc).map(|_| ())
}

/// Turn on UDP GRO for the socket; false where the kernel refuses (the data plane then reads
/// one datagram per message, as before).
pub fn enable_udp_gro(fd: &OwnedFd) -> bool {
    setsockopt_int(fd, SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Turn UDP GRO off again; false if the kernel refused.
pub fn disable_udp_gro(fd: &OwnedFd) -> bool {
    setsockopt_int(fd, SOL_UDP, UDP_GRO, 0).is_ok()
}

/// Whether the kernel knows UDP_SEGMENT (a socket-wide segment size of 0 changes nothing: each
/// send gives its own).
pub fn udp_gso_supported(fd: &OwnedFd) -> bool {
    setsockopt_int(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// A run of datagrams for one UDP_SEGMENT send: `packets[start..start + count]`, all
/// `packets[start].len()` bytes long but the last (which may be shorter), to one address.
#[derive(Clone, Copy, Debug)]
pub struct GsoRun {
    pub start: usize,
    pub count: usize,
}

/// Cut `packets` into runs that one UDP_SEGMENT send each can carry.
pub fn gso_runs(packets: &[(&[u8], SocketAddr)], runs: &mut Vec<GsoRun>) {
    runs.clear();
    let mut i = 0;
    while i < packets.len() {
        let (first, addr) = packets[i];
        let size = first.len();
        let mut count = 1;
        let mut bytes = size;
        while i + count < packets.len() && count < GSO_MAX_SEGMENTS && size > 0 {
            let (next, next_addr) = packets[i + count];
            if next_addr != addr || next.len() > size || next.is_empty() || bytes + next.len() > GSO_MAX_BYTES {
                break;
            }
            count += 1;
            bytes += next.len();
            if next.len() < size {
                break; // a shorter datagram ends the run
            }
        }
        runs.push(GsoRun { start: i, count });
        i += count;
    }
}

/// Send `runs` of `packets` with sendmmsg, one message per run (UDP_SEGMENT where a run has
/// more than one datagram). Returns how many runs the kernel took and the error that stopped
/// it (`None`: all taken).
pub fn send_gso(fd: &OwnedFd, packets: &[(&[u8], SocketAddr)], runs: &[GsoRun]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < runs.len() {
        let chunk = &runs[done..(done + BATCH).min(runs.len())];
        let total: usize = chunk.iter().map(|r| r.count).sum();
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(total);
        for r in chunk {
            for (data, _) in &packets[r.start..r.start + r.count] {
                iovs.push(libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() });
            }
        }
        let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = chunk.iter().map(|r| to_storage(&packets[r.start].1)).collect();
        let mut control = vec![[0u64; CONTROL_WORDS]; chunk.len()];
        // SAFETY: plain old data.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut at = 0;
        for (i, r) in chunk.iter().enumerate() {
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_iov = iovs[at..].as_mut_ptr();
            hdr.msg_iovlen = r.count as _;
            at += r.count;
            hdr.msg_name = &mut names[i].0 as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = names[i].1;
            if r.count > 1 {
                let seg = packets[r.start].0.len() as u16;
                hdr.msg_control = control[i].as_mut_ptr() as *mut libc::c_void;
                // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 64-byte control buffer; the
                // header and data are written within it.
                unsafe {
                    hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
                }
            }
        }
        // SAFETY: every msghdr points at live iovecs, names and control data for the duration
        // of the call; the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), chunk.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc <= 0 {
            let e = if rc == 0 { io::Error::from(io::ErrorKind::WouldBlock) } else { io::Error::last_os_error() };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (done, Some(e));
        }
        done += rc as usize;
    }
    (done, None)
}

// --- TUN -----------------------------------------------------------------------------------------

const TUNGETIFF: libc::c_ulong = 0x8004_54D2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54D0;
/// `IFF_VNET_HDR`: every read and write starts with a `virtio_net_hdr`.
pub const IFF_VNET_HDR: u16 = 0x4000;
pub const TUN_F_CSUM: libc::c_uint = 0x01;
pub const TUN_F_TSO4: libc::c_uint = 0x02;
pub const TUN_F_TSO6: libc::c_uint = 0x04;
pub const TUN_F_USO4: libc::c_uint = 0x20;
pub const TUN_F_USO6: libc::c_uint = 0x40;

/// The TUN descriptor's interface flags (TUNGETIFF).
pub fn tun_flags(fd: &OwnedFd) -> io::Result<u16> {
    let mut ifr = [0u8; 40];
    // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes) into our buffer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, ifr.as_mut_ptr()) };
    cvt(rc)?;
    Ok(u16::from_ne_bytes([ifr[16], ifr[17]]))
}

/// TUNSETOFFLOAD: which offloaded packets the kernel may hand us.
pub fn tun_set_offload(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
    cvt(rc).map(|_| ())
}

/// sendmmsg(MSG_DONTWAIT) of `packets`; how many the kernel took (the rest are dropped by
/// the caller, as a lossy link would).
pub fn send_batch(fd: &OwnedFd, packets: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < packets.len() {
        let chunk = &packets[sent..(sent + BATCH).min(packets.len())];
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        // SAFETY: plain old data.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = chunk.iter().map(|(_, a)| to_storage(a)).collect();
        for (i, (data, _)) in chunk.iter().enumerate() {
            iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = data.len();
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &mut names[i].0 as *mut _ as *mut libc::c_void;
            msgs[i].msg_hdr.msg_namelen = names[i].1;
        }
        // SAFETY: every msghdr points at live data and names for the duration of the call;
        // the kernel only reads them.
        let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), chunk.len() as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc <= 0 {
            let e = io::Error::last_os_error();
            if rc == 0 || matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
                return Ok(sent);
            }
            // One bad destination (e.g. ICMP unreachable reported here): skip it.
            sent += 1;
            continue;
        }
        sent += rc as usize;
    }
    Ok(sent)
}

/// Read one packet (non-blocking); `Ok(None)` when nothing is queued.
pub fn read_packet(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reads at most buf.len() bytes into buf.
    let rc = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    match cvt_ssize(rc) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write one packet (non-blocking); false if the kernel did not take it.
pub fn write_packet(fd: &OwnedFd, data: &[u8]) -> bool {
    // SAFETY: writes data.len() bytes from data.
    let rc = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr() as *const libc::c_void, data.len()) };
    rc == data.len() as libc::ssize_t
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's `time.monotonic()` and asyncio.
pub fn monotonic() -> f64 {
    // SAFETY: plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: ts is a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CLOCK_REALTIME in microseconds (ping time stamps).
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
