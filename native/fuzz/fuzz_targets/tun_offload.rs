//! The TUN offload path (`offload::split` on arbitrary TUN reads, `Coalescer` on what it cuts
//! and on arbitrary packets): never panics; segments fit the input and, when cut from a
//! super-packet, the MTU; a refused read emits nothing; every write is at most one
//! IPv4 packet plus its virtio-net header; a merged write's header describes its packet; the
//! coalescer neither loses nor invents payload bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use x0tta6bl4_native::offload::{self, Coalescer, VnetHdr, MAX_IP_PACKET, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let mut read = data.to_vec();
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut scratch = Vec::new();
    // The overlay MTU this read is cut for: 576..=1599, from the input (varied by the fuzzer).
    let max_segment = 576 + data.get(VNET_HDR_LEN).map_or(0, |b| *b as usize) * 4;
    let gso = VnetHdr::decode(data).is_some_and(|h| h.gso_type != offload::GSO_NONE);
    if let Ok(n) = offload::split(&mut read, max_segment, &mut scratch, |s| segments.push(s.to_vec())) {
        assert_eq!(n, segments.len());
        assert!(n <= data.len().max(1));
        for s in &segments {
            assert!(s.len() <= data.len());
            // cut segments never exceed the MTU (a plain packet is the caller's to judge)
            assert!(!gso || s.len() <= max_segment);
        }
    } else {
        assert!(segments.is_empty(), "a refused read emits nothing");
    }
    // The coalescer takes what split cut and, separately, the raw input as one packet.
    for packets in [segments.clone(), vec![data.to_vec()]] {
        let mut c = Coalescer::new();
        for p in &packets {
            c.push(p, true);
        }
        let pushed = c.len();
        let mut written: Vec<Vec<u8>> = Vec::new();
        c.flush(true, |w| written.push(w.to_vec()));
        assert_eq!(written.len(), pushed);
        let mut bytes_out = 0usize;
        for w in &written {
            assert!(w.len() >= VNET_HDR_LEN && w.len() <= VNET_HDR_LEN + MAX_IP_PACKET.max(data.len()));
            let h = VnetHdr::decode(w).unwrap();
            if h.gso_type == offload::GSO_TCPV4 {
                let p = &w[VNET_HDR_LEN..];
                assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
                assert!(h.gso_size > 0 && (h.hdr_len as usize) < p.len());
                assert_eq!((h.csum_start, h.csum_offset), (20, 16));
                // headers of the merged segments are dropped; count the payload only
                bytes_out += p.len() - h.hdr_len as usize;
            } else {
                assert_eq!(h, VnetHdr::default());
                bytes_out += w.len() - VNET_HDR_LEN;
            }
        }
        let bytes_in: usize = packets.iter().map(|p| p.len()).sum();
        assert!(bytes_out <= bytes_in);
    }
});
