//! What sidewatch reads from the kernel: cgroup memory files, PSI lines, /proc/PID/status,
//! /proc/net/tcp and /proc/net/snmp.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use procfs::net::{Snmp, TcpNetEntries};
use procfs::{ExplicitSystemInfo, FromBufRead, FromBufReadSI};
use sidewatch::memory::read::{keyed, parse_limit, parse_pressure, vm_rss};

fuzz_target!(|text: &str| {
    let path = Path::new("/fuzz");
    let _ = parse_limit(text, path);
    let _ = keyed(text, "oom_kill", path);
    let _ = keyed(text, "inactive_file", path);
    let _ = parse_pressure(text, path);
    let _ = vm_rss(text, path);
    let info = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: true,
    };
    let _ = TcpNetEntries::from_buf_read(Cursor::new(text), &info);
    let _ = Snmp::from_buf_read(Cursor::new(text));
});
