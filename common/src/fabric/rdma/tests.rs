//! Unit tests of the `rdma` backend: the pure parts (side-channel codecs, batch planning
//! against the serving side's checks, chain linking and fences, MR flags) everywhere;
//! the refusal without a device where there is none, and a real loopback round trip
//! only where an RDMA device exists.

use super::batch::{build_chain, fence_flags, plan_batch, PlannedWr, WrKind};
use super::mr::mr_access;
use super::msg::{
    decode_accept, decode_connect, encode_accept, encode_connect, remote_regions, Accept, QpInfo,
    RemoteRegion, ACCEPT_REGION_LEN, KIND_RDMA_ACCEPT, KIND_RDMA_CONNECT, KIND_REFUSED,
    QP_INFO_LEN,
};
use super::NO_DEVICE;
use crate::fabric::region::RegionTable;
use crate::fabric::wire::{self, Frame, MAX_FRAME};
use crate::fabric::{
    Access, ClientOptions, Endpoint, FabricError, Op, OpError, OpOutput, PeerInfo, RegionDesc,
};
use crate::fabric::{ClusterKey, Connection, FnService, Server};
use crate::ids::RegionId;
use proptest::prelude::*;
use rdma_sys as ib;
use std::os::raw::c_int;
use std::ptr;
use std::sync::Arc;

fn key() -> ClusterKey {
    ClusterKey::from_material(b"rdma-test-cluster-key-0123456789").unwrap()
}

/// Whether this machine has an RDMA device (asked the same way the backend asks).
fn rdma_device_present() -> bool {
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; the list is freed right away.
    let list = unsafe { ib::ibv_get_device_list(&mut n) };
    if !list.is_null() {
        // SAFETY: returned above, freed once.
        unsafe { ib::ibv_free_device_list(list) };
    }
    !list.is_null() && n > 0
}

#[test]
fn rdma_without_device_connect_and_serve_are_unsupported() {
    if rdma_device_present() {
        eprintln!("this machine has an RDMA device; see rdma_loopback_round_trip");
        return;
    }
    let opts = ClientOptions::new(key());
    // Nothing listens there: the device check must come before the network.
    match Connection::connect(&Endpoint::Rdma("127.0.0.1:9".into()), &opts) {
        Err(FabricError::Unsupported(m)) => {
            assert!(m.starts_with(NO_DEVICE), "unexpected message: {m}");
            assert!(m.contains("use the tcp or shm transport"), "{m}");
        }
        Err(e) => panic!("expected Unsupported, got {e:?}"),
        Ok(_) => panic!("connected over rdma without an RDMA device"),
    }
    let server = Server::new(key());
    server.register(4096, Access::ALL).unwrap();
    match server.serve(
        &Endpoint::Rdma("127.0.0.1:0".into()),
        Arc::new(crate::fabric::NoRpc),
    ) {
        Err(FabricError::Unsupported(m)) => assert!(m.starts_with(NO_DEVICE), "{m}"),
        Err(e) => panic!("expected Unsupported, got {e:?}"),
        Ok(_) => panic!("served rdma without an RDMA device"),
    }
}

#[test]
fn rdma_side_channel_messages_round_trip() {
    let qp = QpInfo {
        qpn: 0x12_3456,
        psn: 0xab_cdef,
        lid: 7,
        gid: [9; 16],
        mtu: 3,
        rd_atomic: 16,
    };
    let bytes = encode_connect(&qp);
    let body = wire::read_frame(&mut &bytes[..], 256).unwrap().unwrap();
    assert_eq!(body.len(), 1 + QP_INFO_LEN);
    assert_eq!(decode_connect(&body).unwrap(), qp);

    let accept = Accept {
        qp,
        atomic_cap: 2,
        regions: vec![
            (RegionId(0), 0x7f00_0000_0000, 4096, 0x1234),
            (RegionId(1), 0x1000, 64, 9),
        ],
    };
    let bytes = encode_accept(&accept);
    let body = wire::read_frame(&mut &bytes[..], MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), 1 + QP_INFO_LEN + 1 + 4 + 2 * ACCEPT_REGION_LEN);
    assert_eq!(decode_accept(&body).unwrap(), accept);

    let refused = Frame::Refused {
        reason: "no".into(),
    }
    .to_bytes();
    assert!(matches!(decode_accept(&refused[4..]), Err(FabricError::Refused(r)) if r == "no"));
    // Truncation, trailing bytes and out-of-range fields are protocol errors.
    assert!(matches!(
        decode_accept(&body[..body.len() - 1]),
        Err(FabricError::Protocol(_))
    ));
    let mut long = body.clone();
    long.push(0);
    assert!(matches!(
        decode_accept(&long),
        Err(FabricError::Protocol(_))
    ));
    let mut bad_mtu = encode_connect(&qp)[4..].to_vec();
    bad_mtu[1 + 26] = 9;
    assert!(matches!(
        decode_connect(&bad_mtu),
        Err(FabricError::Protocol(_))
    ));
}

