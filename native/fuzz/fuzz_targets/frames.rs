//! The inner-frame decoder on arbitrary plaintexts: never panics, never reads past the input,
//! and whatever decodes re-validates (entries) and round-trips the frames the fast path builds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use x0tta6bl4_native::frames::{self, Frame};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if frames::decode(data, &mut out).is_ok() {
        for (frame, range) in &out {
            assert!(range.end <= data.len());
            match frame {
                Frame::Entries { body, .. } => {
                    assert!(frames::check_entries(body).is_ok());
                    let _ = frames::entries(body).count();
                }
                Frame::Heartbeat(hb) => {
                    let mut b = Vec::new();
                    frames::put_heartbeat(&mut b, *hb);
                    assert_eq!(&b[..], &data[range.clone()]);
                }
                Frame::AppData { channel, payload } => {
                    let mut b = Vec::new();
                    assert!(frames::put_app_data(&mut b, *channel, payload));
                    assert_eq!(&b[..], &data[range.clone()]);
                }
                Frame::Routed(r) => {
                    let mut b = Vec::new();
                    assert!(frames::put_routed(&mut b, r.src, r.dst, r.ttl, r.flags, r.payload));
                    assert_eq!(&b[..], &data[range.clone()]);
                }
                _ => {}
            }
        }
    } else {
        assert!(out.is_empty());
    }
});
