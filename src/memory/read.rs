//! Reading the kernel's memory files: pure parsers for each format, and one `Sample` per read of a
//! cgroup v1 or v2 directory or of the app's processes. Every failure names the file and is
//! classified (`gone`, `missing`, `garbled`, `io`); none panics.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files larger than this are not memory files; reading stops there.
const MAX_FILE: u64 = 64 * 1024;
/// cgroup v1 writes "no limit" as the largest page-aligned i64; anything this big is unlimited.
const UNLIMITED_FROM: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cgroup directory itself: removed, as at a container restart, until it is made again.
    #[error("the cgroup {path} is gone (removed, as at a container restart)")]
    Gone { path: PathBuf },
    #[error("{path} is missing")]
    Missing { path: PathBuf },
    #[error("{path} is garbled: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ReadError {
    /// The `kind` label of `sidewatch_memory_read_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::Gone { .. } => "gone",
            ReadError::Missing { .. } => "missing",
            ReadError::Garbled { .. } => "garbled",
            ReadError::Io { .. } => "io",
        }
    }

    fn garbled(path: &Path, detail: impl Into<String>) -> Self {
        ReadError::Garbled {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }
}

/// PSI averages in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub some_avg10: f64,
    pub full_avg10: f64,
}

/// Which cgroup a limit belongs to: the watched one, or one above it up to the pod's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Own,
    /// An ancestor between the watched cgroup and the pod's (none in the kubelet's layouts).
    Parent,
    Pod,
}

impl Scope {
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Own => "the cgroup's own",
            Scope::Parent => "a parent cgroup's",
            Scope::Pod => "the pod's",
        }
    }
}

/// The limit that binds: the level (0 = the watched cgroup, 1 its parent, …), whose it is, and
/// the file that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub level: usize,
    pub scope: Scope,
    pub file: &'static str,
}

/// The kernel's OOM-kill counters of the watched cgroup and below (v2 `memory.events`, v1
/// `memory.oom_control`). Under `memory.oom.group=1` (the kubelet's default on v2) one OOM kills
/// the whole group: `oom_group_kill` rises by one and `oom_kill` by every member plus the victim
/// once more, so `oom_kill` alone counts processes (twice the victim), not OOMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomCounts {
    pub kills: u64,
    /// v2 only; 0 on v1, which has no group kills.
    pub group_kills: u64,
    /// v2 `oom`: times the cgroup's limit was hit and an allocation was about to fail, told
    /// before the killer picks its victim. 0 on v1, whose eventfd tells the same.
    pub ooms: u64,
}

/// One look at the app's memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at: Instant,
    /// Usage minus inactive file cache, as the kubelet computes it for eviction and OOM, at the
    /// level whose limit binds (the pod's includes every container of the pod).
    pub working_set: u64,
    /// `None` when unlimited. The tightest of `memory.max` and `memory.high` (v2; above
    /// `memory.high` the kernel throttles the app, and the kubelet's memory QoS sets it below
    /// the limit) of the watched cgroup and its ancestors up to the pod's: the one with the
    /// least room left.
    pub limit: Option<u64>,
    /// Whose limit `limit` is; `None` when unlimited.
    pub bound: Option<Bound>,
    /// v1 `under_oom`: the cgroup is out of memory right now (frozen when the OOM killer is off).
    pub under_oom: bool,
    /// Cumulative OOM-kill counters, when the source can see them.
    pub oom: Option<OomCounts>,
    /// Cumulative v2 `high` events: the usage went over a `memory.high` (the watched cgroup's
    /// or below it, or an ancestor's own) and the kernel reclaimed and throttled.
    pub high_events: Option<u64>,
    /// Only cgroup v2 has per-cgroup PSI.
    pub pressure: Option<Pressure>,
}

impl Sample {
    /// A sample of nothing: no app to watch yet.
    pub fn empty(at: Instant) -> Sample {
        Sample {
            at,
            working_set: 0,
            limit: None,
            bound: None,
            under_oom: false,
            oom: None,
            high_events: None,
            pressure: None,
        }
    }
}

