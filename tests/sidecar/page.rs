//! "Why was this pod out of rotation?": `/readyz?verbose` lists every signal and the last
//! transitions with the failing checks' evidence, and the status page at `/` shows the same to a
//! person, in a real headless browser (Debian's chromium): its DOM holds the verdict, the signals
//! and the history with the app's bytes escaped, and its screenshot shows the verdict's colour.

#[allow(unused_imports)]
use crate::common;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, healthy, skip_or_fail, tempdir, which, Behaviour, Sidewatch, Upstream};

const WITHIN: Duration = Duration::from_secs(15);
/// An answer whose body would be markup if the page did not escape it.
const HOSTILE: &str = "<script>document.title='owned'</script><b>overloaded</b>";

fn start(up: &Upstream) -> Sidewatch {
    let url = up.url();
    let args = [
        "--target",
        url.as_str(),
        "--interval",
        "100ms",
        "--failure-threshold",
        "1",
        "--cgroup",
        "none",
    ];
    Sidewatch::start(&args, &[])
}

/// Goes not ready on a 503 and back, `times` times.
async fn flap(sw: &Sidewatch, up: &Upstream, times: usize) {
    for _ in 0..times {
        up.set(Behaviour::Status(503, HOSTILE));
        sw.wait_reason("http_5xx", WITHIN).await;
        up.set(healthy());
        sw.wait_ready(WITHIN).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verbose_readyz_has_the_signals_and_the_transitions_with_their_evidence() {
    let up = Upstream::start(healthy()).await;
    let sw = start(&up);
    sw.wait_ready(WITHIN).await;
    flap(&sw, &up, 2).await;
    let (status, body) = sw.get("/readyz?verbose").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["signals"][0]["signal"], "probe:app");
    assert_eq!(body["signals"][0]["state"], "up");
    // Ready, knowing what was not looked at: memory, and why, as the features metric says.
    let not_watched = serde_json::json!([{"part": "memory", "why": "memory.source is none"}]);
    assert_eq!(body["not_watched"], not_watched);
    let off = sw.metric("sidewatch_features{feature=\"memory\"}").await;
    assert_eq!(off, Some(0.0));
    let history = body["history"].as_array().unwrap();
    // Newest first: back to ready, not ready, back, not ready, and the start-up's ready.
    let turns: Vec<(&str, &str)> = history
        .iter()
        .map(|t| (t["from"].as_str().unwrap(), t["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        [
            ("not_ready", "ready"),
            ("ready", "not_ready"),
            ("not_ready", "ready"),
            ("ready", "not_ready"),
            ("not_ready", "ready"),
        ]
    );
    let evidence = format!("HTTP/1.1 503 Service Unavailable: {HOSTILE:?}");
    for t in &history[..4] {
        assert_eq!(t["reasons"][0]["reason"], "http_5xx", "{t}");
        assert_eq!(t["reasons"][0]["message"], evidence.as_str(), "{t}");
        assert!(t["lasted_seconds"].as_f64().unwrap() > 0.0, "{t}");
    }
    assert_eq!(history[4]["reasons"][0]["reason"], "starting");
    // The plain /readyz is as before.
    let (_, plain) = sw.readyz().await;
    assert!(plain.get("history").is_none(), "{plain}");
    // The transition's log line carries the evidence too.
    assert!(
        sw.logs()
            .iter()
            .any(|l| l.contains("readiness changed") && l.contains("503 Service Unavailable")),
        "{:?}",
        sw.logs()
    );
}

struct Chromium(std::path::PathBuf);

impl Chromium {
    fn find() -> Option<Chromium> {
        match which("chromium") {
            Some(path) => Some(Chromium(path)),
            None => {
                skip_or_fail("chromium is not installed (scripts/install-test-tools)");
                None
            }
        }
    }

    /// The page's DOM after it loaded, and a screenshot of it (1000 × 700).
    fn load(&self, url: &str, dir: &Path, shot: &str) -> String {
        let run = |extra: &[&str]| {
            let profile = dir.join("profile");
            let out = Command::new(&self.0)
                .args(["--headless", "--no-sandbox", "--disable-gpu"])
                .args(["--disable-dev-shm-usage", "--hide-scrollbars"])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("--window-size=1000,700")
                .args(extra)
                .arg(url)
                .output()
                .expect("run chromium");
            assert!(out.status.success(), "{}", common::output_text(&out));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let png = dir.join(shot);
        run(&[&format!("--screenshot={}", png.display())]);
        run(&["--dump-dom"])
    }
}

/// Pixels of the screenshot's top band (where the verdict's banner is) near `rgb`.
fn banner_pixels(png: &Path, rgb: [u8; 3]) -> (usize, (u32, u32)) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let row = info.line_size;
    let near = |p: &[u8]| (0..3).all(|i| p[i].abs_diff(rgb[i]) < 16);
    let count = (0..(info.height.min(120) as usize))
        .flat_map(|y| buf[y * row..y * row + row].chunks(channels))
        .filter(|p| near(p))
        .count();
    (count, (info.width, info.height))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_verdict_the_signals_and_the_history_in_a_browser() {
    let Some(chromium) = Chromium::find() else {
        return;
    };
    let dir = tempdir::Dir::new();
    let up = Upstream::start(healthy()).await;
    let sw = start(&up);
    sw.wait_ready(WITHIN).await;
    flap(&sw, &up, 1).await;
    up.set(Behaviour::Status(503, HOSTILE));
    sw.wait_reason("http_5xx", WITHIN).await;

    let url = sw.url("/");
    let dom = tokio::task::block_in_place(|| chromium.load(&url, dir.path(), "not-ready.png"));
    assert!(
        dom.contains(r#"<h1 class="not_ready" id="verdict">NOT READY</h1>"#),
        "{dom}"
    );
    assert!(dom.contains("probe:app"), "{dom}");
    assert!(
        dom.contains("memory: not watched, because memory.source is none"),
        "{dom}"
    );
    // The app's markup is text on the page, not markup: its script did not run.
    assert!(dom.contains("&lt;script&gt;"), "{dom}");
    assert!(!dom.contains("<b>overloaded</b>"), "{dom}");
    assert!(dom.contains("<title>sidewatch: NOT READY</title>"), "{dom}");
    let rows = dom.matches("ready → not_ready").count() + dom.matches("not_ready → ready").count();
    assert_eq!(rows, 4, "start-up, flap and the failure now: {dom}");
    let (red, size) = banner_pixels(&dir.path().join("not-ready.png"), [0xcf, 0x22, 0x2e]);
    assert_eq!(size, (1000, 700));
    assert!(red > 20_000, "{red} red pixels in the banner");
    assert_eq!(
        banner_pixels(&dir.path().join("not-ready.png"), [0x1a, 0x7f, 0x37]).0,
        0
    );

    up.set(healthy());
    sw.wait_ready(WITHIN).await;
    let dom = eventually("the page says ready", WITHIN, || async {
        let dom = tokio::task::block_in_place(|| chromium.load(&url, dir.path(), "ready.png"));
        dom.contains(">READY</h1>").then_some(dom)
    })
    .await;
    assert!(dom.contains("td class=\"up\""), "{dom}");
    let (green, _) = banner_pixels(&dir.path().join("ready.png"), [0x1a, 0x7f, 0x37]);
    assert!(green > 20_000, "{green} green pixels in the banner");
}
