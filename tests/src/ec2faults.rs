//! A fault-injecting EC2 proxy between ipamd and LocalStack: every request is counted by its `Action` (with
//! its arrival time, for rate checks), and an action can be made to fail with the EC2 error LocalStack never
//! returns (UnauthorizedOperation, InsufficientFreeAddressesInSubnet, …). [`Chaos`] adds random throttling
//! (`RequestLimitExceeded`), 5xx answers, dropped connections and latency to every request. Faulted and
//! dropped requests never reach LocalStack (as when EC2 throttles: nothing was done). Everything else is
//! forwarded unchanged, through [`crate::ec2prefix`], which adds the prefix delegation LocalStack lacks (a prefix
//! request can be faulted on its own as `<Action>:prefix`). Listens on loopback only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// An EC2 error answer.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// Random trouble for every request: probabilities in 0..=1, applied in this order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chaos {
    pub throttle: f64,
    pub server_error: f64,
    pub drop: f64,
    /// Added before the request is answered (faulted or forwarded).
    pub latency: std::time::Duration,
}

#[derive(Default)]
struct State {
    faults: BTreeMap<String, Fault>,
    calls: BTreeMap<String, u64>,
    chaos: Chaos,
    /// Arrival time, action and form body of every request.
    log: Vec<(std::time::Instant, String, String)>,
    prefixes: Arc<crate::ec2prefix::PrefixBook>,
}

/// What the proxy does with one request.
enum Verdict {
    Fault(Fault),
    Drop,
    Forward,
}

pub struct Ec2FaultProxy {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ec2FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error_body(f: &Fault) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message>\
         </Error></Errors><RequestID>vpc-sim-fault</RequestID></Response>",
        f.code, f.message
    )
}

/// EC2's error answer for `f`.
pub(crate) fn error_response(f: &Fault) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(error_body(f))))
        .expect("response")
}

pub(crate) async fn forward(
    upstream: &str,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(upstream).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(Request::from_parts(parts, Full::new(body))).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(bytes)))
}

fn verdict(s: &State, act: &str, prefix: bool) -> Verdict {
    let prefix_fault = || s.faults.get(&format!("{act}:prefix")).filter(|_| prefix);
    if let Some(f) = s.faults.get(act).or_else(prefix_fault) {
        return Verdict::Fault(f.clone());
    }
    let c = s.chaos;
    let roll: f64 = rand::random();
    if roll < c.throttle {
        let message = "Request limit exceeded.".to_string();
        Verdict::Fault(Fault { status: 503, code: "RequestLimitExceeded".into(), message })
    } else if roll < c.throttle + c.server_error {
        Verdict::Fault(Fault { status: 500, code: "InternalError".into(), message: "injected 5xx".into() })
    } else if roll < c.throttle + c.server_error + c.drop {
        Verdict::Drop
    } else {
        Verdict::Forward
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    upstream: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    // The query form, parsed once: the action and the prefix fields here, the rest in ec2prefix.
    let form = crate::ec2prefix::form(&body);
    let act = crate::ec2prefix::field(&form, "Action").unwrap_or_default().to_string();
    let prefix = crate::ec2prefix::is_prefix_request(&form);
    let (verdict, latency, prefixes) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        *s.calls.entry(act.clone()).or_default() += 1;
        s.log.push((std::time::Instant::now(), act.clone(), String::from_utf8_lossy(&body).into_owned()));
        (verdict(&s, &act, prefix), s.chaos.latency, s.prefixes.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = match verdict {
        // An error from the service makes hyper close the connection without an answer.
        Verdict::Drop => return Err(std::io::Error::other("connection dropped by the fault proxy")),
        Verdict::Fault(f) => Some(f),
        Verdict::Forward => None,
    };
    if let Some(f) = fault {
        return Ok(error_response(&f));
    }
    Ok(crate::ec2prefix::intercept(&prefixes, &upstream, parts, body, &form, &act).await.unwrap_or_else(|e| {
        Response::builder().status(StatusCode::BAD_GATEWAY).body(Full::new(Bytes::from(e))).expect("response")
    }))
}

impl Ec2FaultProxy {
    /// Starts a proxy to `upstream` (host:port, e.g. LocalStack's 127.0.0.1:4566).
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state: Arc<Mutex<State>> = Arc::default();
        let (st, up) = (state.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (st, up) = (st.clone(), up.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), up.clone(), req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Self { endpoint, state, task })
    }

    /// A proxy in front of the LocalStack the tests use.
    pub async fn to_localstack() -> std::io::Result<Self> {
        let upstream = crate::localstack::endpoint();
        Self::start(upstream.trim_start_matches("http://").trim_end_matches('/')).await
    }

    /// The prefixes this proxy has delegated to `eni_id`.
    pub fn prefixes(&self, eni_id: &str) -> Vec<ipnet::Ipv4Net> {
        let book = self.state.lock().unwrap_or_else(|p| p.into_inner()).prefixes.clone();
        book.of(eni_id)
    }

    /// From now on `eni_id` is described with no private IPv4 address (an EFA-only interface, an IPv6-only ENI).
    pub fn without_ipv4(&self, eni_id: &str) {
        let book = self.state.lock().unwrap_or_else(|p| p.into_inner()).prefixes.clone();
        book.without_ipv4(eni_id);
    }

    /// Makes every `action` request fail with `code` (HTTP `status`); `<action>:prefix` fails only its prefix
    /// requests (InsufficientCidrBlocks for a fragmented subnet).
    pub fn fail(&self, action: &str, status: u16, code: &str, message: &str) {
        let f = Fault { status, code: code.to_string(), message: message.to_string() };
        self.state.lock().unwrap_or_else(|p| p.into_inner()).faults.insert(action.to_string(), f);
    }

    pub fn heal(&self, action: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).faults.remove(action);
    }

    /// Sets (or with `Chaos::default()`, clears) the random trouble.
    pub fn chaos(&self, chaos: Chaos) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).chaos = chaos;
    }

    /// Requests seen in all.
    pub fn total_calls(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).calls.values().sum()
    }

    /// The most requests that arrived within any `window` (a sliding window over arrival times).
    pub fn max_in_window(&self, window: std::time::Duration) -> usize {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let times: Vec<std::time::Instant> = s.log.iter().map(|(t, _, _)| *t).collect();
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi].duration_since(times[lo]) >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    /// The form bodies of the `action` requests seen so far (URL-encoded, as sent).
    pub fn bodies(&self, action: &str) -> Vec<String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.log.iter().filter(|(_, a, _)| a == action).map(|(_, _, b)| b.clone()).collect()
    }

    /// Requests seen for `action`, answered or faulted.
    pub fn calls(&self, action: &str) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).calls.get(action).copied().unwrap_or(0)
    }
}

/// A TCP relay that can be cut (refusing and dropping every connection) and restored: an API server that
/// becomes unreachable, without touching the real one that other tests share.
pub struct CuttableRelay {
    pub addr: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CuttableRelay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl CuttableRelay {
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (o, c, up) = (open.clone(), conns.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let up = up.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap_or_else(|p| p.into_inner()).push(h.abort_handle());
            }
        });
        Ok(Self { addr, open, conns, task })
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
