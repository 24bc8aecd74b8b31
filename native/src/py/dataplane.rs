//! `Dataplane`: the I/O thread and tables of one node, for Python (see `crate::dataplane`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::session::PySession;
use crate::dataplane::{self, Config, Event, Kind, Overlay, Shared};
use crate::sys;

fn socket_addr(addr: (String, u16)) -> PyResult<SocketAddr> {
    if let Ok(ip) = addr.0.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, addr.1));
    }
    (addr.0.as_str(), addr.1)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| PyValueError::new_err(format!("cannot resolve {}:{}", addr.0, addr.1)))
}

fn ipv4(text: &str) -> PyResult<[u8; 4]> {
    text.parse::<std::net::Ipv4Addr>()
        .map(|ip| ip.octets())
        .map_err(|_| PyValueError::new_err(format!("not an IPv4 address: {text:.40}")))
}

/// The native data plane of one node: owns the UDP socket (and the TUN device once given),
/// runs the packet path on its own thread, hands up the rest (see `drain`).
#[pyclass(name = "Dataplane", module = "x0tta6bl4_native")]
pub struct PyDataplane {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PyDataplane {
    fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.shared.close_socket();
    }
}

impl Drop for PyDataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[pymethods]
impl PyDataplane {
    /// Take ownership of the bound UDP socket `fd` (from ``socket.detach()``) and start the
    /// I/O thread.
    #[new]
    #[pyo3(signature = (fd, node_id, *, ttl = 16))]
    fn new(fd: i32, node_id: String, ttl: u8) -> PyResult<Self> {
        let owned = sys::owned_fd(fd).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let shared = Shared::new(Config { node_id, ttl }, owned).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("x0-dataplane".into())
            .spawn(move || dataplane::run(worker))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(PyDataplane { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Stop the I/O thread and close the socket's use (idempotent).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.stop());
    }

    #[getter]
    fn closed(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Readable (level-triggered) while events wait for `drain`.
    #[getter]
    fn notify_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.shared.notify.as_raw_fd()
    }

    #[getter]
    fn local_addr(&self) -> (String, u16) {
        (self.shared.local_addr.ip().to_string(), self.shared.local_addr.port())
    }

    /// The link session of neighbour `node_id` (its packets arrive from / go to `addr`).
    #[pyo3(signature = (node_id, session, addr = None))]
    fn attach_link(&self, node_id: &str, session: &PySession, addr: Option<(String, u16)>) -> PyResult<()> {
        let addr = addr.map(socket_addr).transpose()?;
        self.shared.attach(Kind::Link, node_id, session.core.clone(), addr);
        session.note_attached(&self.shared, Kind::Link, node_id);
        self.shared.reindex(Kind::Link, node_id);
        Ok(())
    }

    /// The end-to-end session with node `node_id`.
    fn attach_e2e(&self, node_id: &str, session: &PySession) {
        self.shared.attach(Kind::E2e, node_id, session.core.clone(), None);
        session.note_attached(&self.shared, Kind::E2e, node_id);
        self.shared.reindex(Kind::E2e, node_id);
    }

    /// Remove peer `node_id` (its link and/or end-to-end session): its keys stop working here.
    #[pyo3(signature = (node_id, *, link = true, e2e = true))]
    fn remove_peer(&self, node_id: &str, link: bool, e2e: bool) {
        if link {
            self.shared.detach(Kind::Link, node_id);
        }
        if e2e {
            self.shared.detach(Kind::E2e, node_id);
        }
    }

    fn set_addr(&self, node_id: &str, addr: (String, u16)) -> PyResult<()> {
        self.shared.set_addr(node_id, socket_addr(addr)?);
        Ok(())
    }

    /// The failure detector's verdict (our answers to PROBEs probe while it is down).
    fn set_link_up(&self, node_id: &str, up: bool) {
        self.shared.set_link_up(node_id, up);
    }

    /// The forwarding table: destination node → next-hop neighbour.
    fn set_routes(&self, routes: HashMap<String, String>) {
        self.shared.set_routes(routes);
    }

    /// TUN mode: our overlay address, the MTU and every member's address → node id; None
    /// turns the overlay off.
    #[pyo3(signature = (local_ip, mtu = 0, members = None))]
    fn set_overlay(&self, local_ip: Option<&str>, mtu: usize, members: Option<HashMap<String, String>>) -> PyResult<()> {
        let Some(local_ip) = local_ip else {
            self.shared.set_overlay(None);
            return Ok(());
        };
        let mut overlay = Overlay { local_ip: ipv4(local_ip)?, mtu, ..Overlay::default() };
        for (ip, node) in members.unwrap_or_default() {
            let Ok(packed) = ipv4(&ip) else { continue };
            overlay.ip_of.insert(node.clone(), packed);
            overlay.by_ip.insert(packed, node);
        }
        self.shared.set_overlay(Some(overlay));
        Ok(())
    }

    /// Hand over the TUN device's descriptor (a dup the data plane owns), or None.
    #[pyo3(signature = (fd = None))]
    fn set_tun(&self, fd: Option<i32>) -> PyResult<()> {
        let owned = fd.map(sys::owned_fd).transpose().map_err(|e| PyOSError::new_err(e.to_string()))?;
        self.shared.set_tun(owned).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// The TUN offloads in use: `csum`, `tso4`, `uso` (empty: plain packets, one per read).
    fn tun_offload(&self) -> Vec<&'static str> {
        let flags = self.shared.tun_offload.load(Ordering::SeqCst);
        let mut names = Vec::new();
        for (bit, name) in [(sys::TUN_F_CSUM, "csum"), (sys::TUN_F_TSO4, "tso4"), (sys::TUN_F_USO4, "uso")] {
            if flags & bit != 0 {
                names.push(name);
            }
        }
        names
    }

    /// The socket's offloads: `gso` (UDP_SEGMENT sends; off once the kernel refused one) and
    /// `gro` (UDP_GRO receives).
    fn udp_offload(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.shared.udp_gso_enabled() {
            names.push("gso");
        }
        if self.shared.udp_gro_enabled() {
            names.push("gro");
        }
        names
    }

    /// Turn offloads on or off (None: unchanged): `tun` (the TUN's segmentation and our
    /// coalescing), `gso` (UDP_SEGMENT sends), `gro` (UDP_GRO receives). For measurements
    /// (`bench tun --breakdown`); the defaults are all on where the kernel allows. Returns
    /// `(tun_offload(), udp_offload())`.
    #[pyo3(signature = (*, tun = None, gso = None, gro = None))]
    fn set_offload(&self, tun: Option<bool>, gso: Option<bool>, gro: Option<bool>) -> (Vec<&'static str>, Vec<&'static str>) {
        self.shared.set_offload(tun, gso, gro);
        (self.tun_offload(), self.udp_offload())
    }

    /// Fault injection: datagrams to or from these UDP ports are dropped.
    fn set_blocked_ports(&self, ports: HashSet<u16>) {
        self.shared.set_blocked_ports(ports);
    }

    /// Send `(datagram, (host, port))` pairs with sendmmsg; how many the kernel took.
    fn send(&self, py: Python<'_>, packets: Vec<(Vec<u8>, (String, u16))>) -> PyResult<usize> {
        let mut resolved = Vec::with_capacity(packets.len());
        for (data, addr) in packets {
            resolved.push((data, socket_addr(addr)?));
        }
        Ok(py.detach(|| {
            let refs: Vec<(&[u8], SocketAddr)> = resolved.iter().map(|(d, a)| (d.as_slice(), *a)).collect();
            self.shared.send(&refs)
        }))
    }

    /// Up to `max_events` events handed up since the last call (the rest stay queued and the
    /// notify fd readable), as tuples:
    /// `(0, datagram, (host, port), t)` a datagram for `receive_datagram`;
    /// `(1, peer, frames, promoted, t, probe_answered)` control frames of a link packet;
    /// `(2, src, payload, t)` an end-to-end datagram for Python's end-to-end channels;
    /// `(3, src, frames, promoted, t)` frames of an end-to-end packet for Python;
    /// `(4, dest, ip_packet)` a TUN packet Python must send (no session yet, or too big).
    #[pyo3(signature = (max_events = 65_536))]
    fn drain<'py>(&self, py: Python<'py>, max_events: usize) -> PyResult<Bound<'py, PyList>> {
        let events = self.shared.drain_events(max_events);
        let out = PyList::empty(py);
        for event in events {
            match event {
                Event::Datagram { data, addr, t } => {
                    out.append((0u8, PyBytes::new(py, &data), (addr.ip().to_string(), addr.port()), t))?
                }
                Event::Link { peer, plaintext, promoted, t, answered_probe } => {
                    out.append((1u8, peer, PyBytes::new(py, &plaintext), promoted, t, answered_probe))?
                }
                Event::E2eDatagram { src, payload, t } => out.append((2u8, src, PyBytes::new(py, &payload), t))?,
                Event::E2e { src, plaintext, promoted, t } => {
                    out.append((3u8, src, PyBytes::new(py, &plaintext), promoted, t))?
                }
                Event::TunPacket { dest, packet } => out.append((4u8, dest, PyBytes::new(py, &packet)))?,
            }
        }
        Ok(out)
    }