#[test]
fn rdma_accept_must_match_the_welcome_regions() {
    let descs = [
        RegionDesc {
            id: RegionId(0),
            len: 4096,
            access: Access::ALL,
        },
        RegionDesc {
            id: RegionId(1),
            len: 64,
            access: Access::READ_ONLY,
        },
    ];
    let good = [(RegionId(0), 0x1000, 4096, 1), (RegionId(1), 0x9000, 64, 2)];
    assert_eq!(remote_regions(&descs, &good).unwrap()[1].rkey, 2);
    assert!(remote_regions(&descs, &good[..1]).is_err());
    assert!(remote_regions(&descs, &[good[0], (RegionId(1), 0x9000, 65, 2)]).is_err());
    assert!(remote_regions(&descs, &[good[1], good[0]]).is_err());
    assert!(remote_regions(&descs, &[good[0], (RegionId(1), u64::MAX - 8, 64, 2)]).is_err());
}

#[test]
fn rdma_mr_access_follows_region_rights() {
    use ib::ibv_access_flags as f;
    let has = |a: Access, flag: f| mr_access(a) as u32 & flag.0 != 0;
    assert!(has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_READ));
    assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_WRITE));
    assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_REMOTE_ATOMIC));
    assert!(!has(Access::READ_ONLY, f::IBV_ACCESS_LOCAL_WRITE));
    assert!(has(Access::READ_WRITE, f::IBV_ACCESS_REMOTE_WRITE));
    assert!(!has(Access::READ_WRITE, f::IBV_ACCESS_REMOTE_ATOMIC));
    assert!(has(Access::ALL, f::IBV_ACCESS_REMOTE_ATOMIC));
    assert!(has(Access::ALL, f::IBV_ACCESS_LOCAL_WRITE));
    assert_eq!(mr_access(Access::default()), 0);
}

#[test]
fn rdma_chain_is_linked_signalled_once_and_fenced_after_reads() {
    let wr = |kind, local| PlannedWr {
        op: 0,
        kind,
        remote_addr: 0x1000,
        rkey: 5,
        local,
        len: 8,
    };
    let chain = [
        wr(WrKind::Read, 0),
        wr(WrKind::Read, 8),
        wr(WrKind::Write, 16),
        wr(WrKind::FetchAdd { add: 1 }, 24),
        wr(WrKind::Read, 32),
        wr(
            WrKind::Cas {
                expected: 1,
                new: 2,
            },
            40,
        ),
    ];
    assert_eq!(
        fence_flags(&chain),
        [false, false, true, false, false, true]
    );
    let mut sges: Vec<ib::ibv_sge> = chain
        .iter()
        .map(|w| ib::ibv_sge {
            addr: w.local as u64,
            length: w.len,
            lkey: 1,
        })
        .collect();
    let list = build_chain(&chain, &mut sges, 77);
    let signalled = ib::ibv_send_flags::IBV_SEND_SIGNALED.0;
    for (i, wr) in list.iter().enumerate() {
        let last = i == list.len() - 1;
        assert_eq!(wr.send_flags & signalled != 0, last);
        assert_eq!(wr.next.is_null(), last);
        if !last {
            assert!(ptr::eq(wr.next, &list[i + 1]));
        }
        assert!(ptr::eq(wr.sg_list, &sges[i]));
    }
    assert_eq!(list[5].wr_id, 77);
    assert_eq!(
        list[3].opcode,
        ib::ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD
    );
    // SAFETY: the test just wrote the atomic variant of this work request.
    let atomic = unsafe { list[5].wr.atomic };
    assert_eq!((atomic.compare_add, atomic.swap, atomic.rkey), (1, 2, 5));
}

