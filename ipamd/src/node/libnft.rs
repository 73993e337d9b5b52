//! nftables in-process: libnftables (the library behind the `nft` command, same script syntax) loaded at run time.
//!
//! Why: a pod's policy must be in the kernel before its ADD answers, and spawning `nft` costs 3 ms idle and
//! 12–36 ms under load here, while one small transaction through the library costs about 0.3 ms. The library is
//! opened with `dlopen` rather than linked so that ipamd still builds and runs where it is absent (the image has
//! it: Debian's `nftables` package depends on `libnftables1`); callers fall back to spawning `nft` then.
//!
//! The context opens its netlink socket in the network namespace of the thread that creates it, and is not
//! thread-safe: [`Libnft`] is `Send` but not `Sync`, one owner at a time.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

/// The shared object's name (Debian `libnftables1`).
pub const LIBRARY: &str = "libnftables.so.1";

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxFlag = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type GetFlags = unsafe extern "C" fn(*mut c_void) -> u32;
type SetFlags = unsafe extern "C" fn(*mut c_void, u32);

/// `NFT_CTX_OUTPUT_JSON` (nftables/libnftables.h).
const OUTPUT_JSON: u32 = 1 << 4;

/// One libnftables context.
pub struct Libnft {
    handle: *mut c_void,
    ctx: *mut c_void,
    free: CtxFree,
    run: RunCmd,
    output: CtxBuffer,
    error: CtxBuffer,
    get_flags: GetFlags,
    set_flags: SetFlags,
}

// SAFETY: a libnftables context has no thread affinity; it must only not be used from two threads at once,
// which `&mut self` on every call (and no `Sync`) guarantees.
unsafe impl Send for Libnft {}

impl std::fmt::Debug for Libnft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Libnft")
    }
}

/// Why the library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LibnftError {
    #[error("{LIBRARY} cannot be loaded: {0}")]
    Load(String),
    #[error("nft rejected the script: {0}")]
    Rejected(String),
    #[error("the script holds a NUL byte")]
    Nul,
}

impl Libnft {
    /// Loads the library and creates a context in the calling thread's network namespace.
    pub fn open() -> Result<Self, LibnftError> {
        let name = CString::new(LIBRARY).expect("no NUL");
        // SAFETY: dlopen with a valid C string; the handle is checked before use and closed in Drop.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(LibnftError::Load(dl_error()));
        }
        let symbol = |n: &str| -> Result<*mut c_void, LibnftError> {
            let c = CString::new(n).expect("no NUL");
            // SAFETY: `handle` is a live dlopen handle and `c` a valid C string.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() { Err(LibnftError::Load(format!("{n}: {}", dl_error()))) } else { Ok(p) }
        };
        let resolved = (|| {
            Ok::<_, LibnftError>((
                symbol("nft_ctx_new")?,
                symbol("nft_ctx_free")?,
                symbol("nft_ctx_buffer_output")?,
                symbol("nft_ctx_buffer_error")?,
                symbol("nft_ctx_get_output_buffer")?,
                symbol("nft_ctx_get_error_buffer")?,
                symbol("nft_run_cmd_from_buffer")?,
                symbol("nft_ctx_output_get_flags")?,
                symbol("nft_ctx_output_set_flags")?,
            ))
        })();
        let (new, free, buffer_output, buffer_error, output, error, run, get_flags, set_flags) = match resolved {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: `handle` came from dlopen and nothing from it is in use.
                unsafe { libc::dlclose(handle) };
                return Err(e);
            }
        };
        // SAFETY: each symbol is the libnftables function of that name, whose C signature the type spells out
        // (nftables/libnftables.h, stable since 0.9).
        unsafe {
            let new: CtxNew = std::mem::transmute::<*mut c_void, CtxNew>(new);
            let buffer_output: CtxFlag = std::mem::transmute::<*mut c_void, CtxFlag>(buffer_output);
            let buffer_error: CtxFlag = std::mem::transmute::<*mut c_void, CtxFlag>(buffer_error);
            let ctx = new(0);
            if ctx.is_null() {
                libc::dlclose(handle);
                return Err(LibnftError::Load("nft_ctx_new returned no context".into()));
            }
            // Output and errors into buffers the caller reads, never onto ipamd's stdout/stderr.
            buffer_output(ctx);
            buffer_error(ctx);
            Ok(Self {
                handle,
                ctx,
                free: std::mem::transmute::<*mut c_void, CtxFree>(free),
                run: std::mem::transmute::<*mut c_void, RunCmd>(run),
                output: std::mem::transmute::<*mut c_void, CtxBuffer>(output),
                error: std::mem::transmute::<*mut c_void, CtxBuffer>(error),
                get_flags: std::mem::transmute::<*mut c_void, GetFlags>(get_flags),
                set_flags: std::mem::transmute::<*mut c_void, SetFlags>(set_flags),
            })
        }
    }

    /// Runs an nft script as one transaction (all of it or none); returns what it printed (a `list` command's
    /// output), or the parser's / kernel's complaint.
    pub fn run(&mut self, script: &str) -> Result<String, LibnftError> {
        let text = CString::new(script).map_err(|_| LibnftError::Nul)?;
        // SAFETY: `ctx` is live (freed only in Drop), `text` outlives the call, and the buffers read afterwards
        // belong to `ctx` until its next run, which `&mut self` rules out while they are copied.
        unsafe {
            let rc = (self.run)(self.ctx, text.as_ptr());
            let output = buffer_text((self.output)(self.ctx));
            let error = buffer_text((self.error)(self.ctx));
            if rc == 0 { Ok(output) } else { Err(LibnftError::Rejected(error.trim().to_string())) }
        }
    }
}

