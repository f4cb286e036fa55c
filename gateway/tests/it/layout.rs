//! The code's layout holds: within each crate, modules import one another in one
//! direction (no cycle of any length), and no source file grows past a size a
//! reader can hold in mind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Library crates checked, relative to the workspace root.
const CRATES: &[&str] = &["shared/src", "fanout/src", "gateway/src", "loadtest/src"];

/// Lines a source file may have (the layout issue's bound).
const MAX_FILE_LINES: usize = 650;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `conn/mod.rs` -> `conn`, `conn/session.rs` -> `conn::session`, `lib.rs` -> ``.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The file's code without comments, string literals and its unit-test module
/// (whose `super::` means the file itself).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// Every path the code names: `a::b::c`, with `use` groups (`a::{b, c::d}`)
/// expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if is_ident(&tokens[i]) && tokens.get(i + 1).is_some_and(|t| t == "::") {
            if i > 0 && tokens[i - 1] == "::" {
                i += 1;
                continue;
            }
            i = path_at(&tokens, i, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Read the path starting at `tokens[i]` (prefixed by `prefix`), push every path
/// it names and return the index after it.
fn path_at(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    while i < tokens.len() {
        let t = &tokens[i];
        if t == "{" {
            i += 1;
            loop {
                match tokens.get(i).map(String::as_str) {
                    None => return i,
                    Some("}") => return i + 1,
                    Some(",") => i += 1,
                    Some(_) => i = path_at(tokens, i, prefix.clone(), out),
                }
            }
        }
        if !is_ident(t) && t != "*" {
            break;
        }
        prefix.push(t.clone());
        i += 1;
        if tokens.get(i).is_some_and(|t| t == "::") {
            i += 1;
        } else {
            break;
        }
    }
    out.push(prefix);
    i
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
        } else if c == ':' {
            chars.next();
            if chars.peek() == Some(&':') {
                chars.next();
                tokens.push("::".into());
            } else {
                tokens.push(":".into());
            }
        } else if c.is_whitespace() {
            chars.next();
        } else {
            tokens.push(c.to_string());
            chars.next();
        }
    }
    tokens
}

/// The module a path (as written in module `from`) points into, if it is one of
/// the crate's modules other than the crate root.
fn target(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut segs: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("super") => {
            segs = from.split("::").map(str::to_owned).collect();
            while rest.first().is_some_and(|s| s == "super") {
                segs.pop();
                rest = &rest[1..];
            }
        }
        Some("self") => {
            segs = from.split("::").map(str::to_owned).collect();
            rest = &path[1..];
        }
        // A child module named without `self::`.
        Some(first) => {
            let child = if from.is_empty() {
                first.to_owned()
            } else {
                format!("{from}::{first}")
            };
            if !modules.contains(&child) {
                return None;
            }
            segs = from
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        None => return None,
    }
    segs.retain(|s| !s.is_empty());
    let mut best = segs.join("::");
    for seg in rest {
        segs.push(seg.clone());
        let candidate = segs.join("::");
        if modules.contains(&candidate) {
            best = candidate;
        } else {
            break;
        }
    }
    (!best.is_empty()).then_some(best)
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "main.rs"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let from = module_of(src, file);
        if from.is_empty() {
            continue; // the crate root only declares and re-exports
        }
        let code = code_of(&std::fs::read_to_string(file).expect("source readable"));
        let deps = graph.entry(from.clone()).or_default();
        for path in paths(&code) {
            if let Some(to) = target(&from, &path, &modules) {
                if to != from {
                    deps.insert(to);
                }
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied() {
                Some(1) => {
                    let start = stack.iter().position(|m| m == next).expect("on stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str()) {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let code = code_of("use crate::{a::X, b::{c::Y, Z}};\nuse super::d;\n// crate::e::F\nfn f() { crate::f::g(); let s = \"crate::h\"; }\n");
    let mut found = paths(&code);
    found.sort();
    let want: Vec<Vec<String>> = [
        "crate a X",
        "crate b Z",
        "crate b c Y",
        "crate f g",
        "super d",
    ]
    .iter()
    .map(|p| p.split(' ').map(str::to_owned).collect())
    .collect();
    let mut want = want;
    want.sort();
    assert_eq!(found, want);

    let modules: BTreeSet<String> = ["a", "b", "b::c", "d", "x", "x::y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let t = |from: &str, p: &str| {
        target(
            from,
            &p.split("::").map(str::to_owned).collect::<Vec<_>>(),
            &modules,
        )
    };
    assert_eq!(t("x::y", "super::Thing"), Some("x".into()));
    assert_eq!(t("x::y", "crate::b::c::Y"), Some("b::c".into()));
    assert_eq!(t("x", "y::Thing"), Some("x::y".into()));
    assert_eq!(t("x", "std::sync::Arc"), None);

    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn modules_import_in_one_direction() {
    let mut cycles = Vec::new();
    for krate in CRATES {
        let graph = module_graph(&workspace().join(krate));
        assert!(graph.len() > 1, "{krate}: no modules found");
        if let Some(cycle) = find_cycle(&graph) {
            cycles.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "module import cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_source_file_is_too_long() {
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&workspace().join(krate), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f)
                .expect("readable")
                .lines()
                .count();
            if lines > MAX_FILE_LINES {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}
