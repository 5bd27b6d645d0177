//! Scenario 5: the same initial sync done by yrs and automerge between two processes over a
//! loopback TCP socket (plain TCP: no TLS), frames prefixed with their length (u64, little end).
//!
//! - yrs (`__yrs-send` / `__yrs-recv`): N records as maps in one top-level map, built in one
//!   transaction before the clock starts. The receiver connects and sends its state vector (the
//!   y-sync protocol's step 1); the sender encodes the update against it (here: the full state)
//!   and sends it; the receiver decodes and applies it, then checks it holds N records.
//! - automerge (`__am-send` / `__am-recv`): N records as maps under the root, committed every
//!   1,000 records, built before the clock starts. Then automerge's sync protocol in lockstep
//!   rounds: the receiver sends its message (or an empty frame), the sender answers with its own
//!   (or an empty frame), until a round in which neither side has anything to say.
//!
//! The time is the receiver's, from connecting until it holds all N records, as for meshsync.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde_json::json;

use crate::child::{emit, wait_for_eof};
use crate::data::{self, COLLECTION, FIELDS};
use crate::{arg, procfs, Error};

fn send_frame(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), Error> {
    stream.write_all(&(bytes.len() as u64).to_le_bytes())?;
    stream.write_all(bytes)?;
    stream.flush()?;
    Ok(())
}

fn recv_frame(stream: &mut TcpStream) -> Result<Vec<u8>, Error> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > 16 << 30 {
        return Err(format!("frame of {len} bytes").into());
    }
    let mut bytes = vec![0u8; len as usize];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn listen_and_announce(load_s: f64) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let load_hwm = procfs::hwm_kib(procfs::me());
    let reset = procfs::reset_hwm();
    emit(json!({"event": "ready", "addr": listener.local_addr()?.to_string(), "load_s": load_s,
        "load_hwm_kib": load_hwm, "hwm_reset": reset}));
    Ok(listener)
}

pub fn yrs_send(args: &[String]) -> Result<(), Error> {
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Doc, In, Map, MapPrelim, ReadTxn, StateVector, Transact};
    let n: u64 = arg(args, "--n")?.parse()?;
    let started = Instant::now();
    let doc = Doc::new();
    let map = doc.get_or_insert_map(COLLECTION);
    {
        let mut txn = doc.transact_mut();
        for range in data::chunks(n, 10_000) {
            for row in data::rows(range) {
                let fields: [(&str, In); 5] = [
                    (FIELDS[0], Any::from(row.name).into()),
                    (FIELDS[1], Any::from(row.category).into()),
                    (FIELDS[2], Any::from(row.qty).into()),
                    (FIELDS[3], Any::from(row.price).into()),
                    (FIELDS[4], Any::from(row.active).into()),
                ];
                map.insert(&mut txn, row.id, MapPrelim::from(fields));
            }
        }
        txn.commit();
    }
    let listener = listen_and_announce(started.elapsed().as_secs_f64())?;
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let sv = StateVector::decode_v1(&recv_frame(&mut stream)?)?;
    let update = doc.transact().encode_state_as_update_v1(&sv);
    send_frame(&mut stream, &update)?;
    emit(json!({"event": "sent", "update_bytes": update.len()}));
    wait_for_eof();
    std::mem::forget(doc);
    Ok(())
}

pub fn yrs_recv(args: &[String]) -> Result<(), Error> {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Map, ReadTxn, Transact, Update};
    let n: u64 = arg(args, "--n")?.parse()?;
    let addr = arg(args, "--addr")?;
    let replica = Doc::new();
    let map = replica.get_or_insert_map(COLLECTION);
    let t0 = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    send_frame(&mut stream, &replica.transact().state_vector().encode_v1())?;
    let update = recv_frame(&mut stream)?;
    let received_s = t0.elapsed().as_secs_f64();
    {
        let mut txn = replica.transact_mut();
        txn.apply_update(Update::decode_v1(&update)?)?;
    }
    let found = u64::from(map.len(&replica.transact()));
    let sync_s = t0.elapsed().as_secs_f64();
    if found != n {
        return Err(format!("the replica holds {found} of {n} records").into());
    }
    emit(json!({"event": "done", "sync_s": sync_s, "received_s": received_s, "bytes": update.len(),
        "hwm_kib": procfs::hwm_kib(procfs::me()), "cpu_s": procfs::cpu_s(procfs::me())}));
    std::mem::forget((replica, update));
    Ok(())
}

use yrs::updates::encoder::Encode;

pub fn am_send(args: &[String]) -> Result<(), Error> {
    use automerge::sync::{Message, State, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};
    let n: u64 = arg(args, "--n")?.parse()?;
    let started = Instant::now();
    let mut doc = AutoCommit::new();
    let mut last = Instant::now();
    for range in data::chunks(n, 1_000) {
        for row in data::rows(range.clone()) {
            let object = doc.put_object(ROOT, row.id.as_str(), ObjType::Map)?;
            doc.put(&object, FIELDS[0], row.name)?;
            doc.put(&object, FIELDS[1], row.category)?;
            doc.put(&object, FIELDS[2], row.qty)?;
            doc.put(&object, FIELDS[3], row.price)?;
            doc.put(&object, FIELDS[4], row.active)?;
        }
        doc.commit();
        if last.elapsed().as_secs() >= 5 {
            eprintln!("      automerge source: built {} of {n}", range.end);
            last = Instant::now();
        }
    }
    let listener = listen_and_announce(started.elapsed().as_secs_f64())?;
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    let mut state = State::new();
    let mut bytes = 0u64;
    loop {
        let theirs = recv_frame(&mut stream)?;
        let quiet_theirs = theirs.is_empty();
        if !quiet_theirs {
            doc.sync().receive_sync_message(&mut state, Message::decode(&theirs)?)?;
        }
        let ours = doc.sync().generate_sync_message(&mut state).map(|m| m.encode()).unwrap_or_default();
        bytes += ours.len() as u64;
        send_frame(&mut stream, &ours)?;
        if quiet_theirs && ours.is_empty() {
            break;
        }
    }
    emit(json!({"event": "sent", "bytes": bytes}));
    wait_for_eof();
    std::mem::forget(doc);
    Ok(())
}

pub fn am_recv(args: &[String]) -> Result<(), Error> {
    use automerge::sync::{Message, State, SyncDoc};
    use automerge::{AutoCommit, ReadDoc, ROOT};
    let n: u64 = arg(args, "--n")?.parse()?;
    let addr = arg(args, "--addr")?;
    let mut replica = AutoCommit::new();
    let mut state = State::new();
    let t0 = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut rounds = 0u64;
    let mut bytes = 0u64;
    loop {
        let ours = replica.sync().generate_sync_message(&mut state).map(|m| m.encode()).unwrap_or_default();
        send_frame(&mut stream, &ours)?;
        let theirs = recv_frame(&mut stream)?;
        bytes += theirs.len() as u64;
        rounds += 1;
        if theirs.is_empty() {
            if ours.is_empty() {
                break;
            }
        } else {
            replica.sync().receive_sync_message(&mut state, Message::decode(&theirs)?)?;
        }
    }
    let found = replica.length(ROOT) as u64;
    let sync_s = t0.elapsed().as_secs_f64();
    if found != n {
        return Err(format!("the replica holds {found} of {n} records").into());
    }
    emit(json!({"event": "done", "sync_s": sync_s, "rounds": rounds, "bytes": bytes,
        "hwm_kib": procfs::hwm_kib(procfs::me()), "cpu_s": procfs::cpu_s(procfs::me())}));
    std::mem::forget(replica);
    Ok(())
}
