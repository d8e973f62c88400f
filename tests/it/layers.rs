//! The source tree's layering: a module imports only modules of lower layers, so there
//! is no import circle between modules and the flow reads top to bottom (see
//! docs/architecture.md). A new `use crate::x` that points up or sideways fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top to bottom. Modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["server"],
    &["api", "http", "peer", "mesh", "migrate", "snapshot", "status"],
    &["core"],
    &["raft"],
    &["lease", "watch", "archive"],
    &["mvcc", "tls"],
    &["config"],
    &["proto", "metrics", "fsutil"],
];

/// Items of the crate root every module may use.
const ROOT_ITEMS: &[&str] = &["error_chain", "DEFAULT_ETCD_VERSION", "ETCD_CLUSTER_VERSION"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names as `crate::x` (in code, not in comments); the
/// binary's modules (`src/main.rs`, `src/cli/`) name the library as `netsy::x`.
fn named_modules(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        let (module, prefix) = match module.as_str() {
            "lib" | "proto" => continue,
            "main" => ("cli".to_string(), "netsy::"),
            "cli" => (module, "netsy::"),
            _ => (module, "crate::"),
        };
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("{}: module `{module}` is in no layer (add it to LAYERS)", rel.display()));
            continue;
        };
        seen.insert(module.clone());
        let text = std::fs::read_to_string(file).expect("read a source file");
        for used in named_modules(&text, prefix) {
            if used == module || ROOT_ITEMS.contains(&used.as_str()) {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer > own => {}
                Some(_) => wrong.push(format!("{}: `{module}` imports `{used}`, which is not below it", rel.display())),
                None => wrong.push(format!("{}: `{module}` names `{used}`, which is in no layer", rel.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The check read the tree it means to check.
    for module in ["api", "core", "raft", "mvcc", "archive", "server"] {
        assert!(seen.contains(module), "no source of `{module}` was read");
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    let text = "use crate::core::Replica; // crate::server in a comment\nlet x = my_crate::api::f();";
    let named = named_modules(text, "crate::");
    assert_eq!(named, BTreeSet::from(["core".to_string()]));
}
