//! The layers of the crate only look down (README "How it is built"): each module may name
//! only the modules below it. This reads every source file and fails on an import against
//! those directions, so a shortcut cannot slip in unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules each one may name besides itself; `cli` may name any.
const ALLOWED: [(&str, &[&str]); 7] = [
    ("base", &[]),
    ("api", &["base"]),
    ("cache", &["base"]),
    ("store", &["api", "base"]),
    ("server", &["store", "api", "base"]),
    ("client", &["api", "base"]),
    ("fs", &["client", "cache", "api", "base"]),
];

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

/// The top-level modules `source` names as `crate::NAME`, outside comments.
fn named_modules(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("a name");
        let source = std::fs::read_to_string(file).expect("read source");
        let named = named_modules(&source);
        if named.contains("cli") && top != "cli" && top != "main" && top != "lib" {
            violations.push(format!("{}: names crate::cli", relative.display()));
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(layer, _)| *layer == top) else {
            continue;
        };
        for name in named
            .iter()
            .filter(|n| **n != top && !allowed.contains(&n.as_str()))
        {
            violations.push(format!("{}: {top} names crate::{name}", relative.display()));
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_imports_and_skips_comments() {
    let named = named_modules("use crate::store::Store; // crate::cli\nlet x = crate::api::X;");
    assert_eq!(
        named,
        BTreeSet::from(["store".to_string(), "api".to_string()])
    );
}
