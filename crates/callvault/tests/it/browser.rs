//! The web UI in a real browser: Chromium (headless) driven over WebDriver
//! by chromedriver, both from Debian (scripts/install-test-deps.sh). A
//! supervisor signs in, searches, opens a recording, plays it with a seek,
//! downloads it and shares a signed link; an agent is refused a recording
//! outside their scope.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::{call, free_port, temp_dir, Node};

/// chromedriver on a loopback port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn start_driver() -> Driver {
    assert!(
        Command::new("chromedriver").arg("--version").output().is_ok_and(|o| o.status.success()),
        "chromedriver is not installed: run scripts/install-test-deps.sh (Debian chromium-driver)"
    );
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port, profile: temp_dir("chromium-profile") }
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--autoplay-policy=no-user-gesture-required", format!("--user-data-dir={}", d.profile.display())],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session with Chromium")
}

async fn sign_in(b: &Client, node: &Node, user: &str, password: &str) {
    b.goto(&node.url("/")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().starts_with("/ui/sign-in"), "sent to sign in first");
    b.find(Locator::Id("user")).await.unwrap().send_keys(user).await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
    b.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    let who = b.wait().for_element(Locator::Id("whoami")).await.unwrap().text().await.unwrap();
    assert!(who.starts_with(user), "{who}");
}

/// Waits until the page's URL contains `part` (a navigation finished).
async fn wait_for_url(b: &Client, part: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.current_url().await.unwrap().as_str().contains(part) {
        assert!(Instant::now() < deadline, "never reached a URL with {part}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs an async script in the page and returns its value.
async fn js(b: &Client, body: &str) -> Value {
    b.execute(&format!("return (async () => {{ {body} }})()"), vec![]).await.unwrap()
}

#[test]
fn a_supervisor_finds_plays_downloads_and_shares_a_recording_and_an_agent_is_refused() {
    let node = Node::start("browser");
    node.put(
        "/api/v1/users/sup",
        json!({ "role": "supervisor", "scope": ["+1555*"], "password": "supervisor pass 1" }),
    );
    node.put("/api/v1/users/agent", json!({ "role": "agent", "scope": ["2001"], "password": "agent password 1" }));
    let s = call(node.sip_udp, &["--duration", "3"]);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    let id = rec["id"].as_str().unwrap().to_owned();
    let driver = start_driver();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let b = browser(&driver).await;
        sign_in(&b, &node, "sup", "supervisor pass 1").await;

        // Search by a party substring, open the result.
        b.goto(&node.url("/ui/recordings")).await.unwrap();
        b.find(Locator::Id("party")).await.unwrap().send_keys("0100").await.unwrap();
        b.find(Locator::Id("do-search")).await.unwrap().click().await.unwrap();
        wait_for_url(&b, "party=0100").await;
        let total = b.wait().for_element(Locator::Id("total")).await.unwrap().text().await.unwrap();
        assert!(total.starts_with("1 "), "{total}");
        b.find(Locator::Css("a.rec")).await.unwrap().click().await.unwrap();
        wait_for_url(&b, &id).await;
        let Ok(el) = b.find(Locator::Id("rec-id")).await else {
            panic!("no recording page: {}", b.source().await.unwrap());
        };
        let shown = el.text().await.unwrap();
        assert_eq!(shown, id);

        // Play with a seek: the element knows the duration, seeks, and time advances.
        let v = js(
            &b,
            r#"const a = document.getElementById('player');
               if (a.readyState < 1) await new Promise(r => a.addEventListener('loadedmetadata', r, { once: true }));
               const duration = a.duration;
               a.currentTime = 1.5;
               await new Promise(r => a.addEventListener('seeked', r, { once: true }));
               const seeked = a.currentTime;
               await a.play();
               await new Promise(r => setTimeout(r, 600));
               const later = a.currentTime;
               a.pause();
               return [duration, seeked, later];"#,
        )
        .await;
        let (duration, seeked, later) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap(), v[2].as_f64().unwrap());
        assert!((2.5..=3.5).contains(&duration), "duration {duration}");
        assert!((seeked - 1.5).abs() < 0.05, "seeked to {seeked}");
        assert!(later > seeked, "playback advanced: {seeked} -> {later}");

        // The per-channel waveform is drawn from the same audio.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let drawn = js(&b, "return document.getElementById('waveform').dataset.drawn || '';").await;
            if drawn == "2" {
                break;
            }
            assert!(Instant::now() < deadline, "waveform not drawn: {drawn}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Download: the link serves the WAV as an attachment.
        let v = js(
            &b,
            r#"const r = await fetch(document.getElementById('download').href, { credentials: 'same-origin' });
               const body = await r.arrayBuffer();
               return [r.status, r.headers.get('content-disposition'), body.byteLength];"#,
        )
        .await;
        assert_eq!(v[0], 200);
        assert!(v[1].as_str().unwrap().starts_with("attachment"), "{v}");
        assert_eq!(v[2].as_u64().unwrap(), rec["audio"]["bytes"].as_u64().unwrap());

        // A signed link, made in the page, plays without any session.
        b.find(Locator::Id("make-link")).await.unwrap().click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let link = loop {
            let l = b.find(Locator::Id("link")).await.unwrap().prop("value").await.unwrap().unwrap_or_default();
            if !l.is_empty() {
                break l;
            }
            assert!(Instant::now() < deadline, "no link made");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(link.contains("sig="), "{link}");
        let resp = ureq::get(&link).call().unwrap();
        assert_eq!(resp.headers().get("content-type").unwrap(), "audio/wav");

        // Sign out; an agent with another scope cannot open the recording.
        b.find(Locator::Css("form.signout button")).await.unwrap().click().await.unwrap();
        b.wait().for_element(Locator::Id("sign-in")).await.unwrap();
        sign_in(&b, &node, "agent", "agent password 1").await;
        b.goto(&node.url(&format!("/ui/recordings/{id}"))).await.unwrap();
        let msg = b.wait().for_element(Locator::Id("message")).await.unwrap().text().await.unwrap();
        assert_eq!(msg, "no such recording");
        b.goto(&node.url("/ui/recordings")).await.unwrap();
        let total = b.find(Locator::Id("total")).await.unwrap().text().await.unwrap();
        assert!(total.starts_with("0 "), "{total}");
        b.close().await.unwrap();
    });

    // What the browser did is in the audit trail.
    let (_, v) = node.get(&format!("/api/v1/audit?target={id}&limit=1000"));
    let seen: Vec<(String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned()))
        .collect();
    for (actor, action) in
        [("sup", "view"), ("sup", "play"), ("sup", "download"), ("sup", "signed_link"), ("link:sup", "signed_link")]
    {
        assert!(seen.contains(&(actor.into(), action.into())), "{actor} {action} not audited: {seen:?}");
    }
}