fn qp_strategy() -> impl Strategy<Value = QpInfo> {
    (
        0u32..1 << 24,
        0u32..1 << 24,
        any::<u16>(),
        any::<[u8; 16]>(),
        1u8..=5,
        any::<u8>(),
    )
        .prop_map(|(qpn, psn, lid, gid, mtu, rd_atomic)| QpInfo {
            qpn,
            psn,
            lid,
            gid,
            mtu,
            rd_atomic,
        })
}

fn accept_strategy() -> impl Strategy<Value = Accept> {
    (
        qp_strategy(),
        any::<u8>(),
        proptest::collection::vec(
            (
                any::<u32>().prop_map(RegionId),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
            ),
            0..4,
        ),
    )
        .prop_map(|(qp, atomic_cap, regions)| Accept {
            qp,
            atomic_cap,
            regions,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The side-channel decoders are total: random bodies (behind either kind byte
    /// or none) give a message or an error, never a panic.
    #[test]
    fn rdma_side_channel_decoders_never_panic(
        kind in prop_oneof![Just(KIND_RDMA_CONNECT), Just(KIND_RDMA_ACCEPT), Just(KIND_REFUSED), any::<u8>()],
        rest in proptest::collection::vec(any::<u8>(), 0..2 * (QP_INFO_LEN + 5 + 2 * ACCEPT_REGION_LEN)),
    ) {
        let _ = decode_connect(&rest);
        let _ = decode_accept(&rest);
        let mut body = vec![kind];
        body.extend_from_slice(&rest);
        let _ = decode_connect(&body);
        let _ = decode_accept(&body);
    }

    /// Both messages round-trip; one changed byte or a cut gives an error or a
    /// message, never a panic.
    #[test]
    fn rdma_side_channel_messages_survive_damage(
        qp in qp_strategy(),
        accept in accept_strategy(),
        at in any::<prop::sample::Index>(),
        x in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let c = encode_connect(&qp)[4..].to_vec();
        prop_assert_eq!(decode_connect(&c).unwrap(), qp);
        let a = encode_accept(&accept)[4..].to_vec();
        prop_assert_eq!(decode_accept(&a).unwrap(), accept);
        for mut body in [c, a] {
            prop_assert!(decode_connect(&body[..cut.index(body.len())]).is_err());
            prop_assert!(decode_accept(&body[..cut.index(body.len())]).is_err());
            let i = at.index(body.len());
            body[i] ^= x;
            let _ = decode_connect(&body);
            let _ = decode_accept(&body);
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let region = (0u32..4).prop_map(RegionId);
    let offset = prop_oneof![0u64..80, Just(u64::MAX - 3)];
    prop_oneof![
        (region.clone(), offset.clone(), 0u32..40).prop_map(|(region, offset, len)| Op::Read {
            region,
            offset,
            len
        }),
        (
            region.clone(),
            offset.clone(),
            proptest::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(region, offset, data)| Op::Write {
                region,
                offset,
                data
            }),
        (region.clone(), offset.clone(), any::<u64>(), any::<u64>()).prop_map(
            |(region, offset, expected, new)| Op::Cas {
                region,
                offset,
                expected,
                new
            }
        ),
        (region, offset, any::<u64>()).prop_map(|(region, offset, add)| Op::FetchAdd {
            region,
            offset,
            add
        }),
    ]
}

proptest! {
    /// The client-side checks give exactly the per-op errors the serving side gives
    /// on tcp and shm, and every op that passes is posted at an 8-aligned slot.
    #[test]
    fn rdma_client_checks_match_the_server(ops in proptest::collection::vec(op_strategy(), 0..24)) {
        let table = RegionTable::default();
        for access in [Access::READ_ONLY, Access::READ_WRITE, Access::ALL] {
            table.register(64, access).unwrap();
        }
        let remotes: Vec<RemoteRegion> = table
            .descs()
            .into_iter()
            .map(|desc| RemoteRegion { desc, addr: 0x10_0000 * (u64::from(desc.id.0) + 1), rkey: desc.id.0 })
            .collect();
        let plan = plan_batch(&ops, &remotes);
        let served = table.serve_batch(&ops);
        prop_assert_eq!(plan.results.len(), ops.len());
        for (i, (planned, served)) in plan.results.iter().zip(&served).enumerate() {
            match planned {
                Some(r) => prop_assert_eq!(r, served, "op {} {:?}", i, &ops[i]),
                None => prop_assert!(served.is_ok(), "op {} {:?} posted but refused: {:?}", i, &ops[i], served),
            }
        }
        let mut end = 0;
        for w in &plan.wrs {
            prop_assert!(plan.results[w.op].is_none());
            prop_assert_eq!(w.local % 8, 0);
            prop_assert!(w.local >= end);
            end = w.local + w.len as usize;
            let r = &remotes[ops[w.op].region().0 as usize];
            prop_assert!(w.remote_addr >= r.addr && w.remote_addr + u64::from(w.len) <= r.addr + r.desc.len);
        }
        prop_assert!(end <= plan.bounce_len);
    }
}

/// A real round trip; runs only where a device exists (e.g. a CI runner with
/// `rdma link add rxe0 type rxe netdev eth0`).
#[test]
fn rdma_loopback_round_trip() {
    if !rdma_device_present() {
        eprintln!("no RDMA device: skipping the loopback round trip");
        return;
    }
    let server = Server::new(key());
    let data = server.register(1 << 16, Access::ALL).unwrap();
    let ro = server.register(4096, Access::READ_ONLY).unwrap();
    data.mem().store_u64(8, 40).unwrap();
    ro.mem().write(0, b"read-only").unwrap();
    let echo = FnService(|_: &PeerInfo, req: &[u8]| Ok(req.to_vec()));
    let handle = server
        .serve(&Endpoint::Rdma("127.0.0.1:0".into()), Arc::new(echo))
        .expect("serve over rdma");
    let conn = Connection::connect(handle.endpoint(), &ClientOptions::new(key()))
        .expect("connect over rdma");
    let (d, r) = (data.id(), ro.id());
    let res = conn
        .post(&[
            Op::Write {
                region: d,
                offset: 100,
                data: b"hello".to_vec(),
            },
            Op::Read {
                region: d,
                offset: 100,
                len: 5,
            },
            Op::Cas {
                region: d,
                offset: 8,
                expected: 40,
                new: 41,
            },
            Op::FetchAdd {
                region: d,
                offset: 8,
                add: 1,
            },
            Op::Read {
                region: r,
                offset: 0,
                len: 9,
            },
            Op::Write {
                region: r,
                offset: 0,
                data: vec![1],
            },
            Op::Read {
                region: r,
                offset: 4090,
                len: 8,
            },
        ])
        .unwrap();
    assert_eq!(res[0], Ok(OpOutput::Written));
    assert_eq!(res[1], Ok(OpOutput::Read(b"hello".to_vec())));
    assert_eq!(res[2], Ok(OpOutput::Cas { previous: 40 }));
    assert_eq!(res[3], Ok(OpOutput::FetchAdd { previous: 41 }));
    assert_eq!(res[4], Ok(OpOutput::Read(b"read-only".to_vec())));
    assert_eq!(res[5], Err(OpError::AccessDenied));
    assert_eq!(res[6], Err(OpError::OutOfBounds));
    assert_eq!(data.mem().load_u64(8).unwrap(), 42);
    let reads: Vec<Op> = (0..3000)
        .map(|i| Op::Read {
            region: d,
            offset: i * 8 % 4096,
            len: 8,
        })
        .collect();
    assert_eq!(conn.post(&reads).unwrap().len(), 3000);
    assert_eq!(conn.call(b"ping").unwrap(), b"ping");
    assert!(conn.stats().onesided_batches >= 2);
}
