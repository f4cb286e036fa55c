//! HAProxy in front of the nodes (`--haproxy`): a config in the cluster's directory
//! (an HTTP frontend on a free loopback port, round-robin over the nodes, each
//! checked with `GET /readyz` every second: out after one failure, back after two
//! successes; WebSocket tunnels held for an hour), `haproxy -f CFG -db` as a child
//! killed with the cluster, and a bounded wait until HAProxy sees every node UP
//! (read from its stats socket).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::binaries::on_path;
use super::process::{free_port, ChildGuard, POLL, PROBE_TIMEOUT, START_TIMEOUT};

/// The backend's name in the config and in the stats.
const BACKEND: &str = "nodes";

/// HAProxy, started and seeing every node UP.
pub(super) struct Haproxy {
    pub(super) child: ChildGuard,
    /// The WebSocket URL of its frontend.
    pub(super) url: String,
}

/// `haproxy` on PATH, else Debian's `/usr/sbin/haproxy`.
pub(super) fn binary() -> anyhow::Result<PathBuf> {
    on_path("haproxy")
        .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow!("--haproxy: haproxy is not on PATH nor in /usr/sbin: install it (e.g. `apt-get install haproxy`)")
        })
}

/// The config: the nodes' `host:port`s as servers `node-1`.. behind one frontend.
pub(super) fn config(port: u16, socket: &Path, nodes: &[String]) -> String {
    let mut cfg = format!(
        "# Written by `loadtest cluster --haproxy`.
# maxconn left out: HAProxy derives it from the open-file limit.
global
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # WebSocket connections, once upgraded.
    timeout tunnel 1h
    retries 3
    option redispatch

frontend gateways
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter 1s fall 1 rise 2
",
        socket = socket.display()
    );
    for (i, addr) in nodes.iter().enumerate() {
        cfg.push_str(&format!("    server node-{} {addr}\n", i + 1));
    }
    cfg
}

/// `host:port` of a node's `ws://host:port/...` URL.
pub(super) fn host_port(url: &str) -> &str {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
}

/// Write the config for the nodes at `urls`, start HAProxy and wait, bounded,
/// until it sees every node UP.
pub(super) async fn start(bin: &Path, dir: &Path, urls: &[String]) -> anyhow::Result<Haproxy> {
    let port = free_port()?;
    let socket = dir.join("haproxy.sock");
    let nodes: Vec<String> = urls.iter().map(|u| host_port(u).to_owned()).collect();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config(port, &socket, &nodes))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-f").arg(&cfg).arg("-db");
    let mut child = ChildGuard::spawn("haproxy".into(), &mut cmd, dir.join("haproxy.log"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.exited() {
            return Err(child.died(status));
        }
        if let Some(up) = servers_up(&socket).await {
            if up == nodes.len() {
                break;
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "haproxy did not see every node UP within {START_TIMEOUT:?}; {}",
                child.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Haproxy {
        child,
        url: format!("ws://127.0.0.1:{port}/connection/websocket"),
    })
}

/// How many servers of the backend HAProxy has UP (`show stat` on its stats
/// socket); `None` while the socket does not answer.
async fn servers_up(socket: &Path) -> Option<usize> {
    let ask = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(b"show stat\n").await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<String, std::io::Error>(text)
    };
    let text = tokio::time::timeout(PROBE_TIMEOUT, ask).await.ok()?.ok()?;
    Some(count_up(&text))
}

/// Servers of the backend whose status is `UP` in `show stat` CSV.
fn count_up(csv: &str) -> usize {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return 0;
    };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let Some(status) = columns.iter().position(|c| *c == "status") else {
        return 0;
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&BACKEND) && f.get(1).is_some_and(|s| s.starts_with("node-")))
        .filter(|f| f.get(status) == Some(&"UP"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_readyz_and_lists_every_node() {
        let cfg = config(
            8000,
            Path::new("/tmp/x/haproxy.sock"),
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        );
        assert!(cfg.contains("bind 127.0.0.1:8000"), "{cfg}");
        assert!(cfg.contains("uri /readyz"), "{cfg}");
        assert!(cfg.contains("http-check expect status 200"), "{cfg}");
        assert!(cfg.contains("inter 1s fall 1 rise 2"), "{cfg}");
        assert!(cfg.contains("timeout tunnel 1h"), "{cfg}");
        assert!(cfg.contains("server node-1 127.0.0.1:1\n    server node-2 127.0.0.1:2\n"));
        assert_eq!(
            host_port("ws://127.0.0.1:9/connection/websocket"),
            "127.0.0.1:9"
        );
    }

    #[test]
    fn count_up_reads_the_status_column_of_the_backend_servers() {
        let csv = "# pxname,svname,qcur,status,x\n\
                   gateways,FRONTEND,,OPEN,\n\
                   nodes,node-1,0,UP,\n\
                   nodes,node-2,0,UP 1/2,\n\
                   nodes,node-3,0,DOWN,\n\
                   nodes,BACKEND,0,UP,\n";
        assert_eq!(count_up(csv), 1);
        assert_eq!(count_up(""), 0);
    }
}
