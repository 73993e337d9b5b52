//! The house's rules, held against the code: ipamd/src is made of subsystem folders (no loose files but
//! lib.rs), each `mod.rs` says in a `//! May use:` line which other subsystems it may use, the code uses no
//! others, and those declarations form no circle (so no two subsystems import each other, directly or through a
//! third). Across the workspace: no `#[path]` attribute and no source file over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target" || n.to_string_lossy().starts_with('.')) {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn subsystems() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "bin"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Code only: comment lines (`//`, `///`, `//!`) are left out, so a doc link does not count as a use.
fn code(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The subsystems `subsystem`'s files name through `crate::<name>`.
fn used_by(subsystem: &str, all: &[String]) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&src().join(subsystem), &mut files);
    let mut used = BTreeSet::new();
    for f in files {
        let text = code(&std::fs::read_to_string(&f).unwrap());
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name != subsystem && all.contains(&name) {
                used.insert(name);
            }
        }
    }
    used
}

/// What `<subsystem>/mod.rs` declares on its `//! May use:` line ("every other subsystem" for the top).
fn declared(subsystem: &str, all: &[String]) -> BTreeSet<String> {
    let text = std::fs::read_to_string(src().join(subsystem).join("mod.rs")).unwrap();
    // The line and its continuation, up to the header's next blank line.
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
    let start = header
        .iter()
        .position(|l| l.starts_with("//! May use:"))
        .unwrap_or_else(|| panic!("{subsystem}/mod.rs has no `//! May use:` line in its header"));
    let line: String = header[start..].iter().take_while(|l| l.trim() != "//!").copied().collect::<Vec<_>>().join(" ");
    if line.contains("every other subsystem") {
        return all.iter().filter(|s| s.as_str() != subsystem).cloned().collect();
    }
    let words: BTreeSet<String> =
        line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map(str::to_string).collect();
    all.iter().filter(|s| words.contains(*s)).cloned().collect()
}

#[test]
fn layers_src_holds_only_subsystem_folders_and_lib_rs() {
    let loose: Vec<String> = std::fs::read_dir(src())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "lib.rs"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(loose.is_empty(), "files at ipamd/src's root besides lib.rs: {loose:?}");
}

#[test]
fn layers_each_subsystem_uses_only_what_it_declares_and_declarations_form_no_circle() {
    let all = subsystems();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut undeclared = Vec::new();
    for s in &all {
        let may = declared(s, &all);
        for u in used_by(s, &all) {
            if !may.contains(&u) {
                undeclared.push(format!("{s} uses {u}"));
            }
        }
        graph.insert(s.clone(), may);
    }
    assert!(undeclared.is_empty(), "uses not declared on the `//! May use:` lines: {undeclared:?}");
    // Peel off subsystems that use nothing left; whatever remains sits on a circle.
    let mut left = graph.clone();
    while let Some(leaf) =
        left.iter().find(|(_, deps)| deps.iter().all(|d| !left.contains_key(d))).map(|(s, _)| s.clone())
    {
        left.remove(&leaf);
    }
    assert!(left.is_empty(), "subsystems on a circle of declared uses: {:?}", left.keys().collect::<Vec<_>>());
}

#[test]
fn layers_no_path_attribute_and_no_file_over_600_lines_in_the_workspace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for member in ["proto", "backoff", "datapath", "ipamd", "cni-shim", "vpcctl", "max-pods", "tests", "test-support"] {
        if root.join(member).is_dir() {
            rust_files(&root.join(member), &mut files);
        }
    }
    assert!(files.len() > 100, "only {} files found under {}", files.len(), root.display());
    let attr = ["#[", "path"].concat();
    let mut wrong = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.lines().any(|l| l.trim_start().starts_with(&attr)) {
            wrong.push(format!("{}: #[path] attribute", f.display()));
        }
        let lines = text.lines().count();
        if lines > 600 {
            wrong.push(format!("{}: {lines} lines", f.display()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
