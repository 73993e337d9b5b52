//! Reachability between pod namespaces, as `vpc-sim probe` and the NetworkPolicy tests check it: servers in a
//! pod's namespace answer "ok" to whatever arrives, and a probe counts as reached when that answer comes back — a
//! connection refused, dropped or reset is not reached, whatever the reason. Both ends are sockets opened inside
//! the pod's namespace from a thread of this process (no process per probe or connection).
//!
//! Probes of a whole matrix run at once ([`reach_all`]): a denied one waits out its 1 s timeout, so one by one a
//! 9-pod matrix would take over a minute.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `tcp/80`, `udp/53` (or `80`: TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub udp: bool,
    pub number: u16,
}

impl std::str::FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, number) = s.split_once('/').unwrap_or(("tcp", s));
        let number = number.parse().map_err(|_| format!("'{s}' is not tcp/PORT or udp/PORT"))?;
        match proto.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Port { udp: false, number }),
            "udp" => Ok(Port { udp: true, number }),
            _ => Err(format!("'{s}': the protocol is tcp or udp")),
        }
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", if self.udp { "udp" } else { "tcp" }, self.number)
    }
}

/// Runs `f` on a thread inside the named network namespace (sockets it opens stay there).
fn in_ns<T: Send>(netns: &str, f: impl FnOnce() -> std::io::Result<T> + Send) -> std::io::Result<T> {
    datapath::in_netns(&Path::new("/var/run/netns").join(netns), f)
}

/// Serves `port` inside `netns` from threads of this process: "ok" to each TCP connection (after reading what
/// the client sent) and to each UDP datagram. No process per connection, so a matrix of probes at once stays
/// light on 2 cores. Stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(20);

/// Serves `port` in `netns` until the returned [`Server`] is dropped.
pub fn serve(netns: &str, port: Port) -> std::io::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let any = SocketAddr::from(([0, 0, 0, 0], port.number));
    let thread = match port.udp {
        false => {
            let listener = in_ns(netns, || TcpListener::bind(any))?;
            listener.set_nonblocking(true)?;
            std::thread::spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            std::thread::spawn(move || answer_tcp(conn));
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })
        }
        true => {
            let socket = in_ns(netns, || UdpSocket::bind(any))?;
            socket.set_read_timeout(Some(POLL * 5))?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(b"ok\n", from);
                    }
                }
            })
        }
    };
    Ok(Server { stop, thread: Some(thread) })
}

fn answer_tcp(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let _ = conn.read(&mut buf);
    let _ = conn.write_all(b"ok\n");
}

/// Whether something listens on `port` in `netns`.
pub fn listening(netns: &str, port: Port) -> bool {
    let flag = if port.udp { "-Hlun" } else { "-Hltn" };
    let out = Command::new("ip").args(["netns", "exec", netns, "ss", flag]).output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{} ", port.number)))
}

/// How long a probe waits to connect, and then for the answer.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Whether a connection from `netns` to `ip`:`port` is answered "ok".
pub fn reaches(netns: &str, ip: &str, port: Port) -> bool {
    let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else { return false };
    let to = SocketAddr::from((ip, port.number));
    let answer = in_ns(netns, || {
        let mut buf = [0u8; 16];
        let n = match port.udp {
            false => {
                let mut conn = TcpStream::connect_timeout(&to, PROBE_WAIT)?;
                conn.set_read_timeout(Some(PROBE_WAIT))?;
                conn.write_all(b"probe\n")?;
                conn.read(&mut buf)?
            }
            true => {
                let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
                socket.set_read_timeout(Some(PROBE_WAIT))?;
                socket.send_to(b"probe\n", to)?;
                socket.recv(&mut buf)?
            }
        };
        Ok(buf[..n].starts_with(b"ok"))
    });
    answer.unwrap_or(false)
}

/// [`reaches`] for many (netns, ip, port) at once (a thread each), in their order.
pub fn reach_all(probes: &[(String, String, Port)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let running: Vec<_> = probes.iter().map(|(ns, ip, port)| s.spawn(move || reaches(ns, ip, *port))).collect();
        running.into_iter().map(|t| t.join().unwrap_or(false)).collect()
    })
}

/// A sim pod with servers on its ports; they stop when it is dropped (the pod itself stays).
pub struct Served {
    pub pod: crate::sim::pods::Pod,
    pub ip: String,
    servers: Vec<Server>,
}

impl Served {
    /// ADDs `pod` (retrying while the pool warms), runs `right_after_add` the moment ADD returned, then serves
    /// `ports` (listening when this returns).
    pub fn start(
        pod: crate::sim::pods::Pod,
        ports: &[Port],
        right_after_add: impl FnOnce(&crate::sim::pods::Pod),
    ) -> Result<Self, crate::sim::pods::PodError> {
        let ip = crate::sim::pods::pod_ip(&pod.add_retrying(Duration::from_secs(60))?);
        right_after_add(&pod);
        let ns = pod.netns()?;
        let mut me = Served { pod, ip, servers: Vec::new() };
        for port in ports {
            me.servers
                .push(serve(&ns, *port).map_err(|e| crate::sim::pods::PodError::Io(format!("serving {port}: {e}")))?);
        }
        Ok(me)
    }

    pub fn netns(&self) -> String {
        self.pod.netns().expect("a started pod has a namespace")
    }
}

/// "from>to" of every pair (from ≠ to) whose probe at `port` is answered, in `members`' order.
pub fn matrix(members: &[(&str, &Served)], port: Port) -> Vec<String> {
    let mut pairs = Vec::new();
    let mut probes = Vec::new();
    for (a, from) in members {
        for (b, to) in members {
            if a != b {
                pairs.push(format!("{a}>{b}"));
                probes.push((from.netns(), to.ip.clone(), port));
            }
        }
    }
    pairs.into_iter().zip(reach_all(&probes)).filter(|(_, ok)| *ok).map(|(p, _)| p).collect()
}

/// Polls the matrix at `port` (up to 5 s) until it is `want`; panics with both otherwise.
pub fn expect(members: &[(&str, &Served)], port: Port, want: &[String], case: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = matrix(members, port);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
            panic!(
                "{case}: reachability on {port}\n  denied but should be allowed: {missing:?}\n  allowed but should be denied: {extra:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
