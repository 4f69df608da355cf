//! One `Sample` per look at the app's memory: a cgroup v1 or v2 directory and the levels above
//! it up to the pod's, or the app's processes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::read::{
    keyed, parse_limit, parse_pressure, parse_u64, read_file, vm_rss, Files, Pressure, ReadError,
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
