//! `Session`, `ReplayFilter`, `decode_frames` and the timing loops, for Python.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use super::{local_error, remote_error};
use crate::aead::Cipher;
use crate::bench;
use crate::dataplane::{Kind, Shared};
use crate::frames::{self, Frame};
use crate::replay::ReplayFilter;
use crate::transport::{self, Keys, Limits, SessionCore, Slot};

static OPEN_RESULT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SESSION_STATS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn session_attr<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyAny>>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let v = cell.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("x0tta6bl4.protocol.session")?.getattr(name)?.unbind())
    })?;
    Ok(v.bind(py).clone())
}

/// Locks a session; a poisoned lock (a panic elsewhere) is refused, never crossed.
pub(crate) fn lock(core: &Mutex<SessionCore>) -> PyResult<MutexGuard<'_, SessionCore>> {
    core.lock().map_err(|_| PyRuntimeError::new_err("native session state is poisoned"))
}

fn int_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<i128> {
    value.extract::<i128>().map_err(|_| PyValueError::new_err(format!("{what} must be an int of at most 128 bits")))
}

/// The transport session (docs/transport.md), with the reference's API and behaviour.
///
/// State lives behind a mutex so that a native data plane's I/O thread can seal and open
/// with it while Python installs keys and runs timers.
#[pyclass(name = "Session", module = "x0tta6bl4_native")]
pub struct PySession {
    pub(crate) core: Arc<Mutex<SessionCore>>,
    limits: Limits,
    /// Data planes this session is attached to: their index tables follow its keypairs.
    attached: Mutex<Vec<(Weak<Shared>, Kind, String)>>,
}

impl PySession {
    pub(crate) fn with_limits(limits: Limits) -> PyResult<Self> {
        let core = SessionCore::new(limits).map_err(PyValueError::new_err)?;
        Ok(PySession { core: Arc::new(Mutex::new(core)), limits, attached: Mutex::new(Vec::new()) })
    }

