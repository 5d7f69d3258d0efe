//! A throwaway etcd cluster on loopback: `n` members of the system's `etcd` (Debian's
//! `etcd-server`), each with its data in a temporary directory and its output in a file there.
//! Every member is killed by its PID when the cluster is dropped, so a failing test leaves
//! nothing running. Short election timeouts, so that leases of one or two seconds work.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cluster::netns::Net;
use cluster::{Process, Signal};

const ETCD: &str = "etcd";

/// Whether `etcd` can be run; if not, says "skipped: etcd not installed" (the test returns).
pub fn available() -> bool {
    let ok = Command::new(ETCD)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: etcd not installed");
    }
    ok
}

struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Process>,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Members on hosts of this network (host name per member), or on loopback.
    net: Option<(std::sync::Arc<Net>, Vec<String>)>,
}

/// `n` distinct ports that were free a moment ago (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster serves linearizable reads on each.
    pub fn start(n: usize) -> Self {
        // A port taken between picking and binding makes a member exit: pick anew.
        for attempt in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let ports = free_ports(2 * n);
            let members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client: format!("127.0.0.1:{}", ports[2 * i]),
                    peer: format!("127.0.0.1:{}", ports[2 * i + 1]),
                    child: None,
                })
                .collect();
            let mut c = EtcdCluster {
                dir,
                members,
                net: None,
            };
            for i in 0..n {
                c.spawn(i);
            }
            if c.wait_healthy(Duration::from_secs(30)) {
                return c;
            }
            eprintln!(
                "etcd cluster did not come up (attempt {attempt}):\n{}",
                c.logs()
            );
        }
        panic!("cannot start an etcd cluster");
    }

    /// One member on each of `hosts` of `net` (client port 2379, peer port 2380 of the host's
    /// address), so that partitions and host faults reach them too.
    pub fn start_on(net: std::sync::Arc<Net>, hosts: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Member {
                name: format!("m{i}"),
                client: format!("{}:2379", net.ip(h).unwrap()),
                peer: format!("{}:2380", net.ip(h).unwrap()),
                child: None,
            })
            .collect();
        let mut c = EtcdCluster {
            dir,
            members,
            net: Some((net, hosts.iter().map(|h| h.to_string()).collect())),
        };
        for i in 0..hosts.len() {
            c.spawn(i);
        }
        assert!(
            c.wait_healthy(Duration::from_secs(30)),
            "etcd in namespaces did not come up\n{}",
            c.logs()
        );
        c
    }

    /// A gateway call to member `m`, from inside the network if there is one.
    fn call_member(&self, m: &Member, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        match &self.net {
            Some((net, _)) => {
                let (addr, path, body) = (m.client.clone(), path.to_string(), body.to_string());
                net.within("ctl", move || call(&addr, &path, &body))
                    .unwrap_or_else(|e| panic!("{e}"))
            }
            None => call(&m.client, path, body),
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let m = &self.members[i];
        let mut cmd = match &self.net {
            Some((net, hosts)) => net.command(&hosts[i], ETCD).unwrap(),
            None => Command::new(ETCD),
        };
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "understudy-test"])
            .args(["--election-timeout", "500", "--heartbeat-interval", "50"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.members[i].child = Some(Process::spawn(&mut cmd).unwrap());
    }

    /// The client URLs of all members, `http://HOST:PORT`.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// The client URLs, comma-separated (the `--etcd` argument).
    pub fn urls_arg(&self) -> String {
        self.urls().join(",")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether member `i` runs (was not killed).
    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Sends member `i` `sig` (SIGSTOP, SIGCONT); nothing if it is not running.
    pub fn signal(&self, i: usize, sig: Signal) {
        if let Some(c) = &self.members[i].child {
            c.signal(sig).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// SIGKILLs member `i` (by the PID we started).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
        }
    }

    /// Starts member `i` again on its data directory (after [`Self::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Until every running member serves a linearizable read (the cluster has quorum and a
    /// leader), or `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            loop {
                if self
                    .call_member(m, "/v3/kv/range", r#"{"key":"aGVhbHRo"}"#)
                    .is_ok_and(|(s, _)| s == 200)
                {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("etcd member {i} not healthy");
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        true
    }

    /// The index of the member that is the raft leader, if a running member knows it.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok((200, body)) = self.call_member(m, "/v3/maintenance/status", "{}") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = v["leader"].as_str()?.to_string();
            for (j, n) in self.members.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                if let Ok((200, b)) = self.call_member(n, "/v3/maintenance/status", "{}")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&b)
                    && v["header"]["member_id"].as_str() == Some(&leader)
                {
                    return Some(j);
                }
            }
        }
        None
    }

    /// One gateway call to any running member: the answer's JSON.
    pub fn kv(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            if let Ok((200, answer)) = self.call_member(m, path, &body) {
                return serde_json::from_str(&answer).unwrap();
            }
        }
        panic!("no etcd member answered {path} {body}\n{}", self.logs());
    }

    /// Writes `value` at `key`.
    pub fn put(&self, key: &str, value: &[u8]) {
        self.kv(
            "/v3/kv/put",
            serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)}),
        );
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.kv(
            "/v3/kv/deleterange",
            serde_json::json!({"key": B64.encode(key)}),
        );
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let v = self.kv("/v3/kv/range", serde_json::json!({"key": B64.encode(key)}));
        v["kvs"][0]["value"]
            .as_str()
            .map(|s| B64.decode(s).unwrap())
    }

    /// Every member's output, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- etcd {} ---\n{}\n",
                    self.members[i].name,
                    tail.join("\n")
                )
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `POST path` with `body` to one member: (status, body), within 2 s.
fn call(client: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&client.parse().unwrap(), t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {client}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::other(format!("bad answer {raw:?}"));
    let (head, mut rest) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let mut out = String::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n).ok_or_else(bad)?);
            rest = after.get(n + 2..).unwrap_or_default();
        }
    } else {
        out = rest.to_string();
    }
    Ok((status, out))
}
