//! The machine cairn runs on: its name, as records and snapshots give it, and whether a process
//! of it is still alive (a lock's or a killed run's holder).

/// The host name, or `localhost` when there is none.
pub fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(0);
    if ok && end > 0 {
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

/// Whether a process with this id exists on this host and has not ended. A process that ended
/// but is not yet reaped (a zombie: a killed run whose parent was killed too waits for an init
/// that may be slow to reap it, or never does in a container) holds nothing and runs nothing.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    let answered = unsafe { libc::kill(pid, 0) };
    let exists = answered == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !ended(pid)
}

/// Whether `/proc` says the process has ended (state `Z` or `X`); `false` where it cannot tell.
fn ended(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) state ...`: the command may hold spaces and parentheses; the state follows
    // the last `)`.
    let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X"))
}

/// What tells one process from another beyond its pid, which a process in a container (a pid
/// namespace) has only there: pid 1 in a container is always alive as the host's init. Written
/// in a run's start record (store-format/audit.md), so that status can tell the run's own process
/// from another of the same number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The inode of the process's pid namespace (`/proc/self/ns/pid`).
    pub pid_namespace: u64,
    /// When it started, in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// The boot it started in (`/proc/sys/kernel/random/boot_id`): ticks count from each boot.
    pub boot: String,
}

/// The inode of the initial pid namespace (the kernel's `PROC_PID_INIT_INO`): a process in it
/// sees every process of the host.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

impl ProcessIdentity {
    /// This process's, or `None` where `/proc` does not say (not Linux).
    pub fn of_self() -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid_namespace: namespace_of("self")?,
            start_ticks: start_ticks_of("self")?,
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string(),
        })
    }

    /// The fields of a start record's details that hold an identity (store-format/audit.md).
    pub const FIELDS: [&'static str; 3] = ["pid_namespace", "pid_start_ticks", "boot_id"];

    /// Writes this identity into a start record's `details`.
    pub fn record_into(&self, details: &mut serde_json::Map<String, serde_json::Value>) {
        let [namespace, ticks, boot] = Self::FIELDS;
        details.insert(namespace.into(), self.pid_namespace.into());
        details.insert(ticks.into(), self.start_ticks.into());
        details.insert(boot.into(), self.boot.clone().into());
    }

    /// The identity a start record's `details` hold, if any (records before it was written hold
    /// none).
    pub fn recorded_in(details: &serde_json::Value) -> Option<ProcessIdentity> {
        let [namespace, ticks, boot] = Self::FIELDS;
        Some(ProcessIdentity {
            pid_namespace: details[namespace].as_u64()?,
            start_ticks: details[ticks].as_u64()?,
            boot: details[boot].as_str()?.to_string(),
        })
    }

    /// Whether the process that was `pid` in its namespace with this identity is alive: `None`
    /// when this process cannot tell (the other is in a pid namespace it cannot see into).
    pub fn alive(&self, pid: u32) -> Option<bool> {
        let here = ProcessIdentity::of_self()?;
        if here.boot != self.boot {
            return Some(false);
        }
        if here.pid_namespace == self.pid_namespace {
            let number = pid.to_string();
            return Some(process_alive(pid as i32) && start_ticks_of(&number) == Some(self.start_ticks));
        }
        if here.pid_namespace != INITIAL_PID_NAMESPACE {
            return None;
        }
        // From the initial namespace every process is in view: look for one that started at
        // that tick, in that namespace, as that pid there.
        let found = std::fs::read_dir("/proc").ok()?.flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.bytes().all(|b| b.is_ascii_digit())
                && start_ticks_of(&name) == Some(self.start_ticks)
                && namespace_of(&name) == Some(self.pid_namespace)
                && innermost_pid(&name) == Some(pid)
                && process_alive(name.parse().unwrap_or(0))
        });
        Some(found)
    }
}

/// The pid namespace inode of `/proc/{process}` (`self` or a number).
fn namespace_of(process: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{process}/ns/pid")).ok()?;
    link.to_str()?.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Field 22 of `/proc/{process}/stat`, the start time in ticks since boot. The command name
/// (field 2) may hold spaces and parentheses: fields are counted after the last `)`.
fn start_ticks_of(process: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// The process's pid in its own (innermost) pid namespace: the last of `NSpid` in its status.
fn innermost_pid(process: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive_and_a_running_process_is() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Ended, not reaped: a zombie until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ended(pid) {
            assert!(std::time::Instant::now() < deadline, "the child never ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn this_process_is_alive_by_its_identity_and_another_start_is_not() {
        let me = ProcessIdentity::of_self().unwrap();
        assert_eq!(me.alive(std::process::id()), Some(true));
        let earlier = ProcessIdentity { start_ticks: me.start_ticks.wrapping_sub(1), ..me.clone() };
        assert_eq!(earlier.alive(std::process::id()), Some(false));
        let rebooted = ProcessIdentity { boot: "another".into(), ..me };
        assert_eq!(rebooted.alive(std::process::id()), Some(false));
    }
}
