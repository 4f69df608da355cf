//! Small helpers several parts share, with nothing of sidewatch's own in them.

use std::path::Path;
use std::time::Instant;

/// Sleeps until `at`, for ever when `None`: a `select!` branch for an optional deadline.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads a whole file the user named, refusing one larger than `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB", max / 1024),
        ));
    }
    Ok(bytes)
}

/// A file the kernel generates afresh at each read from its start (`/proc/net/*`, a seq_file),
/// kept open: read again with `pread` at offset 0, it costs no path walk, open or close. A read
/// that fails lets it go, and the next one opens it again.
pub struct HeldFile {
    path: &'static str,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
}

impl HeldFile {
    pub fn new(path: &'static str) -> Self {
        HeldFile {
            path,
            file: None,
            buf: Vec::new(),
        }
    }

    /// The whole file as it is now.
    pub fn read(&mut self) -> std::io::Result<&[u8]> {
        let file = match self.file.take() {
            Some(file) => file,
            None => std::fs::File::open(self.path)?,
        };
        let len = read_from_start(&file, &mut self.buf, u64::MAX)?;
        self.file = Some(file);
        Ok(&self.buf[..len])
    }
}

/// Reads `file` from offset 0 with `pread` into `buf` (grown as needed, up to about `max`
/// bytes), and says how many bytes it holds: a kernel file read so is generated afresh.
pub fn read_from_start(
    file: &std::fs::File,
    buf: &mut Vec<u8>,
    max: u64,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    buf.resize(buf.len().max(4096), 0);
    let mut len = 0;
    loop {
        if len == buf.len() {
            if len as u64 >= max {
                break;
            }
            buf.resize(len * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }

    #[test]
    fn a_held_file_is_read_whole_each_time_and_opened_again_after_a_failure() {
        let dir = std::env::temp_dir().join(format!("sidewatch-held-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path: &'static str =
            Box::leak(dir.join("f").to_str().unwrap().to_owned().into_boxed_str());
        let mut held = HeldFile::new(path);
        assert!(held.read().is_err(), "not there yet");
        std::fs::write(path, "a".repeat(5000)).unwrap();
        assert_eq!(
            held.read().unwrap(),
            "a".repeat(5000).as_bytes(),
            "past one buffer"
        );
        std::fs::write(path, "bc").unwrap();
        assert_eq!(
            held.read().unwrap(),
            b"bc",
            "shorter now: read from the start to the end"
        );
        let mut snmp = HeldFile::new("/proc/net/snmp");
        let first = snmp.read().unwrap().to_vec();
        assert!(String::from_utf8_lossy(&first).contains("Tcp: "));
        assert!(!snmp.read().unwrap().is_empty(), "generated again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
