//! `vpc-cni`: the CNI plugin. Its datapath (ADD/DEL/CHECK/STATUS/GC) arrives with the plugin issue; until then
//! every command answers with a CNI error result (exit 1) so that no runtime mistakes it for a working network.

use std::io::Write;

fn main() {
    let err = serde_json::json!({
        "cniVersion": "1.1.0",
        "code": 100,
        "msg": "vpc-cni: this build has no datapath yet",
        "details": "the plugin is not implemented in this release",
    });
    let _ = writeln!(std::io::stdout(), "{err}");
    std::process::exit(1);
}
