//! Process facts the harness needs: CPU time used (getrusage), the open-file
//! limit (one descriptor per connection), and resident memory (/proc).

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};

/// User plus system CPU time this process has used, in seconds (all threads).
pub fn cpu_seconds() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            secs(u.user_time()) + secs(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// The soft and hard RLIMIT_NOFILE.
pub fn nofile_limits() -> std::io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns (before, after).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limits()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    let (after, _) = nofile_limits()?;
    Ok((soft, after))
}

/// Descriptors the harness needs besides its connections (runtime, stdio, files).
const SPARE_FILES: u64 = 64;

/// Fail when `connections` sockets would not fit under the soft RLIMIT_NOFILE.
pub fn ensure_nofile(connections: usize) -> anyhow::Result<()> {
    let Ok((soft, hard)) = nofile_limits() else {
        return Ok(());
    };
    let needed = connections as u64 + SPARE_FILES;
    if needed > hard {
        anyhow::bail!(
            "{connections} connections need {needed} open files, above the hard RLIMIT_NOFILE ({hard}): raise the hard limit (`ulimit -Hn`, limits.conf, or the container's nofile), or run fewer connections per process"
        );
    }
    if needed > soft {
        anyhow::bail!(
            "{connections} connections need {needed} open files, above RLIMIT_NOFILE ({soft}): pass --nofile (the hard limit is {hard}) or raise `ulimit -n`"
        );
    }
    Ok(())
}

/// Resident memory (`VmRSS` of `/proc/<pid>/status`) of process `pid`, or of this
/// process when `None`, in bytes.
pub fn rss_bytes(pid: Option<u32>) -> std::io::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(&path)?;
    parse_vm_rss(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{path}: no VmRSS line"),
        )
    })
}

/// The `VmRSS:  1234 kB` line of a `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if r.is_err() {
                std::future::pending::<()>().await;
            }
        }
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resident_memory() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\nVmData: 1 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert!(rss_bytes(None).unwrap() > 0);
        assert_eq!(
            rss_bytes(Some(std::process::id())).unwrap() >> 30,
            rss_bytes(None).unwrap() >> 30
        );
    }
}
