//! The README's examples hold: every TOML block in it is a configuration that
//! `gateway check-config` accepts, and every image it (or BENCHMARKS.md) shows is
//! a file in the repository.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// The bodies of the fenced blocks of `lang` in a markdown text, with the line
/// each starts on.
fn fenced_blocks(markdown: &str, lang: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(tag)) if tag.trim() == lang => current = Some((i + 1, String::new())),
            (Some(_), Some(_)) => blocks.push(current.take().expect("bug: inside a block")),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn fenced_blocks_are_found() {
    let md = "a\n```toml\nx = 1\n```\n```sh\nls\n```\n```toml\n[s]\n```\n";
    let blocks = fenced_blocks(md, "toml");
    assert_eq!(
        blocks,
        vec![(2, "x = 1\n".to_owned()), (8, "[s]\n".to_owned())]
    );
}

#[test]
fn every_readme_toml_block_passes_check_config() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md readable");
    let blocks = fenced_blocks(&text, "toml");
    assert!(!blocks.is_empty(), "no TOML block found in README.md");
    let dir = std::env::temp_dir().join(format!("gw-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (line, body) in &blocks {
        let file = dir.join(format!("readme-{line}.toml"));
        std::fs::write(&file, body).unwrap();
        // The environment is cleared so that no GATEWAY_* variable of the host
        // changes what is checked.
        let out = Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .env_clear()
            .output()
            .expect("run gateway check-config");
        if !out.status.success() {
            failures.push(format!(
                "README.md line {line}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The targets of the markdown images (`![alt](path)`) in a text.
fn image_paths(markdown: &str) -> Vec<&str> {
    markdown
        .split("![")
        .skip(1)
        .filter_map(|rest| rest.split_once("](")?.1.split_once(')'))
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn every_image_the_readme_and_benchmarks_show_is_in_the_repository() {
    assert_eq!(
        image_paths("a ![x](docs/a.png) b ![y](b.svg)"),
        ["docs/a.png", "b.svg"]
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shown = 0;
    for doc in ["README.md", "BENCHMARKS.md"] {
        let text = std::fs::read_to_string(root.join(doc)).expect("readable");
        for path in image_paths(&text) {
            let len = std::fs::metadata(root.join(path)).map(|m| m.len());
            assert!(
                len.as_ref().is_ok_and(|&l| l > 0),
                "{doc} shows {path}: {len:?}"
            );
            shown += 1;
        }
    }
    assert!(shown >= 2, "the demo screenshot and the fan-out report");
}
