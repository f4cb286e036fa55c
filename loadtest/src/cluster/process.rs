//! The processes of a cluster: each a child killed when dropped, with its output
//! in a log whose tail goes into error messages; the cluster's directory; and what
//! the other cluster modules share (start-up bounds, free ports, messages).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

/// How often start-up and shutdown are polled.
pub(super) const POLL: Duration = Duration::from_millis(50);
/// Log lines shown when a process fails to start.
const LOG_TAIL_LINES: usize = 15;

/// Bound on Redis answering PING, and separately on every node's `/readyz`
/// answering 200.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one readiness probe (connect, request, status line).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Ports tried for Redis: a free port can be taken between the probe and the bind.
pub(super) const REDIS_PORT_ATTEMPTS: usize = 3;

pub(super) fn say(msg: impl std::fmt::Display) {
    eprintln!("loadtest cluster: {msg}");
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free loopback port")?
        .port())
}

/// A child process that is killed (SIGKILL) and reaped when dropped;
/// [`ChildGuard::stop`] asks it to end with SIGTERM first.
pub(super) struct ChildGuard {
    pub(super) name: String,
    child: Child,
    /// Its stdout and stderr.
    pub(super) log: PathBuf,
}

impl ChildGuard {
    /// Start `cmd` in its own process group (a Ctrl-C in the terminal reaches only
    /// loadtest, which then stops the cluster in order), output to `log`.
    pub(super) fn spawn(
        name: String,
        cmd: &mut Command,
        log: PathBuf,
    ) -> anyhow::Result<ChildGuard> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        Ok(ChildGuard { name, child, log })
    }

    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its output, indented, for an error message (the
    /// directory goes with the cluster).
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "it printed nothing".into();
        }
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        let mut out = "its last output:".to_owned();
        for l in tail {
            out.push_str("\n    ");
            out.push_str(l);
        }
        out
    }

    /// The error for a process that exited while starting.
    pub(super) fn died(&self, status: ExitStatus) -> anyhow::Error {
        anyhow!(
            "{} exited while starting ({status}); {}",
            self.name,
            self.log_tail()
        )
    }

    /// SIGTERM, unless it has exited already (its pid may be another's by now).
    pub(super) fn terminate(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // Fails only when the process is already gone.
            kill(Pid::from_raw(pid), Signal::SIGTERM).ok();
        }
    }

    /// Wait, bounded, for the exit that [`ChildGuard::terminate`] asked for; kill it
    /// past the bound. Returns how it ended, for the teardown message.
    pub(super) async fn wait_or_kill(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return format!("{} {status}", self.name);
            }
            if Instant::now() >= deadline {
                self.child.kill().ok();
                self.child.wait().ok();
                return format!(
                    "{} killed: still running {timeout:?} after SIGTERM",
                    self.name
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl ChildGuard {
    /// SIGKILL it now and reap it.
    pub(super) fn kill_now(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Both are harmless once the process has been reaped.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The cluster's own directory (Redis's data directory, the config, the logs),
/// removed when dropped.
pub(super) struct DirGuard(pub(super) PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}
