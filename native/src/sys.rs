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
    for i in 0..n {
        out[i] = pfds[i].revents;
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
    storage: Vec<libc::sockaddr_storage>,
}

impl RecvBatch {
    pub fn new(buf_size: usize) -> Self {
        RecvBatch {
            bufs: (0..BATCH).map(|_| vec![0u8; buf_size]).collect(),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            storage: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
        }
    }
}

/// recvmmsg(MSG_DONTWAIT) into `batch`; the number of datagrams (0 when none is queued).
pub fn recv_batch(fd: &OwnedFd, batch: &mut RecvBatch) -> io::Result<usize> {
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    // SAFETY: mmsghdr is plain old data; zero is a valid initial value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for i in 0..BATCH {
        iovs[i].iov_base = batch.bufs[i].as_mut_ptr() as *mut libc::c_void;
        iovs[i].iov_len = batch.bufs[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &mut batch.storage[i] as *mut _ as *mut libc::c_void;
        msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: every msghdr points at a live buffer of its stated length and at a live
    // sockaddr_storage; the arrays outlive the call.
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
    for i in 0..n {
        batch.lens[i] = (msgs[i].msg_len as usize).min(batch.bufs[i].len());
        batch.addrs[i] = from_storage(&batch.storage[i]);
        if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            batch.addrs[i] = None; // truncated: dropped by the caller
        }
    }
    Ok(n)
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