/// The memory files of one cgroup, kept open and read again from their start where they live on
/// cgroupfs: there a file cannot be replaced while its directory lives (a removed directory
/// fails the next read, and the watcher finds it gone), so opening it again at every sample is a
/// path walk for nothing, a fifth of sidewatch's idle CPU at four samples a second. Files
/// anywhere else (a fixture tree, copies) are opened at each read: they may have been replaced.
#[derive(Debug, Default)]
pub struct Files {
    held: HashMap<PathBuf, File>,
}

/// `statfs` magic numbers of cgroup v1 and cgroup2 mounts.
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

impl Files {
    /// True when some file is held open.
    pub fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn read(&mut self, path: &Path) -> Result<String, ReadError> {
        if let Some(file) = self.held.get(path) {
            let read = read_from_start(file, path);
            if read.is_err() {
                // Opened again at the next read, which then says what is wrong now.
                self.held.remove(path);
            }
            return read;
        }
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let read = read_from_start(&file, path);
        let on_cgroupfs = rustix::fs::fstatfs(&file).is_ok_and(|fs| {
            let magic = fs.f_type as u64;
            magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
        });
        if read.is_ok() && on_cgroupfs {
            self.held.insert(path.to_owned(), file);
        }
        read
    }
}

/// A kernel file from offset 0 with `pread`: a seq_file read at offset 0 is generated afresh.
fn read_from_start(file: &File, path: &Path) -> Result<String, ReadError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if buf.len() as u64 >= MAX_FILE {
                break;
            }
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| ReadError::garbled(path, "not UTF-8"))
}

pub fn read_file(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut text = String::new();
    file.take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    Ok(text)
}

fn io_error(path: &Path, e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::NotFound => ReadError::Missing {
            path: path.to_owned(),
        },
        io::ErrorKind::InvalidData => ReadError::garbled(path, "not UTF-8"),
        _ => ReadError::Io {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// A single number, or `max` (v2) / a huge number (v1) for "no limit".
pub fn parse_limit(text: &str, path: &Path) -> Result<Option<u64>, ReadError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let n = parse_u64(t, path)?;
    Ok((n < UNLIMITED_FROM).then_some(n))
}

pub fn parse_u64(text: &str, path: &Path) -> Result<u64, ReadError> {
    text.trim().parse().map_err(|_| {
        ReadError::garbled(
            path,
            format!("want a number, got {:?}", crate::util::clip(text, 60)),
        )
    })
}

/// The value of `key` in a flat keyed file (`memory.stat`, `memory.events`, `memory.oom_control`).
pub fn keyed(text: &str, key: &str, path: &Path) -> Result<Option<u64>, ReadError> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or_default();
            return parse_u64(value, path).map(Some);
        }
    }
    Ok(None)
}

/// `some avg10=1.00 avg60=… total=…` and `full …` lines of a PSI file.
pub fn parse_pressure(text: &str, path: &Path) -> Result<Pressure, ReadError> {
    let mut found = (None, None);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next();
        let avg10 = parts
            .find_map(|p| p.strip_prefix("avg10="))
            .map(|v| v.parse::<f64>())
            .transpose()
            .ok()
            .flatten()
            .filter(|v| v.is_finite() && *v >= 0.0);
        match (kind, avg10) {
            (Some("some"), Some(v)) => found.0 = Some(v),
            (Some("full"), Some(v)) => found.1 = Some(v),
            (Some("some" | "full"), None) => {
                return Err(ReadError::garbled(
                    path,
                    format!("bad PSI line {:?}", crate::util::clip(line, 60)),
                ))
            }
            _ => {}
        }
    }
    match found {
        (Some(some_avg10), full) => Ok(Pressure {
            some_avg10,
            // The "full" line appeared in 5.x kernels for memory; older ones have only "some".
            full_avg10: full.unwrap_or(0.0),
        }),
        _ => Err(ReadError::garbled(path, "no \"some\" line")),
    }
}

/// The usage and limits of one cgroup level.
struct Level {
    working_set: u64,
    max: Option<u64>,
    high: Option<u64>,
}