    pub(crate) fn note_attached(&self, shared: &Arc<Shared>, kind: Kind, node_id: &str) {
        let mut list = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(w, k, n)| w.strong_count() > 0 && !(*k == kind && n == node_id && w.ptr_eq(&Arc::downgrade(shared))));
        list.push((Arc::downgrade(shared), kind, node_id.to_owned()));
    }

    /// The live local indices changed: every data plane holding this session re-reads them.
    fn reindex(&self) {
        let list: Vec<(Weak<Shared>, Kind, String)> = self.attached.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (shared, kind, node_id) in list {
            if let Some(shared) = shared.upgrade() {
                shared.reindex(kind, &node_id);
            }
        }
    }
}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (
        *,
        rekey_after_time = transport::REKEY_AFTER_TIME,
        reject_after_time = transport::REJECT_AFTER_TIME,
        rekey_after_messages = None,
        reject_after_messages = None,
        responder_rekey_delay = transport::RESPONDER_REKEY_DELAY,
        keepalive_timeout = transport::KEEPALIVE_TIMEOUT,
        max_datagram_size = transport::MAX_TRANSPORT_DATAGRAM_SIZE as i64,
    ))]
    fn new(
        rekey_after_time: f64,
        reject_after_time: f64,
        rekey_after_messages: Option<&Bound<'_, PyAny>>,
        reject_after_messages: Option<&Bound<'_, PyAny>>,
        responder_rekey_delay: f64,
        keepalive_timeout: f64,
        max_datagram_size: i64,
    ) -> PyResult<Self> {
        let rekey = match rekey_after_messages {
            Some(v) => int_arg(v, "rekey_after_messages")?,
            None => transport::REKEY_AFTER_MESSAGES as i128,
        };
        let reject = match reject_after_messages {
            Some(v) => int_arg(v, "reject_after_messages")?,
            None => transport::REJECT_AFTER_MESSAGES as i128,
        };
        let limit = transport::REJECT_AFTER_MESSAGES as i128;
        if !(0 < rekey && rekey <= reject && reject <= limit) {
            return Err(PyValueError::new_err(
                "need 0 < rekey_after_messages <= reject_after_messages <= REJECT_AFTER_MESSAGES",
            ));
        }
        let max_datagram_size = usize::try_from(max_datagram_size).unwrap_or(0);
        let limits = Limits {
            rekey_after_time,
            reject_after_time,
            rekey_after_messages: rekey as u64,
            reject_after_messages: reject as u64,
            responder_rekey_delay,
            keepalive_timeout,
            max_datagram_size,
        };
        PySession::with_limits(limits)
    }

    #[getter]
    fn can_send(&self) -> PyResult<bool> {
        Ok(lock(&self.core)?.can_send())
    }

    #[getter]
    fn keepalive_timeout(&self) -> f64 {
        self.limits.keepalive_timeout
    }

    #[getter]
    fn max_plaintext_size(&self) -> usize {
        self.limits.max_plaintext_size()
    }

    /// Put a completed handshake's `TransportKeys` to use.
    fn install(&self, py: Python<'_>, keys: &Bound<'_, PyAny>, now: f64) -> PyResult<()> {
        let send_key: Vec<u8> = keys.getattr("send_key")?.extract()?;
        let recv_key: Vec<u8> = keys.getattr("recv_key")?.extract()?;
        if send_key.len() != 32 || recv_key.len() != 32 {
            return Err(local_error(py, "transport keys must be 32-byte AES-256-GCM keys"));
        }
        let mut indices = [0u32; 2];
        for (i, name) in ["local", "remote"].iter().enumerate() {
            let value = int_arg(&keys.getattr(format!("{name}_index"))?, "index")?;
            indices[i] = u32::try_from(value)
                .map_err(|_| local_error(py, &format!("{name} index {value} is not a u32")))?;
        }
        let is_initiator: bool = keys.getattr("is_initiator")?.extract()?;
        let k = Keys { send_key: &send_key, recv_key: &recv_key, local_index: indices[0], remote_index: indices[1], is_initiator };
        let installed = lock(&self.core)?.install(&k, now);
        installed.map_err(|e| local_error(py, &e.0))?;
        self.reindex();
        Ok(())
    }

    /// Encrypt `plaintext` under the current keypair into one transport datagram.
    fn seal<'py>(&self, py: Python<'py>, plaintext: &[u8], now: f64) -> PyResult<Bound<'py, PyBytes>> {
        let sealed = lock(&self.core)?.seal(plaintext, now);
        match sealed {
            Ok(datagram) => Ok(PyBytes::new(py, &datagram)),
            Err(e) => Err(local_error(py, &e.0)),
        }
    }

    /// Authenticate and decrypt one datagram: `OpenResult(plaintext, keypair_promoted)`.
    fn open<'py>(&self, py: Python<'py>, datagram: &[u8], now: f64) -> PyResult<Bound<'py, PyAny>> {
        let mut buf = datagram.to_vec();
        let opened = lock(&self.core)?.open_in_place(&mut buf, now);
        match opened {
            Ok(o) => {
                let pt = PyBytes::new(py, &buf[o.start..o.start + o.len]);
                session_attr(py, &OPEN_RESULT, "OpenResult")?.call1((pt, o.promoted))
            }
            Err(d) => Err(remote_error(py, d.reason.as_str(), &d.message)),
        }
    }

    fn needs_rekey(&self, now: f64) -> PyResult<bool> {
        Ok(lock(&self.core)?.needs_rekey(now))
    }

    fn needs_keepalive(&self, now: f64) -> PyResult<bool> {
        Ok(lock(&self.core)?.needs_keepalive(now))
    }

    fn get_timer(&self) -> PyResult<Option<f64>> {
        Ok(lock(&self.core)?.get_timer())
    }

    fn handle_timer(&self, now: f64) -> PyResult<()> {
        let expired = {
            let mut core = lock(&self.core)?;
            let before = core.stats.keypairs_expired;
            core.handle_timer(now);
            core.stats.keypairs_expired != before
        };
        if expired {
            self.reindex();
        }
        Ok(())
    }

    /// A snapshot of the counters as the reference's `SessionStats`.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = lock(&self.core)?.stats;
        let dropped = PyDict::new(py);
        for reason in transport::DROP_REASONS {
            let n = s.dropped[reason as usize];
            if n > 0 {
                dropped.set_item(reason.as_str(), n)?;
            }
        }
        session_attr(py, &SESSION_STATS, "SessionStats")?.call1((
            s.packets_sent,
            s.packets_received,
            s.keypairs_installed,
            s.keypairs_promoted,
            s.keypairs_expired,
            dropped,
        ))
    }

    /// The previous/current/next slots (a snapshot; only the session changes them).
    #[getter]
    fn keypairs(&self) -> PyResult<KeypairsView> {
        let core = lock(&self.core)?;
        let info = |slot| core.slot(slot).map(KeypairInfo::of);
        Ok(KeypairsView { previous: info(Slot::Previous), current: info(Slot::Current), next: info(Slot::Next) })
    }

    fn __repr__(&self) -> PyResult<String> {
        let core = lock(&self.core)?;
        Ok(format!("Session(native, can_send={}, live_keypairs={})", core.can_send(), core.local_indices().len()))
    }
}

