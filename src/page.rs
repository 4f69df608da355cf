//! The status page at `/`, for a person with `kubectl port-forward`: the verdict, every signal and
//! the last transitions, server-rendered HTML (maud escapes every value: the messages carry the
//! app's own bytes), no script.

use std::time::SystemTime;

use maud::{html, Markup, DOCTYPE};

use crate::engine::bus::Published;
use crate::engine::Cause;

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1f2328}\
h1{font-size:1.7em;margin:0 0 .8em;padding:.5em .8em;color:#fff;border-radius:6px}\
h1.ready{background:#1a7f37}h1.not_ready{background:#cf222e}h1.draining{background:#9a6700}\
h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:.25em .6em;\
text-align:left;vertical-align:top}th{background:#f6f8fa}\
td.up{color:#1a7f37}td.down{color:#cf222e}td.failing{color:#9a6700}td.starting{color:#656d76}td.blind{color:#656d76}\
.message{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}";

pub fn render(published: &Published, now: SystemTime) -> String {
    let verdict = &published.verdict;
    let (class, headline) = match (verdict.ready, verdict.draining) {
        (_, true) if verdict.ready => ("draining", "READY, DRAINING"),
        (_, true) => ("draining", "NOT READY: DRAINING"),
        (true, false) => ("ready", "READY"),
        (false, false) => ("not_ready", "NOT READY"),
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { "sidewatch: " (headline) }
                style { (STYLE) }
            }
            body {
                h1 class=(class) id="verdict" { (headline) }
                h2 { "Reasons" }
                (causes(&verdict.reasons, now))
                @if !verdict.warnings.is_empty() {
                    h2 { "Warnings" }
                    (causes(&verdict.warnings, now))
                }
                h2 { "Signals" }
                table id="signals" {
                    tr { th { "signal" } th { "state" } th { "critical" } th { "last failure" } }
                    @for s in &published.signals {
                        tr {
                            td { (s.signal) }
                            td class=(s.state) { (s.state) }
                            td { @if s.critical { "yes" } @else { "no" } }
                            td class="message" {
                                @if let Some(f) = &s.failure { (f.reason) ": " (f.message) }
                            }
                        }
                    }
                }
                @for n in &published.not_watched {
                    p class="not_watched" {
                        (n.part) ": " @if n.blind { "blind" } @else { "not watched" } ", because " (n.why)
                    }
                }
                h2 { "Last transitions" }
                @if published.history.is_empty() {
                    p { "None since sidewatch started." }
                } @else {
                    table id="history" {
                        tr { th { "when" } th { "change" } th { "the state before lasted" } th { "reasons" } }
                        @for t in published.history.iter() {
                            tr {
                                td { (humantime::format_rfc3339_seconds(t.at)) " (" (ago(t.at, now)) " ago)" }
                                td { (t.from) " → " (t.to) }
                                td { (seconds(t.lasted_seconds)) }
                                td class="message" {
                                    @for c in &t.reasons {
                                        div { (c.signal) " " (c.reason) ": " (c.message) }
                                    }
                                }
                            }
                        }
                    }
                }
                p { "JSON: " a href="/readyz?verbose" { "/readyz?verbose" } " · " a href="/metrics" { "/metrics" } }
            }
        }
    };
    page.into_string()
}

fn causes(causes: &[Cause], now: SystemTime) -> Markup {
    html! {
        @if causes.is_empty() {
            p { "None." }
        } @else {
            table {
                tr { th { "signal" } th { "reason" } th { "evidence" } th { "since" } }
                @for c in causes {
                    tr {
                        td { (c.signal) }
                        td { (c.reason) }
                        td class="message" { (c.message) }
                        td { (ago(c.since, now)) " ago" }
                    }
                }
            }
        }
    }
}

fn ago(at: SystemTime, now: SystemTime) -> String {
    seconds(now.duration_since(at).unwrap_or_default().as_secs_f64())
}

fn seconds(s: f64) -> String {
    let whole = std::time::Duration::from_secs(s.max(0.0) as u64);
    if whole.is_zero() {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(whole).to_string()
    }
}