/// A file that older kernels or the root cgroup lack: `None` then, not an error.
fn optional(files: &mut Files, path: &Path) -> Result<Option<String>, ReadError> {
    match files.read(path) {
        Ok(text) => Ok(Some(text)),
        Err(ReadError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn level_v2(files: &mut Files, dir: &Path) -> Result<Level, ReadError> {
    let f = |name: &str| dir.join(name);
    let usage = parse_u64(&files.read(&f("memory.current"))?, &f("memory.current"))?;
    let max = parse_limit(&files.read(&f("memory.max"))?, &f("memory.max"))?;
    let high = match optional(files, &f("memory.high"))? {
        Some(text) => parse_limit(&text, &f("memory.high"))?,
        None => None,
    };
    let stat = files.read(&f("memory.stat"))?;
    let inactive_file = keyed(&stat, "inactive_file", &f("memory.stat"))?.unwrap_or(0);
    Ok(Level {
        working_set: usage.saturating_sub(inactive_file),
        max,
        high,
    })
}

fn level_v1(files: &mut Files, dir: &Path) -> Result<Level, ReadError> {
    let f = |name: &str| dir.join(name);
    let usage = parse_u64(
        &files.read(&f("memory.usage_in_bytes"))?,
        &f("memory.usage_in_bytes"),
    )?;
    let max = parse_limit(
        &files.read(&f("memory.limit_in_bytes"))?,
        &f("memory.limit_in_bytes"),
    )?;
    let stat = files.read(&f("memory.stat"))?;
    // total_ counts the cgroup and its children, as usage_in_bytes does.
    let inactive_file = keyed(&stat, "total_inactive_file", &f("memory.stat"))?.unwrap_or(0);
    Ok(Level {
        working_set: usage.saturating_sub(inactive_file),
        max,
        high: None,
    })
}

/// The level with the least room left under its limit, and that limit; the watched cgroup's
/// own working set when no level has a limit. Ties go to the innermost level.
fn tightest(levels: &[(Scope, Level)]) -> (u64, Option<u64>, Option<Bound>) {
    let mut best: Option<(u64, u64, Bound)> = None;
    for (level, (scope, l)) in levels.iter().enumerate() {
        for (limit, file) in [(l.max, "memory.max"), (l.high, "memory.high")] {
            let Some(limit) = limit else { continue };
            let room = limit.saturating_sub(l.working_set);
            if best.is_none_or(|(ws, best_limit, _)| room < best_limit.saturating_sub(ws)) {
                let bound = Bound {
                    level,
                    scope: *scope,
                    file,
                };
                best = Some((l.working_set, limit, bound));
            }
        }
    }
    match best {
        Some((working_set, limit, bound)) => (working_set, Some(limit), Some(bound)),
        None => (levels.first().map_or(0, |(_, l)| l.working_set), None, None),
    }
}

/// cgroup v2: `memory.current`, `memory.max`, `memory.high`, `memory.stat` of the watched cgroup
/// and of each of `ancestors` (up to the pod's), the watched cgroup's `memory.events` and
/// `memory.pressure`, and the ancestors' own `high` events (`memory.events.local`).
pub fn sample_v2(
    files: &mut Files,
    dir: &Path,
    ancestors: &[(PathBuf, Scope)],
) -> Result<Sample, ReadError> {
    let at = Instant::now();
    let f = |name: &str| dir.join(name);
    let mut levels = vec![(Scope::Own, level_v2(files, dir)?)];
    let events = files.read(&f("memory.events"))?;
    let oom = OomCounts {
        kills: keyed(&events, "oom_kill", &f("memory.events"))?.unwrap_or(0),
        group_kills: keyed(&events, "oom_group_kill", &f("memory.events"))?.unwrap_or(0),
        ooms: keyed(&events, "oom", &f("memory.events"))?.unwrap_or(0),
    };
    let mut high_events = keyed(&events, "high", &f("memory.events"))?;
    for (ancestor, scope) in ancestors {
        levels.push((*scope, level_v2(files, ancestor)?));
        // The ancestor's own events only: its hierarchical file also counts ours again.
        let local = ancestor.join("memory.events.local");
        if let Some(text) = optional(files, &local)? {
            let own = keyed(&text, "high", &local)?.unwrap_or(0);
            high_events = Some(high_events.unwrap_or(0) + own);
        }
    }
    let (working_set, limit, bound) = tightest(&levels);
    // memory.pressure is absent when the kernel has PSI off (psi=0): not an error.
    let pressure = match optional(files, &f("memory.pressure"))? {
        Some(text) => Some(parse_pressure(&text, &f("memory.pressure"))?),
        None => None,
    };
    Ok(Sample {
        at,
        working_set,
        limit,
        bound,
        under_oom: false,
        oom: Some(oom),
        high_events,
        pressure,
    })
}

/// cgroup v1: `memory.usage_in_bytes`, `memory.limit_in_bytes`, `memory.stat` of the watched
/// cgroup and of each of `ancestors`, its `memory.oom_control`; on a hybrid node, PSI from the
/// process's v2 cgroup's `memory.pressure` (`psi`).
pub fn sample_v1(
    files: &mut Files,
    dir: &Path,
    ancestors: &[(PathBuf, Scope)],
    psi: Option<&Path>,
) -> Result<Sample, ReadError> {
    let at = Instant::now();
    let f = |name: &str| dir.join(name);
    let mut levels = vec![(Scope::Own, level_v1(files, dir)?)];
    for (ancestor, scope) in ancestors {
        levels.push((*scope, level_v1(files, ancestor)?));
    }
    let (working_set, limit, bound) = tightest(&levels);
    let oom = files.read(&f("memory.oom_control"))?;
    // oom_kill appeared in Linux 4.13; without it, only under_oom is known.
    let kills = keyed(&oom, "oom_kill", &f("memory.oom_control"))?;
    let under_oom = keyed(&oom, "under_oom", &f("memory.oom_control"))? == Some(1);
    let pressure = match psi {
        Some(file) => Some(parse_pressure(&files.read(file)?, file)?),
        None => None,
    };
    Ok(Sample {
        at,
        working_set,
        limit,
        bound,
        under_oom,
        oom: kills.map(|kills| OomCounts {
            kills,
            ..OomCounts::default()
        }),
        high_events: None,
        pressure,
    })
}

/// The resident set of `pids` from `/proc/<pid>/status` (world-readable), against a configured limit.
pub fn sample_proc(pids: &[i32], limit: Option<u64>) -> Result<Sample, ReadError> {
    let at = Instant::now();
    let mut rss = 0u64;
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let text = match read_file(&path) {
            Ok(t) => t,
            // A worker that exited between listing and reading holds no memory.
            Err(ReadError::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        rss += vm_rss(&text, &path)?;
    }
    Ok(Sample {
        working_set: rss,
        limit,
        // The configured limit is the app container's.
        bound: limit.map(|_| Bound {
            level: 0,
            scope: Scope::Own,
            file: "memory.limit",
        }),
        ..Sample::empty(at)
    })
}

/// `VmRSS:     1234 kB` → bytes. Kernel threads have no VmRSS line: 0.
pub fn vm_rss(status: &str, path: &Path) -> Result<u64, ReadError> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb = rest.trim().trim_end_matches("kB").trim();
            return parse_u64(kb, path).map(|kb| kb.saturating_mul(1024));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/fixture")
    }

    #[test]
    fn limits_max_and_the_v1_huge_number_mean_unlimited() {
        assert_eq!(parse_limit("max\n", p()).unwrap(), None);
        assert_eq!(parse_limit("9223372036854771712\n", p()).unwrap(), None);
        assert_eq!(parse_limit("67108864\n", p()).unwrap(), Some(64 << 20));
        assert!(matches!(
            parse_limit("lots", p()),
            Err(ReadError::Garbled { .. })
        ));
        assert!(matches!(
            parse_limit("", p()),
            Err(ReadError::Garbled { .. })
        ));
    }

    #[test]
    fn keyed_files_give_their_value_or_none() {
        let events = "low 0\nhigh 12\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill", p()).unwrap(), Some(1));
        assert_eq!(keyed(events, "oom", p()).unwrap(), Some(2));
        assert_eq!(keyed(events, "nope", p()).unwrap(), None);
        assert!(keyed("oom_kill x\n", "oom_kill", p()).is_err());
        assert!(keyed("oom_kill\n", "oom_kill", p()).is_err());
    }

    #[test]
    fn pressure_lines_parse_as_kernels_write_them() {
        let text = "some avg10=12.50 avg60=3.10 avg300=0.70 total=123456\nfull avg10=8.25 avg60=1.00 avg300=0.20 total=65432\n";
        let psi = parse_pressure(text, p()).unwrap();
        assert_eq!(psi.some_avg10, 12.5);
        assert_eq!(psi.full_avg10, 8.25);
        let some_only = parse_pressure("some avg10=1.00 avg60=0.00 avg300=0.00 total=1\n", p());
        assert_eq!(some_only.unwrap().full_avg10, 0.0);
        assert!(parse_pressure("some avg10=NaN\n", p()).is_err());
        assert!(parse_pressure("", p()).is_err());
        assert!(parse_pressure("full avg10=abc avg60=0\n", p()).is_err());
    }

    #[test]
    fn vm_rss_is_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(vm_rss(status, p()).unwrap(), 9876 * 1024);
        assert_eq!(vm_rss("Name:\tkthreadd\n", p()).unwrap(), 0);
        assert!(vm_rss("VmRSS:\t lots kB\n", p()).is_err());
    }

    /// A cgroup v2 directory of regular files: usage, limits, and 8 MiB of inactive file cache.
    fn v2_dir(dir: &Path, current_mib: u64, max: &str, high: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("memory.current", format!("{}\n", current_mib << 20));
        write("memory.max", format!("{max}\n"));
        write("memory.high", format!("{high}\n"));
        write(
            "memory.stat",
            format!("anon 1\ninactive_file {}\n", 8u64 << 20),
        );
        write(
            "memory.events",
            "low 0\nhigh 5\nmax 0\noom 0\noom_kill 4\noom_group_kill 1\n".into(),
        );
        write(
            "memory.events.local",
            "low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n".into(),
        );
    }

    #[test]
    fn the_tightest_limit_of_the_cgroup_and_its_pod_is_the_one_judged() {
        let root = std::env::temp_dir().join(format!("sidewatch-read-{}", std::process::id()));
        let pod = root.join("pod");
        let app = pod.join("app");
        let up = [(pod.clone(), Scope::Pod)];
        let sample = |files: &mut Files| sample_v2(files, &app, &up).unwrap();
        let mut files = Files::default();

        // The limit on the pod only: the pod's usage against it.
        v2_dir(&pod, 58, &(64u64 << 20).to_string(), "max");
        v2_dir(&app, 40, "max", "max");
        let s = sample(&mut files);
        let bound = |level, scope, file| Some(Bound { level, scope, file });
        assert_eq!(s.bound, bound(1, Scope::Pod, "memory.max"));
        assert_eq!((s.working_set, s.limit), (50 << 20, Some(64 << 20)));
        // The container's own is tighter: 16 MiB of room against the pod's 96.
        v2_dir(&app, 40, &(48u64 << 20).to_string(), "max");
        v2_dir(&pod, 40, &(128u64 << 20).to_string(), "max");
        let s = sample(&mut files);
        assert_eq!(s.bound, bound(0, Scope::Own, "memory.max"));
        assert_eq!((s.working_set, s.limit), (32 << 20, Some(48 << 20)));
        // The pod's memory.high (memory QoS) below both: it binds.
        v2_dir(
            &pod,
            40,
            &(128u64 << 20).to_string(),
            &(40u64 << 20).to_string(),
        );
        let s = sample(&mut files);
        assert_eq!(s.bound, bound(1, Scope::Pod, "memory.high"));
        // Kills are the watched cgroup's; high events its own and the pod's own.
        let oom = OomCounts {
            kills: 4,
            group_kills: 1,
            ooms: 0,
        };
        assert_eq!((s.oom, s.high_events), (Some(oom), Some(7)));
        // No limit anywhere: the container's own working set, unlimited.
        v2_dir(&app, 40, "max", "max");
        v2_dir(&pod, 90, "max", "max");
        let s = sample(&mut files);
        assert_eq!((s.working_set, s.limit, s.bound), (32 << 20, None, None));
        // A pod directory gone is classified, never a panic.
        std::fs::remove_dir_all(&pod).unwrap();
        std::fs::create_dir_all(&app).unwrap();
        v2_dir(&app, 40, "max", "max");
        assert_eq!(
            sample_v2(&mut files, &app, &up).unwrap_err().kind(),
            "missing"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_file_is_classified_missing() {
        let err = read_file(Path::new("/nonexistent/memory.current")).unwrap_err();
        assert_eq!(err.kind(), "missing");
        assert!(err.to_string().contains("/nonexistent/memory.current"));
    }
}