/// What Python may see of a keypair (no key material).
#[pyclass(name = "KeypairInfo", module = "x0tta6bl4_native", frozen, get_all, skip_from_py_object)]
#[derive(Clone)]
pub struct KeypairInfo {
    local_index: u32,
    remote_index: u32,
    is_initiator: bool,
    created_at: f64,
    expires_at: f64,
    send_counter: u64,
}

impl KeypairInfo {
    fn of(k: &transport::Keypair) -> Self {
        KeypairInfo {
            local_index: k.local_index,
            remote_index: k.remote_index,
            is_initiator: k.is_initiator,
            created_at: k.created_at,
            expires_at: k.expires_at,
            send_counter: k.send_counter,
        }
    }
}

#[pymethods]
impl KeypairInfo {
    fn __repr__(&self) -> String {
        let role = if self.is_initiator { "initiator" } else { "responder" };
        format!(
            "Keypair(local_index={}, remote_index={}, {role}, created_at={}, send_counter={})",
            self.local_index, self.remote_index, self.created_at, self.send_counter
        )
    }
}

#[pyclass(name = "KeypairsView", module = "x0tta6bl4_native", frozen, get_all)]
pub struct KeypairsView {
    previous: Option<KeypairInfo>,
    current: Option<KeypairInfo>,
    next: Option<KeypairInfo>,
}

#[pymethods]
impl KeypairsView {
    /// The keypair to which a packet addressed to `local_index` belongs, if any.
    fn lookup(&self, local_index: i128) -> Option<KeypairInfo> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .find(|k| k.local_index as i128 == local_index)
            .cloned()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let live: Vec<KeypairInfo> = [&self.previous, &self.current, &self.next].into_iter().flatten().cloned().collect();
        PyList::new(py, live)?.try_iter().map(|it| it.into_any())
    }
}

/// RFC 6479 window (the reference's `ReplayFilter`), for cross tests.
#[pyclass(name = "ReplayFilter", module = "x0tta6bl4_native")]
pub struct PyReplayFilter(ReplayFilter);

#[pymethods]
impl PyReplayFilter {
    #[new]
    fn new() -> Self {
        PyReplayFilter(ReplayFilter::new())
    }

    fn reset(&mut self) {
        self.0.reset();
    }

