//! Named network namespaces for the simulator and the datapath tests: create/delete with iproute2, run `ip`
//! inside one, and open listening sockets inside one (a helper thread enters the namespace only while the
//! socket is created; the socket stays bound there). Nothing here touches the root namespace's configuration.

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// Runs a command, returning stdout; a non-zero exit is an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).output().map_err(io(cmd.clone()))?;
    if !out.status.success() {
        return Err(NetnsError::Command { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on stdin, returning stdout.
pub fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<String, NetnsError> {
    use std::io::Write;
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io(cmd.clone()))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(io(cmd.clone()))?;
    let out = child.wait_with_output().map_err(io(cmd.clone()))?;
    if !out.status.success() {
        return Err(NetnsError::Command { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the root namespace context (use `-n NS` to act inside a namespace).
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

/// `ip -n <ns> <args>`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Feeds many `ip` commands to one `ip -n <ns> -batch -` process (one fork for a whole sync step).
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), NetnsError> {
    if lines.is_empty() {
        return Ok(());
    }
    run_stdin("ip", &["-n", ns, "-force", "-batch", "-"], &(lines.join("\n") + "\n")).map(|_| ())
}

/// Writes a sysctl inside `ns` (each namespace has its own net.* sysctls).
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<(), NetnsError> {
    run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", &format!("{key}={value}")]).map(|_| ())
}

pub fn path(ns: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns)
}

pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// Creates `ns` with loopback up.
pub fn create(ns: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes `ns` if it exists (its links go with it).
pub fn delete(ns: &str) -> Result<(), NetnsError> {
    if exists(ns) { ip(&["netns", "del", ns]).map(|_| ()) } else { Ok(()) }
}

/// Names of namespaces starting with `prefix-`.
pub fn list(prefix: &str) -> Vec<String> {
    let want = format!("{prefix}-");
    std::fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(&want)).collect())
        .unwrap_or_default()
}

/// Runs `f` on a helper thread that has entered `ns`; the calling thread's namespace never changes.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T, NetnsError> + Send) -> Result<T, NetnsError> {
    let mut inner = None;
    let entered = datapath::in_netns(&path(ns), || {
        inner = Some(f());
        Ok(())
    });
    entered.map_err(io(format!("enter netns {ns}")))?;
    inner.expect("ran")
}

/// Binds a blocking TCP listener at `addr` inside `ns` (the socket stays in `ns`).
pub fn std_listen_in(ns: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpListener, NetnsError> {
    in_netns(ns, || std::net::TcpListener::bind(addr).map_err(io(format!("bind {addr} in {ns}"))))
}

/// Binds a non-blocking TCP listener at `addr` inside `ns`, ready for tokio.
pub fn listen_in(ns: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpListener, NetnsError> {
    let l = std_listen_in(ns, addr)?;
    l.set_nonblocking(true).map_err(io("nonblocking"))?;
    Ok(l)
}

/// Opens a TCP connection from inside `ns`.
pub fn connect_in(ns: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpStream, NetnsError> {
    in_netns(ns, || {
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
            .map_err(io(format!("connect {addr} from {ns}")))
    })
}