    /// Monotonic time of the last authentic packet from each link (or end-to-end) peer.
    #[pyo3(signature = (*, e2e = false))]
    fn last_received(&self, e2e: bool) -> HashMap<String, f64> {
        let kind = if e2e { Kind::E2e } else { Kind::Link };
        self.shared.last_received(kind).into_iter().collect()
    }

    /// Packet counters and drops by reason (only the non-zero ones).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.shared.counters.snapshot() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// The native echo benchmark: `window` mesh echoes to `dest` in flight for `duration`
    /// seconds through the end-to-end session. `(completed, seconds, round trips)`.
    #[pyo3(signature = (dest, window, duration, max_samples = 100_000))]
    fn echo_bench(&self, py: Python<'_>, dest: &str, window: usize, duration: f64, max_samples: usize) -> PyResult<(u64, f64, Vec<f64>)> {
        if window == 0 || window > 4096 || !(duration > 0.0 && duration <= 600.0) {
            return Err(PyValueError::new_err("window must be 1..4096 and duration in (0, 600] s"));
        }
        py.detach(|| self.shared.echo_bench(dest, window, duration, max_samples)).map_err(PyRuntimeError::new_err)
    }
}

/// Raw UDP echo in native code with the data plane's batching: `(completed, seconds, rtts)`.
#[pyfunction]
#[pyo3(signature = (window, duration, size = 13, max_samples = 100_000))]
fn raw_echo_bench(py: Python<'_>, window: usize, duration: f64, size: usize, max_samples: usize) -> PyResult<(u64, f64, Vec<f64>)> {
    if window == 0 || window > 4096 || !(duration > 0.0 && duration <= 600.0) || size > 1400 {
        return Err(PyValueError::new_err("window must be 1..4096, duration in (0, 600] s, size <= 1400"));
    }
    py.detach(|| dataplane::raw_echo(window, duration, size, max_samples)).map_err(|e| PyOSError::new_err(e.to_string()))
}

/// CLOCK_MONOTONIC seconds (the clock of the data plane's time stamps and of asyncio).
#[pyfunction]
fn monotonic() -> f64 {
    sys::monotonic()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDataplane>()?;
    m.add_function(wrap_pyfunction!(raw_echo_bench, m)?)?;
    m.add_function(wrap_pyfunction!(monotonic, m)?)?;
    Ok(())
}
