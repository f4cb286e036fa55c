//! Finding the binaries a cluster runs: an option's path or bare name, the gateway
//! next to this loadtest binary, or PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::process::say;

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in a directory of PATH.
pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A binary given by an option: a path, or a bare name looked up on PATH.
pub(super) fn given_binary(p: &Path, option: &str) -> anyhow::Result<PathBuf> {
    let found = match p.to_str() {
        Some(name) if !name.contains('/') => on_path(name),
        _ => Some(p.to_owned()).filter(|p| is_executable(p)),
    };
    found.ok_or_else(|| anyhow!("{option} {}: no such executable file", p.display()))
}

/// The gateway binary: `--gateway`, else the one next to this binary, else PATH's.
pub(super) fn gateway_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        let p = given_binary(p, "--gateway")?;
        say(format_args!("gateway {} (--gateway)", p.display()));
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot tell where this loadtest binary is")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join("gateway");
    if is_executable(&beside) {
        say(format_args!(
            "gateway {} (next to loadtest)",
            beside.display()
        ));
        return Ok(beside);
    }
    if let Some(p) = on_path("gateway") {
        say(format_args!(
            "gateway {} (on PATH; none next to loadtest in {})",
            p.display(),
            dir.display()
        ));
        return Ok(p);
    }
    bail!(
        "no gateway binary: none next to loadtest in {} and none on PATH; build it with `cargo build --release -p gateway` or pass --gateway PATH",
        dir.display()
    )
}

pub(super) fn redis_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => given_binary(p, "--redis-server"),
        None => on_path("redis-server").ok_or_else(|| {
            anyhow!("redis-server is not on PATH: install it (e.g. `apt-get install redis-server`) or pass --redis-server PATH")
        }),
    }
}
