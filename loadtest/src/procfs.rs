//! What `/proc` tells about processes and the machine: CPU time and resident
//! memory of a process tree, the machine's cores and memory. Linux only; the
//! parsers are plain functions over the files' text, tested on their own.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// CPU time of one process from `/proc/PID/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// utime + stime: the process's own threads.
    pub own: u64,
    /// cutime + cstime: its children that have exited and been waited for.
    pub reaped_children: u64,
}

/// The fields of `/proc/PID/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub ppid: u32,
    pub cpu: CpuTicks,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat(text: &str) -> Result<Stat, Error> {
    let bad = |why: &str| Error::Proc(format!("unreadable stat line ({why}): {text:?}"));
    let (head, tail) = text
        .rsplit_once(')')
        .ok_or_else(|| bad("no command name"))?;
    let pid = head
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| bad("no pid"))?;
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15),
    // cutime (16), cstime (17).
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, Error> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<i64>().ok())
            .map(|v| u64::try_from(v).unwrap_or(0))
            .ok_or_else(|| bad(&format!("field {n}")))
    };
    Ok(Stat {
        pid,
        ppid: u32::try_from(field(4)?).map_err(|_| bad("ppid"))?,
        cpu: CpuTicks {
            own: field(14)? + field(15)?,
            reaped_children: field(16)? + field(17)?,
        },
    })
}

/// `VmRSS` of `/proc/PID/status`, in KiB (0 for a kernel thread or zombie,
/// which have none).
pub fn parse_rss_kib(status: &str) -> Result<u64, Error> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib
                .parse()
                .map_err(|_| Error::Proc(format!("unreadable VmRSS line {line:?}")));
        }
    }
    Ok(0)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Proc(format!("{}: {e}", path.display())))
}

/// One process's stat.
pub fn stat(pid: u32) -> Result<Stat, Error> {
    parse_stat(&read(
        &Path::new("/proc").join(pid.to_string()).join("stat"),
    )?)
}

/// One process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> Result<u64, Error> {
    parse_rss_kib(&read(
        &Path::new("/proc").join(pid.to_string()).join("status"),
    )?)
}

/// Every live process's stat, by pid; processes that end while the list is
/// read are left out.
fn all_stats() -> Result<BTreeMap<u32, Stat>, Error> {
    let mut stats = BTreeMap::new();
    let dir = std::fs::read_dir("/proc").map_err(|e| Error::Proc(format!("/proc: {e}")))?;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(entry.path().join("stat"))
            && let Ok(s) = parse_stat(&text)
        {
            stats.insert(pid, s);
        }
    }
    Ok(stats)
}

/// `roots` and all their live descendants, each once.
pub fn tree(roots: &[u32]) -> Result<Vec<u32>, Error> {
    let stats = all_stats()?;
    Ok(descendants(roots, stats.values().map(|s| (s.pid, s.ppid))))
}

/// `roots` and everything below them in a `(pid, ppid)` list, each once, in
/// the order found.
pub fn descendants(roots: &[u32], parents: impl IntoIterator<Item = (u32, u32)>) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out: Vec<u32> = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        if let Some(kids) = children.get(&pid) {
            todo.extend(kids.iter().copied());
        }
    }
    out
}

/// CPU ticks used so far by `roots` and their descendants, the exited and
/// reaped ones included (through their parents' cutime/cstime).
pub fn tree_cpu_ticks(roots: &[u32]) -> Result<u64, Error> {
    let mut total = 0;
    for pid in tree(roots)? {
        // A process that ended since the tree was read adds nothing more.
        if let Ok(s) = stat(pid) {
            total += s.cpu.own + s.cpu.reaped_children;
        }
    }
    Ok(total)
}

/// Resident memory of `roots` and their descendants, KiB.
pub fn tree_rss_kib(roots: &[u32]) -> Result<u64, Error> {
    Ok(tree(roots)?
        .into_iter()
        .filter_map(|pid| rss_kib(pid).ok())
        .sum())
}

/// Clock ticks per second, from `getconf CLK_TCK` (sysconf needs unsafe
/// code here); 100, Linux's value on every common architecture, if
/// `getconf` cannot be run.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The machine a comparison ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical processors in `/proc/cpuinfo`.
    pub cores: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
}

impl Machine {
    /// Reads `/proc/cpuinfo` and `/proc/meminfo`; unknown fields stay empty.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self::parse(&cpuinfo, &meminfo)
    }

    pub fn parse(cpuinfo: &str, meminfo: &str) -> Self {
        let value = |line: &str| line.split_once(':').map(|(_, v)| v.trim().to_owned());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(value)
            .unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(value)
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            cores,
            cpu_model,
            memory_mib,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn stat_lines_parse_around_odd_command_names() {
        let line = "4242 (tokio (worker) 1) S 17 4242 17 0 -1 4194560 100 0 0 0 \
                    250 75 12 3 20 0 9 0 1000 123456 789 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.ppid, 17);
        assert_eq!(s.cpu.own, 325);
        assert_eq!(s.cpu.reaped_children, 15);
        assert!(parse_stat("4242 (x").is_err());
        assert!(parse_stat("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tmeridian\nVmPeak:\t  9000 kB\nVmRSS:\t   67120 kB\nThreads:\t9\n";
        assert_eq!(parse_rss_kib(status).unwrap(), 67_120);
        assert_eq!(parse_rss_kib("Name:\tkthreadd\n").unwrap(), 0);
        assert!(parse_rss_kib("VmRSS:\tlots kB\n").is_err());
    }

    #[test]
    fn descendants_walk_the_whole_tree_once() {
        let parents = [(2, 1), (3, 2), (4, 2), (5, 3), (9, 8), (3, 2)];
        let mut found = descendants(&[2], parents);
        found.sort_unstable();
        assert_eq!(found, vec![2, 3, 4, 5]);
        assert_eq!(descendants(&[7], parents), vec![7]);
    }

    #[test]
    fn machine_facts_come_from_cpuinfo_and_meminfo() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Some CPU @ 2.0GHz\n";
        let meminfo = "MemTotal:       24684000 kB\nMemFree:  1 kB\n";
        let m = Machine::parse(cpuinfo, meminfo);
        assert_eq!(m.cores, 2);
        assert_eq!(m.cpu_model, "Some CPU @ 2.0GHz");
        assert_eq!(m.memory_mib, 24_105);
        assert_eq!(Machine::parse("", ""), Machine::default());
    }
}
