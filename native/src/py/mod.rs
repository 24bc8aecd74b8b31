//! The FFI edge: the Python module `x0tta6bl4_native._native`.
//!
//! Errors cross as the main package's own exception types
//! (`x0tta6bl4.protocol.errors.RemoteProtocolError` / `LocalProtocolError`, `ValueError`,
//! `OSError`); no Rust panic crosses (PyO3 turns one into `PanicException`, and the cores are
//! written not to panic on any input: the fuzz targets check that). Packet work runs with the
//! GIL released.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

mod dataplane;
mod session;

static REMOTE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static LOCAL_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn error_type<'py>(py: Python<'py>, cell: &'static PyOnceLock<Py<PyType>>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let t = cell.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let module = py.import("x0tta6bl4.protocol.errors")?;
        Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
    })?;
    Ok(t.bind(py).clone())
}

/// `RemoteProtocolError(reason, message)`.
pub(crate) fn remote_error(py: Python<'_>, reason: &str, message: &str) -> PyErr {
    match error_type(py, &REMOTE_ERROR, "RemoteProtocolError").and_then(|t| t.call1((reason, message))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// `LocalProtocolError(message)`.
pub(crate) fn local_error(py: Python<'_>, message: &str) -> PyErr {
    match error_type(py, &LOCAL_ERROR, "LocalProtocolError").and_then(|t| t.call1((message,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("AEAD_IMPLEMENTATION", "ring 0.17 (AES-256-GCM)")?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add("DATAPLANE_COUNTERS", crate::dataplane::COUNTER_NAMES.to_vec())?;
    session::register(m)?;
    dataplane::register(m)?;
    Ok(())
}
