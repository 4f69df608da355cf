//! Reading the kernel's memory files: the files held open, and pure parsers for each format.
//! Every failure names the file and is classified (`gone`, `missing`, `garbled`, `io`); none
//! panics.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

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
    let mut buf = Vec::new();
    let len =
        crate::util::read_from_start(file, &mut buf, MAX_FILE).map_err(|e| io_error(path, e))?;
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

    #[test]
    fn a_missing_file_is_classified_missing() {
        let err = read_file(Path::new("/nonexistent/memory.current")).unwrap_err();
        assert_eq!(err.kind(), "missing");
        assert!(err.to_string().contains("/nonexistent/memory.current"));
    }
}
