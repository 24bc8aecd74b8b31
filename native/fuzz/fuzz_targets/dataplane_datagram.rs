//! The data plane's per-datagram path (`Shared::on_datagram`: index lookup, open, frame
//! decode, forwarding, end-to-end open, hand-up) on arbitrary datagrams and on authentic
//! packets carrying arbitrary plaintexts: never panics, the hand-up queue stays bounded.
#![no_main]
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use x0tta6bl4_native::dataplane::{Config, Kind, Outbox, Shared};
use x0tta6bl4_native::transport::{Keys, Limits, SessionCore};

struct World {
    shared: Arc<Shared>,
    peer: Mutex<SessionCore>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let shared = Shared::new(Config { node_id: "me".into(), ttl: 8 }, OwnedFd::from(sock)).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut ours = SessionCore::new(Limits::default()).unwrap();
        ours.install(&Keys { send_key: &a, recv_key: &b, local_index: 10, remote_index: 20, is_initiator: false }, 0.0).unwrap();
        let mut peer = SessionCore::new(Limits::default()).unwrap();
        peer.install(&Keys { send_key: &b, recv_key: &a, local_index: 20, remote_index: 10, is_initiator: false }, 0.0).unwrap();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        shared.attach(Kind::Link, "peer", Arc::new(Mutex::new(ours)), Some(addr));
        shared.reindex(Kind::Link, "peer");
        let mut routes = std::collections::HashMap::new();
        routes.insert("other".to_string(), "peer".to_string());
        shared.set_routes(routes);
        World { shared, peer: Mutex::new(peer) }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut out = Outbox::new();
    let mut raw = data.to_vec();
    w.shared.on_datagram(&mut raw, addr, 1.0, &mut out);
    let sealed = w.peer.lock().unwrap().seal(&data[..data.len().min(1400)], 1.0);
    if let Ok(mut datagram) = sealed {
        w.shared.on_datagram(&mut datagram, addr, 1.0, &mut out);
    }
    assert!(w.shared.drain_events(usize::MAX).len() <= x0tta6bl4_native::dataplane::MAX_EVENTS);
});
