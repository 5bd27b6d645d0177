//! Process-level measurement and limits (Linux): peak resident set size from `/proc`, and the
//! address-space cap a child job puts on itself so that a runaway engine fails instead of
//! swapping the machine.

use std::fs;

/// Peak resident set size (`VmHWM`) of process `pid` ("self" for this one), in KiB.
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Bytes this process has handed to `write`-family system calls (`wchar` in `/proc/self/io`):
/// SQLite's WAL appends and checkpoints included, whether or not they have reached the disk yet.
pub fn bytes_written() -> Option<u64> {
    let io = fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("wchar:")).and_then(|rest| rest.trim().parse().ok())
}

/// Caps this process's address space at `bytes` (`RLIMIT_AS`). An allocation past it fails and
/// the process aborts, which the parent reports as "did not finish (memory limit)".
pub fn limit_address_space(bytes: u64) -> Result<(), String> {
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: setrlimit reads a valid, initialized rlimit struct and touches no Rust memory.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if result == 0 {
        Ok(())
    } else {
        Err(format!("setrlimit(RLIMIT_AS, {bytes}) failed: {}", std::io::Error::last_os_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_peak_rss() {
        assert!(peak_rss_kib("self").is_some_and(|kib| kib > 0));
    }
}