    fn validate_counter(&mut self, counter: i128, limit: i128) -> bool {
        if counter < 0 || limit <= 0 {
            return false;
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        match u64::try_from(counter) {
            Ok(c) => self.0.validate_counter(c, limit),
            Err(_) => false,
        }
    }
}

/// Decode a plaintext into frames as tuples `(type, *fields)` (cross tests and fuzzing):
/// PADDING `(0, length)`, HEARTBEAT `(1, seq, echo_seq | None, echo_delay_us, probe)`,
/// LINK_STATE_ADVERT `(3, body)`, ROUTED `(4, src, dst, ttl, flags, payload)`, APP_DATA
/// `(5, channel, payload)`, FRAGMENT `(6, msg_id, total, offset, data)`, LSDB_* `(7|8|9,
/// ((origin, seq), ...))`. Raises `RemoteProtocolError` (`bad_frame`, `unknown_frame`).
#[pyfunction]
fn decode_frames<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let mut out = Vec::new();
    frames::decode(data, &mut out).map_err(|e| remote_error(py, e.reason, &e.message))?;
    let list = PyList::empty(py);
    for (frame, _) in out {
        let item: Bound<'py, PyTuple> = match frame {
            Frame::Padding(n) => (0u8, n).into_pyobject(py)?,
            Frame::Heartbeat(h) => {
                let (echo_seq, delay) = match h.echo {
                    Some((s, d)) => (Some(s), d),
                    None => (None, 0),
                };
                (1u8, h.seq, echo_seq, delay, h.probe).into_pyobject(py)?
            }
            Frame::LinkStateAdvert(b) => (3u8, PyBytes::new(py, b)).into_pyobject(py)?,
            Frame::Routed(r) => (4u8, r.src, r.dst, r.ttl, r.flags, PyBytes::new(py, r.payload)).into_pyobject(py)?,
            Frame::AppData { channel, payload } => (5u8, channel, PyBytes::new(py, payload)).into_pyobject(py)?,
            Frame::Fragment { msg_id, total, offset, data } => (6u8, msg_id, total, offset, PyBytes::new(py, data)).into_pyobject(py)?,
            Frame::Entries { kind, body } => {
                let entries: Vec<(String, u64)> = frames::entries(body).map(|(o, s)| (o.to_owned(), s)).collect();
                (kind, PyTuple::new(py, entries)?).into_pyobject(py)?
            }
        };
        list.append(item)?;
    }
    Ok(list)
}

/// Seconds for `packets` seal+open round trips of `packet_size`-byte payloads through a
/// native session pair (GIL released).
#[pyfunction]
fn time_session(py: Python<'_>, packets: u64, packet_size: usize, key_a: [u8; 32], key_b: [u8; 32]) -> PyResult<f64> {
    let payload = vec![0xA5u8; packet_size];
    let result = py.detach(|| {
        let size = (transport::MIN_DATAGRAM_SIZE + packet_size).max(transport::MAX_TRANSPORT_DATAGRAM_SIZE);
        if size > transport::MAX_UDP_PAYLOAD_SIZE {
            return Err("packet_size too large".to_string());
        }
        let (mut sender, mut receiver) = bench::session_pair(&key_a, &key_b, size);
        bench::time_session(&mut sender, &mut receiver, &payload, packets)
    });
    result.map_err(PyValueError::new_err)
}

/// Seconds for `packets` bare AES-256-GCM seal+open round trips (GIL released).
#[pyfunction]
fn time_bare_aead(py: Python<'_>, packets: u64, packet_size: usize, key: [u8; 32]) -> PyResult<f64> {
    let payload = vec![0xA5u8; packet_size];
    let result = py.detach(|| {
        let cipher = Cipher::new(&key).ok_or_else(|| "bad key".to_string())?;
        bench::time_bare(&cipher, &payload, packets)
    });
    result.map_err(PyValueError::new_err)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySession>()?;
    m.add_class::<KeypairInfo>()?;
    m.add_class::<KeypairsView>()?;
    m.add_class::<PyReplayFilter>()?;
    m.add_function(wrap_pyfunction!(decode_frames, m)?)?;
    m.add_function(wrap_pyfunction!(time_session, m)?)?;
    m.add_function(wrap_pyfunction!(time_bare_aead, m)?)?;
    Ok(())
}
