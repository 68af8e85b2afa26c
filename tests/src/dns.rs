//! A programmable DNS server (UDP, loopback) built on hickory-proto.
//!
//! Each name has a sequence of answers: query N gets answer N, and the last
//! answer repeats (so `[[good], [127.0.0.1]]` is a rebinding attack: first
//! a good address, then loopback on every later query). TTL 0 unless
//! [`DnsServer::set_ttl`] says otherwise. A name with no entry gets NXDOMAIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    answers: HashMap<String, Vec<Vec<IpAddr>>>,
    /// TTL of a name's answers (0 when absent).
    ttls: HashMap<String, u32>,
    queries: HashMap<String, usize>,
    /// Every query received, answered or not, by name.
    seen: HashMap<String, usize>,
}

/// The DNS server; stops on drop.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Listen on 127.0.0.1 (a port is picked) and answer on a thread.
    pub fn start() -> DnsServer {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Listen on `addr` (e.g. a loopback address on port 53, to stand for
    /// a host's resolver) and answer on a thread.
    pub fn start_on(addr: SocketAddr) -> DnsServer {
        let sock = UdpSocket::bind(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, st) = (Arc::clone(&zone), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        DnsServer { addr, zone, stop }
    }

    /// Answer `name` with this sequence of address sets.
    pub fn set(&self, name: &str, answers: Vec<Vec<IpAddr>>) {
        let mut z = self.zone.lock().unwrap();
        z.answers
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), answers);
    }

    /// Answer `name` with these addresses, always.
    pub fn set_static(&self, name: &str, addrs: &[IpAddr]) {
        self.set(name, vec![addrs.to_vec()]);
    }

    /// Answer `name` with this TTL (seconds) from now on.
    pub fn set_ttl(&self, name: &str, ttl: u32) {
        let mut z = self.zone.lock().unwrap();
        z.ttls
            .insert(name.trim_end_matches('.').to_ascii_lowercase(), ttl);
    }

    /// How many queries of any type arrived for `name`, answered or not.
    pub fn seen(&self, name: &str) -> usize {
        let z = self.zone.lock().unwrap();
        z.seen.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// How many queries (A and AAAA) arrived for `name`.
    pub fn queries(&self, name: &str) -> usize {
        let z = self.zone.lock().unwrap();
        z.queries.get(name).copied().unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(zone: &Mutex<Zone>, packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let q = query.queries.first()?.clone();
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    let mut z = zone.lock().unwrap();
    *z.seen.entry(name.clone()).or_insert(0) += 1;
    let Some(seq) = z.answers.get(&name).cloned() else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply.to_vec().ok();
    };
    // Count one "resolution" per A query (resolvers send A and AAAA).
    let count = z.queries.entry(name.clone()).or_insert(0);
    let index = *count;
    if q.query_type() == RecordType::A {
        *count += 1;
    }
    let set = seq
        .get(index.min(seq.len().saturating_sub(1)))
        .cloned()
        .unwrap_or_default();
    let ttl = z.ttls.get(&name).copied().unwrap_or(0);
    for ip in set {
        let rdata = match (ip, q.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(q.name().clone(), ttl, rdata));
    }
    reply.to_vec().ok()
}
