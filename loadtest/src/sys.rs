//! Process facts the harness needs: CPU time used (getrusage) and the open-file
//! limit (one descriptor per connection).

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
