//! Forgetting flows over ctnetlink (NETLINK_NETFILTER): a released IP's, so a reused IP never inherits the
//! previous pod's conntrack state (aws-vpc-cni's 30 s cooldown is shorter than SYN_SENT's timeout), and those a
//! NetworkPolicy now denies, so an established flow does not outlive the deny. Dumps the IPv4 conntrack table
//! once and deletes the chosen entries by their original tuple. The socket belongs to the calling thread's
//! network namespace.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const AF_INET: u8 = 2;
const ENOENT: i32 = 2;
const NLMSG_HDR: usize = 16;
const NFGENMSG: usize = 4;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDR + NFGENMSG + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    m.extend_from_slice(payload);
    m
}

/// Netlink attributes of `buf`: (type without flag bits, payload, whole attribute bytes).
fn attrs(buf: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            break;
        }
        out.push((kind, &buf[off + 4..off + len], &buf[off..off + len]));
        off += align(len);
    }
    out
}

fn tuple_has(tuple: &[u8], wanted: &[Ipv4Addr]) -> bool {
    attrs(tuple).into_iter().filter(|(k, _, _)| *k == CTA_TUPLE_IP).any(|(_, ips, _)| {
        attrs(ips)
            .into_iter()
            .any(|(k, v, _)| (k == CTA_IP_V4_SRC || k == CTA_IP_V4_DST) && wanted.iter().any(|ip| v == ip.octets()))
    })
}

/// Netlink messages of one datagram: (type, flags-free payload after the netlink header).
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDR || off + len > buf.len() {
            break;
        }
        out.push((kind, &buf[off + NLMSG_HDR..off + len]));
        off += align(len);
    }
    out
}

fn check_ack(payload: &[u8]) -> io::Result<()> {
    let errno = i32::from_ne_bytes(payload.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    // ENOENT: the entry expired between the dump and the delete — the goal is met.
    if errno == 0 || errno == -ENOENT { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) }
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

/// Chooses an entry from its original and (if any) reply tuple.
type Pick<'a> = &'a dyn Fn(&[u8], Option<&[u8]>) -> bool;

/// The original tuples (whole attributes) of every IPv4 entry `pick` chooses.
fn select(sock: &Socket, pick: Pick) -> io::Result<Vec<Vec<u8>>> {
    sock.send(&message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 1, &[]), 0)?;
    let mut found = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full()?;
        for (kind, payload) in messages(&buf) {
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => check_ack(payload)?,
                _ => {
                    let Some(body) = payload.get(NFGENMSG..) else { continue };
                    let a = attrs(body);
                    let orig = a.iter().find(|(k, _, _)| *k == CTA_TUPLE_ORIG);
                    let reply = a.iter().find(|(k, _, _)| *k == CTA_TUPLE_REPLY);
                    if let Some(o) = orig.filter(|o| pick(o.1, reply.map(|r| r.1))) {
                        found.push(o.2.to_vec());
                    }
                }
            }
        }
    }
}

/// The original tuples of every IPv4 entry involving one of `ips`.
fn matching_tuples(sock: &Socket, ips: &[Ipv4Addr]) -> io::Result<Vec<Vec<u8>>> {
    select(sock, &|orig, reply| tuple_has(orig, ips) || reply.is_some_and(|r| tuple_has(r, ips)))
}

/// Deletes the entries with these original tuples; returns how many.
fn delete(sock: &Socket, tuples: &[Vec<u8>]) -> io::Result<usize> {
    for (i, tuple) in tuples.iter().enumerate() {
        sock.send(&message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 2 + i as u32, tuple), 0)?;
        let (buf, _) = sock.recv_from_full()?;
        for (kind, payload) in messages(&buf) {
            if kind == NLMSG_ERROR {
                check_ack(payload)?;
            }
        }
    }
    Ok(tuples.len())
}

/// Deletes every conntrack entry of `ip` in the current network namespace; returns how many.
pub fn forget(ip: Ipv4Addr) -> io::Result<usize> {
    forget_many(&[ip])
}

/// Deletes every conntrack entry of any of `ips` in the current network namespace, with one dump of the
/// table; returns how many.
pub fn forget_many(ips: &[Ipv4Addr]) -> io::Result<usize> {
    if ips.is_empty() {
        return Ok(0);
    }
    let sock = open()?;
    let tuples = matching_tuples(&sock, ips)?;
    delete(&sock, &tuples)
}

/// A conntrack entry's original direction: who opened the flow, to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtFlow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    pub dport: u16,
}

/// Reads the flow of an original tuple (`None` for what has no ports or no IPv4 addresses).
fn flow_of(tuple: &[u8]) -> Option<CtFlow> {
    let a = attrs(tuple);
    let ip = attrs(a.iter().find(|(k, _, _)| *k == CTA_TUPLE_IP)?.1);
    let addr = |kind| -> Option<Ipv4Addr> {
        let v = ip.iter().find(|(k, _, _)| *k == kind)?.1;
        Some(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))
    };
    let proto = attrs(a.iter().find(|(k, _, _)| *k == CTA_TUPLE_PROTO)?.1);
    let num = *proto.iter().find(|(k, _, _)| *k == CTA_PROTO_NUM)?.1.first()?;
    let dport = proto.iter().find(|(k, _, _)| *k == CTA_PROTO_DST_PORT)?.1;
    Some(CtFlow {
        src: addr(CTA_IP_V4_SRC)?,
        dst: addr(CTA_IP_V4_DST)?,
        proto: num,
        dport: u16::from_be_bytes(<[u8; 2]>::try_from(dport).ok()?),
    })
}

/// Deletes every entry whose flow `doomed` says must not go on (a NetworkPolicy now denies it: an established
/// flow would otherwise outlive the deny); returns how many. One dump of the table.
pub fn forget_flows(doomed: &dyn Fn(&CtFlow) -> bool) -> io::Result<usize> {
    let sock = open()?;
    let tuples = select(&sock, &|orig, _| flow_of(orig).is_some_and(|f| doomed(&f)))?;
    delete(&sock, &tuples)
}

/// How many conntrack entries involve `ip` (for tests and diagnostics).
pub fn count(ip: Ipv4Addr) -> io::Result<usize> {
    matching_tuples(&open()?, &[ip]).map(|t| t.len())
}
