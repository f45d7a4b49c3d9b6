//! Long work of `cairn serve` (a backup, a restore, a run of the cycle): each call answers at
//! once with a job id, and the job runs on a thread of its own when nothing it conflicts with is
//! running or queued before it. A job claims the sources it touches; a run of the whole cycle
//! claims everything (its prune takes the repository's exclusive lock). So the server never runs
//! two conflicting jobs at once, and jobs of different sources (two backups) run side by side;
//! the repository's own locks still keep out every other cairn on the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;

/// Finished jobs kept for `GET /api/v1/jobs/{id}`; the oldest go first.
const KEPT: usize = 256;
/// Jobs queued or running at most (each waits on a thread of its own): more are refused (429).
pub const MAX_WAITING: usize = 64;

/// What a job may not share with another job that runs at the same time.
#[derive(Debug, Clone)]
pub enum Claim {
    Sources(BTreeSet<String>),
    Everything,
}

impl Claim {
    fn conflicts(&self, other: &Claim) -> bool {
        match (self, other) {
            (Claim::Sources(a), Claim::Sources(b)) => !a.is_disjoint(b),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
}

impl State {
    /// Queued or running: not ended.
    pub fn is_active(self) -> bool {
        matches!(self, State::Queued | State::Running)
    }
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum NotStarted {
    /// [`MAX_WAITING`] jobs are queued or running already.
    Busy(usize),
    /// No thread could be started for it.
    Thread(std::io::Error),
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotStarted::Busy(n) => write!(f, "{n} jobs are queued or running already: try again when some have ended"),
            NotStarted::Thread(e) => write!(f, "no thread could be started for the job: {e}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: String,
    /// The name of the token that asked for it.
    pub caller: String,
    pub state: State,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub progress: Progress,
    /// What the job produced (the manifests of a backup, the safety snapshot of a restore).
    pub result: serde_json::Value,
    pub error: Option<String>,
    #[serde(skip)]
    claim: Option<Claim>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// Steps done and to do (a backup: one per source).
    pub done: u64,
    pub total: u64,
    /// What it is doing now.
    pub current: Option<String>,
}

/// How a job's work reports its progress.
pub struct Handle {
    jobs: Arc<Jobs>,
    id: u64,
}

impl Handle {
    pub fn progress(&self, done: u64, current: Option<String>) {
        self.jobs.update(self.id, |job| {
            job.progress.done = done;
            job.progress.current = current;
        });
    }
}

/// A job's outcome: its result, or why it failed with what it produced until then.
pub type Outcome = Result<serde_json::Value, (String, serde_json::Value)>;

#[derive(Default)]
pub struct Jobs {
    state: Mutex<BTreeMap<u64, Job>>,
    changed: Condvar,
}

impl Jobs {
    /// Queues `work` and returns the job at once; the work runs on its own thread when nothing
    /// it conflicts with is running or queued ahead of it.
    pub fn submit(
        self: &Arc<Self>,
        kind: &str,
        caller: &str,
        claim: Claim,
        total: u64,
        work: impl FnOnce(&Handle) -> Outcome + Send + 'static,
    ) -> Result<Job, NotStarted> {
        let job = {
            let mut jobs = self.state.lock().expect("poisoned");
            let waiting = jobs.values().filter(|job| job.state.is_active()).count();
            if waiting >= MAX_WAITING {
                return Err(NotStarted::Busy(waiting));
            }
            let id = jobs.keys().next_back().map_or(1, |last| last + 1);
            let job = Job {
                id,
                kind: kind.to_string(),
                caller: caller.to_string(),
                state: State::Queued,
                created_ms: cairn::clock::now_ms(),
                started_ms: None,
                ended_ms: None,
                progress: Progress { total, ..Progress::default() },
                result: serde_json::Value::Null,
                error: None,
                claim: Some(claim),
            };
            jobs.insert(id, job.clone());
            forget_old(&mut jobs);
            job
        };
        let jobs = Arc::clone(self);
        let id = job.id;
        let spawned = std::thread::Builder::new().name(format!("job {id}")).spawn(move || {
            jobs.wait_turn(id);
            let handle = Handle { jobs: Arc::clone(&jobs), id };
            // A job that panics ends as failed, and gives its claim back.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&handle))).unwrap_or_else(|_| {
                    Err(("the job stopped on an internal error (a panic)".into(), serde_json::Value::Null))
                });
            jobs.update(id, |job| {
                job.ended_ms = Some(cairn::clock::now_ms());
                job.progress.current = None;
                job.claim = None;
                match outcome {
                    Ok(result) => {
                        job.state = State::Done;
                        job.progress.done = job.progress.total;
                        job.result = result;
                    }
                    Err((error, result)) => {
                        job.state = State::Failed;
                        job.error = Some(error);
                        job.result = result;
                    }
                }
            });
        });
        if let Err(e) = spawned {
            self.update(id, |job| {
                job.state = State::Failed;
                job.claim = None;
                job.error = Some(format!("could not start a thread for it: {e}"));
            });
            return Err(NotStarted::Thread(e));
        }
        Ok(job)
    }

    /// Blocks until no running job, and no job queued before this one, conflicts with it; then
    /// marks it running.
    fn wait_turn(&self, id: u64) {
        let mut jobs = self.state.lock().expect("poisoned");
        loop {
            let mine = jobs[&id].claim.clone().expect("a queued job has its claim");
            let blocked = jobs.values().any(|other| {
                let ahead = other.state == State::Running || (other.state == State::Queued && other.id < id);
                other.id != id && ahead && other.claim.as_ref().is_some_and(|claim| claim.conflicts(&mine))
            });
            if !blocked {
                let job = jobs.get_mut(&id).expect("listed");
                job.state = State::Running;
                job.started_ms = Some(cairn::clock::now_ms());
                return;
            }
            jobs = self.changed.wait(jobs).expect("poisoned");
        }
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Job)) {
        let mut jobs = self.state.lock().expect("poisoned");
        if let Some(job) = jobs.get_mut(&id) {
            change(job);
        }
        drop(jobs);
        self.changed.notify_all();
    }

    pub fn get(&self, id: u64) -> Option<Job> {
        self.state.lock().expect("poisoned").get(&id).cloned()
    }

    /// Every job kept, newest first, without their results (`get` gives one's).
    pub fn list(&self) -> Vec<Job> {
        let jobs = self.state.lock().expect("poisoned");
        jobs.values().rev().map(|job| Job { result: serde_json::Value::Null, ..job.clone() }).collect()
    }

    /// Whether a job of `kind` is queued or running.
    pub fn active(&self, kind: &str) -> bool {
        self.state.lock().expect("poisoned").values().any(|job| job.kind == kind && job.state.is_active())
    }

    /// Blocks until the job has ended; `None` if there is no such job.
    pub fn wait(&self, id: u64) -> Option<Job> {
        let mut jobs = self.state.lock().expect("poisoned");
        loop {
            let job = jobs.get(&id)?;
            if matches!(job.state, State::Done | State::Failed) {
                return Some(job.clone());
            }
            jobs = self.changed.wait(jobs).expect("poisoned");
        }
    }
}

/// Drops the oldest finished jobs beyond [`KEPT`].
fn forget_old(jobs: &mut BTreeMap<u64, Job>) {
    let finished: Vec<u64> =
        jobs.values().filter(|job| matches!(job.state, State::Done | State::Failed)).map(|job| job.id).collect();
    for id in finished.iter().take(finished.len().saturating_sub(KEPT)) {
        jobs.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    fn sources(names: &[&str]) -> Claim {
        Claim::Sources(names.iter().map(|n| n.to_string()).collect())
    }

    /// Runs jobs that each note how many run at once, and returns the most that did.
    fn most_at_once(claims: Vec<Claim>) -> usize {
        let jobs = Arc::new(Jobs::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let ids: Vec<u64> = claims
            .into_iter()
            .map(|claim| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                jobs.submit("test", "t", claim, 1, move |_| {
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    running.fetch_sub(1, SeqCst);
                    Ok(serde_json::Value::Null)
                })
                .unwrap()
                .id
            })
            .collect();
        for id in ids {
            assert_eq!(jobs.wait(id).unwrap().state, State::Done);
        }
        most.load(SeqCst)
    }

    #[test]
    fn jobs_of_different_sources_run_together_and_conflicting_ones_never() {
        assert_eq!(most_at_once(vec![sources(&["a"]), sources(&["b"])]), 2);
        assert_eq!(most_at_once(vec![sources(&["a"]), sources(&["a", "b"]), sources(&["b"])]), 1);
        assert_eq!(most_at_once(vec![sources(&["a"]), Claim::Everything, sources(&["b"])]), 1);
    }

    #[test]
    fn more_jobs_than_may_wait_are_refused_until_some_end() {
        let jobs = Arc::new(Jobs::default());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let blocked = |held: Arc<Mutex<std::sync::mpsc::Receiver<()>>>| {
            move |_: &Handle| {
                let _ = held.lock().unwrap().recv();
                Ok(serde_json::Value::Null)
            }
        };
        let ids: Vec<u64> = (0..MAX_WAITING)
            .map(|_| jobs.submit("test", "t", Claim::Everything, 1, blocked(Arc::clone(&held))).unwrap().id)
            .collect();
        assert!(jobs.submit("test", "t", Claim::Everything, 1, blocked(Arc::clone(&held))).is_err());
        for _ in &ids {
            release.send(()).unwrap();
        }
        for id in ids {
            assert_eq!(jobs.wait(id).unwrap().state, State::Done);
        }
        let later = jobs.submit("test", "t", Claim::Everything, 1, |_| Ok(serde_json::Value::Null)).unwrap();
        assert_eq!(jobs.wait(later.id).unwrap().state, State::Done);
    }

    #[test]
    fn a_job_that_panics_fails_and_frees_what_it_claimed() {
        let jobs = Arc::new(Jobs::default());
        let broken = jobs.submit("test", "t", Claim::Everything, 1, |_| panic!("broken")).unwrap();
        assert_eq!(jobs.wait(broken.id).unwrap().state, State::Failed);
        let next = jobs.submit("test", "t", Claim::Everything, 1, |_| Ok(serde_json::Value::Null)).unwrap();
        assert_eq!(jobs.wait(next.id).unwrap().state, State::Done);
        assert!(!jobs.active("test"));
    }

    #[test]
    fn a_failed_job_keeps_its_error_and_what_it_made() {
        let jobs = Arc::new(Jobs::default());
        let job = jobs
            .submit("test", "t", Claim::Everything, 2, |handle| {
                handle.progress(1, Some("second".into()));
                Err(("it broke".into(), serde_json::json!({ "made": 1 })))
            })
            .unwrap();
        let ended = jobs.wait(job.id).unwrap();
        assert_eq!((ended.state, ended.error.as_deref()), (State::Failed, Some("it broke")));
        assert_eq!((ended.progress.done, ended.result["made"].as_u64()), (1, Some(1)));
        assert!(jobs.wait(job.id + 1).is_none());
    }
}
