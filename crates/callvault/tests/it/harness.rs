//! Spawns real `callvault` processes on loopback for the integration tests.
//! Every node gets its own temp data directory, ephemeral SIP/HTTP ports
//! and a random RTP port block, so tests run in parallel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_callvault");

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cv-it-{name}-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Node {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub http: SocketAddr,
    /// The cluster API URL, when the node is a cluster member.
    pub cluster: Option<String>,
    env: Vec<(String, String)>,
    ports: (u16, u16),
    wrapper: Vec<String>,
    /// An admin API token (user `admin`, made with `callvault users add`).
    pub token: String,
}

/// Admin tokens of the running test nodes, by HTTP address, so
/// [`http_json`] authenticates whatever node a URL names.
static TOKENS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn token_for(url: &str) -> Option<String> {
    let authority = url.split("://").nth(1)?.split('/').next()?;
    TOKENS.lock().unwrap().iter().find(|(a, _)| a == authority).map(|(_, t)| t.clone())
}

/// The admin token of the node in `dir`: made once per data directory
/// with the real CLI (the way an operator bootstraps the first admin).
pub fn admin_token(dir: &Path) -> String {
    let file = dir.join("test-admin-token");
    if let Ok(t) = std::fs::read_to_string(&file) {
        return t;
    }
    let out = Command::new(BIN)
        .args(["users", "add", "admin", "--role", "admin", "--token", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "users add: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::write(&file, &token).unwrap();
    token
}

impl Node {
    pub fn start(name: &str) -> Node {
        Node::start_with(name, &[])
    }

    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Node {
        Node::start_wrapped(name, env, &[])
    }

    /// Runs the server under `wrapper` (e.g. `prlimit --fsize=N --`).
    /// A node whose data directory is `dir` (e.g. a small filesystem).
    pub fn start_in(dir: PathBuf, env: &[(&str, &str)]) -> Node {
        let block = 20_000 + 100 * fastrand::u16(0..95);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Node::spawn(dir, env, (block, block + 99), Vec::new())
    }

    pub fn start_wrapped(name: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Node {
        let dir = temp_dir(name);
        let block = 20_000 + 100 * fastrand::u16(0..95);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Node::spawn(dir, env, (block, block + 99), wrapper.iter().map(|s| s.to_string()).collect())
    }

    fn spawn(dir: PathBuf, env: Vec<(String, String)>, ports: (u16, u16), wrapper: Vec<String>) -> Node {
        let _ = std::fs::remove_file(dir.join("listen.json"));
        let token = admin_token(&dir);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--sip-udp", "127.0.0.1:0", "--sip-tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--media-ports")
            .arg(format!("{}-{}", ports.0, ports.1))
            .env("RUST_LOG", "info")
            .env("CALLVAULT_STORAGE__MIN_FREE_MIB", "1")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn callvault serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let listen = loop {
            if let Ok(data) = std::fs::read(dir.join("listen.json")) {
                if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                    break v;
                }
            }
            assert!(Instant::now() < deadline, "node did not start; log:\n{}", read_log(&dir));
            std::thread::sleep(Duration::from_millis(25));
        };
        let addr = |k: &str| listen[k].as_str().unwrap().parse().unwrap();
        let http: SocketAddr = addr("http");
        {
            // An address a dropped node used may come back with a new node.
            let mut tokens = TOKENS.lock().unwrap();
            tokens.retain(|(a, _)| *a != http.to_string());
            tokens.push((http.to_string(), token.clone()));
        }
        Node {
            token,
            child: Some(child),
            sip_udp: addr("sip_udp"),
            sip_tcp: addr("sip_tcp"),
            http,
            cluster: listen["cluster"].as_str().map(str::to_owned),
            dir,
            env,
            ports,
            wrapper,
        }
    }

    /// Starts the node again on the same data directory (after a kill).
    pub fn restart(mut self) -> Node {
        self.stop();
        let (dir, env, ports) = (std::mem::take(&mut self.dir), std::mem::take(&mut self.env), self.ports);
        let wrapper = std::mem::take(&mut self.wrapper);
        std::mem::forget(self);
        Node::spawn(dir, env, ports, wrapper)
    }

    /// Starts the node again with some environment variables changed.
    pub fn restart_with(mut self, env: &[(&str, String)]) -> Node {
        for (k, v) in env {
            self.env.retain(|(ek, _)| ek != k);
            self.env.push((k.to_string(), v.clone()));
        }
        self.restart()
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no cleanup at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (graceful stop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("node did not stop on SIGTERM; log:\n{}", read_log(&self.dir));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http_json_as(Some(&self.token), "GET", &self.url(path), None)
    }

    pub fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        http_json_as(Some(&self.token), "POST", &self.url(path), body)
    }

    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        http_json_as(Some(&self.token), "PUT", &self.url(path), Some(body))
    }

    /// A GET with the node's admin token (for raw bodies: audio, metrics).
    pub fn raw_get(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        ureq::get(&self.url(path)).header("authorization", format!("Bearer {}", self.token))
    }

    pub fn recordings(&self, query: &str) -> Vec<Value> {
        let (code, v) = self.get(&format!("/api/v1/recordings{query}"));
        assert_eq!(code, 200, "{v}");
        v["recordings"].as_array().unwrap().clone()
    }

    /// The finished recording holding SIP Call-ID `call_id`.
    pub fn finished(&self, call_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.recordings("?limit=1000").into_iter().find(|r| {
                r["call_ids"].as_array().unwrap().iter().any(|c| c == call_id)
                    && r["state"] != "active"
                    && r["audio"].is_object()
            });
            if let Some(r) = found {
                return r;
            }
            assert!(Instant::now() < deadline, "no finished recording for {call_id}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let body = self.raw_get("/metrics").call().unwrap().body_mut().read_to_string().unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0.0)
    }

    pub fn audio(&self, rec: &Value) -> Wav {
        Wav::open(&self.dir.join(rec["audio"]["path"].as_str().unwrap()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node data kept in {}", self.dir.display());
        }
    }
}

/// A loopback port free right now (for addresses that must stay the same
/// across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

pub fn http_json(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    http_json_as(token_for(url).as_deref(), method, url, body)
}

/// [`http_json`] with this bearer token (or none).
pub fn http_json_as(token: Option<&str>, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call(),
        ("PUT", Some(b)) => agent
            .put(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        (_, Some(b)) => agent
            .post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        (_, None) => agent.post(url).header("authorization", &auth).send_empty(),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Runs `callvault call <target> <args> --json` to completion.
pub fn call(target: SocketAddr, args: &[&str]) -> Value {
    let out = Command::new(BIN).arg("call").arg(target.to_string()).args(args).arg("--json").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("client output is not JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Starts `callvault call` in the background.
pub fn call_bg(target: SocketAddr, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("call")
        .arg(target.to_string())
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn finish_bg(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("client output is not JSON ({e}): {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// A recorded WAV split into channels.
pub struct Wav {
    pub rate: u32,
    pub channels: Vec<Vec<i16>>,
}

impl Wav {
    pub fn open(path: &Path) -> Wav {
        let r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec = r.spec();
        let n = spec.channels as usize;
        let all: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
        let channels = (0..n).map(|c| all.iter().skip(c).step_by(n).copied().collect()).collect();
        Wav { rate: spec.sample_rate, channels }
    }

    pub fn slice(&self, ch: usize, from_ms: u64, to_ms: u64) -> &[i16] {
        let c = &self.channels[ch];
        let a = ((from_ms * self.rate as u64 / 1000) as usize).min(c.len());
        let b = ((to_ms * self.rate as u64 / 1000) as usize).min(c.len());
        &c[a..b]
    }

    /// Goertzel power of `freq` in channel `ch` over `[from_ms, to_ms)`.
    pub fn power(&self, ch: usize, freq: f64, from_ms: u64, to_ms: u64) -> f64 {
        media::signal::tone_power(self.slice(ch, from_ms, to_ms), freq, self.rate)
    }

    /// Asserts channel `ch` carries `freq` and not `other` over the window.
    pub fn assert_tone(&self, ch: usize, freq: f64, other: f64, from_ms: u64, to_ms: u64) {
        let want = self.power(ch, freq, from_ms, to_ms);
        let not = self.power(ch, other, from_ms, to_ms);
        assert!(want > 0.02, "channel {ch}: {freq} Hz power {want} too low");
        assert!(not < want / 50.0, "channel {ch}: {other} Hz power {not} vs {want}");
    }
}