impl Libnft {
    /// Runs a `list` command with JSON output (as `nft -j`).
    pub fn list_json(&mut self, command: &str) -> Result<String, LibnftError> {
        // SAFETY: `ctx` is live; the flags are a plain bit set.
        let flags = unsafe { (self.get_flags)(self.ctx) };
        // SAFETY: as above.
        unsafe { (self.set_flags)(self.ctx, flags | OUTPUT_JSON) };
        let out = self.run(command);
        // SAFETY: as above; the context's output goes back to text for the scripts.
        unsafe { (self.set_flags)(self.ctx, flags) };
        out
    }
}

impl Drop for Libnft {
    fn drop(&mut self) {
        // SAFETY: `ctx` and `handle` are live and used by nothing else; the context goes before the library.
        unsafe {
            (self.free)(self.ctx);
            libc::dlclose(self.handle);
        }
    }
}

/// Copies a buffer libnftables returned (may be NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string alive for the call.
unsafe fn buffer_text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call on this thread.
    unsafe { buffer_text(libc::dlerror()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root + netns: a table is created, listed and refused through the library in a namespace of the test's
    /// own, and the library's parse errors come back as text rather than on stderr.
    #[test]
    #[ignore = "needs root + netns"]
    fn scripts_run_in_the_namespace_the_context_was_made_in() {
        let ns = format!("vpcsim-libnft-{}", std::process::id());
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
        assert!(ip(&["netns", "add", &ns]));
        let path = std::path::PathBuf::from(format!("/var/run/netns/{ns}"));
        let got = datapath::in_netns(&path, || {
            let mut nft = Libnft::open().map_err(std::io::Error::other)?;
            nft.run("table inet t { set s { type ipv4_addr; flags interval; }; }").map_err(std::io::Error::other)?;
            nft.run("add element inet t s { 10.0.0.1, 10.0.0.4-10.0.0.6 }").map_err(std::io::Error::other)?;
            let listing = nft.run("list set inet t s").map_err(std::io::Error::other)?;
            let refused = nft.run("add element inet t nosuchset { 10.0.0.9 }");
            let json = nft.list_json("list set inet t s").map_err(std::io::Error::other)?;
            let after = nft.run("list set inet t s").map_err(std::io::Error::other)?;
            assert!(json.starts_with("{\"nftables\""), "{json}");
            assert_eq!(after, listing, "text output again after a JSON listing");
            Ok((listing, refused))
        });
        let listed_here =
            std::process::Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "tables"]).output();
        ip(&["netns", "del", &ns]);
        let (listing, refused) = got.unwrap();
        assert!(listing.contains("10.0.0.1") && listing.contains("10.0.0.4-10.0.0.6"), "{listing}");
        match refused {
            Err(LibnftError::Rejected(e)) => assert!(e.contains("nosuchset") || e.contains("No such file"), "{e}"),
            other => panic!("a missing set must be refused: {other:?}"),
        }
        let listed_here = String::from_utf8_lossy(&listed_here.unwrap().stdout).into_owned();
        assert!(listed_here.contains("table inet t"), "the table lives in the test's namespace: {listed_here}");
        let root = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&root.stdout).contains("table inet t\n"), "never in the root namespace");
    }
}
