//! The command line: clap definitions, repository selection, and one module per command. Errors
//! here are `anyhow` with context; the library's own errors already name what went wrong.

#[macro_use]
pub mod output;

mod check;
mod config;
mod diff;
mod drill;
mod dump;
mod filter;
mod find;
mod forget;
mod format;
mod init;
mod key;
mod log;
mod ls;
mod mount;
mod password;
mod repair;
mod restore;
mod run;
mod serve;
pub mod signals;
mod snapshot;
mod snapshots;
mod stats;
mod status;
mod sync;
mod tag;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use cairn::backend::ahead::ListedAhead;
use cairn::format::config::Config;
use cairn::repository::{default_location, Location, Passphrase, Repository};

/// Exit code for a snapshot that was stored but could not read every source entry.
pub const EXIT_INCOMPLETE: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "Deduplicating, SQLite-aware snapshots of volume trees", long_about = None)]
pub struct Cli {
    /// Repository: a directory or an object-store URL (else CAIRN_REPO, else
    /// $XDG_DATA_HOME/cairn/repo, created on first snapshot)
    // CAIRN_REPO is read after parsing, not by clap: clap would show `--repo` as demanded in
    // the usage line of every error while the variable is set.
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    repo: Option<PathBuf>,

    /// Print only errors and warnings: no progress bar, no summary
    #[arg(long, short, global = true, help_heading = GLOBAL)]
    quiet: bool,

    /// Print results as JSON on stdout
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,

    /// Read the repository password from the first line of this file (beats every CAIRN_PASSWORD* variable)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", conflicts_with = "password_command")]
    password_file: Option<PathBuf>,

    /// Run this shell command and read the repository password from its output (beats every
    /// CAIRN_PASSWORD* variable)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "COMMAND")]
    password_command: Option<String>,

    /// How long to wait for another cairn's conflicting repository lock (a prune, say)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DURATION", default_value = "10m", value_parser = cairn::clock::parse_duration)]
    lock_wait: std::time::Duration,

    /// Where copies of an object-store repository's index, snapshot and tree files are kept, so
    /// that the next `ls` or restore need not fetch them again (default:
    /// CAIRN_CACHE_DIR, else $XDG_CACHE_HOME/cairn, or ~/.cache/cairn)
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    cache_dir: Option<PathBuf>,

    /// Keep no cache: fetch every file from the object store (beats CAIRN_CACHE_DIR)
    #[arg(long, global = true, help_heading = GLOBAL)]
    no_cache: bool,

    /// Fail where a command would create the repository (`snapshot` into a location without
    /// one): what `cairn run` gives its steps, having created or found the repository itself
    #[arg(long, global = true, hide = true)]
    no_create: bool,

    #[command(subcommand)]
    command: Command,
}

/// The heading of the options every command takes, listed apart from a command's own.
const GLOBAL: &str = "Global options";

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new repository (encrypted unless --encryption none)
    Init(init::Args),
    /// Manage the passphrases of an encrypted repository
    #[command(subcommand)]
    Key(key::Args),
    /// Take a snapshot of files and directories
    Snapshot(snapshot::Args),
    /// List snapshots, oldest first; the filters select which
    Snapshots(snapshots::Args),
    /// List the contents of a snapshot
    Ls(ls::Args),
    /// What changed from one snapshot to another: entries added, removed, modified, and those
    /// whose metadata alone changed, with sizes
    Diff(diff::Args),
    /// Which snapshots hold paths a pattern matches, newest first, with sizes and times
    Find(find::Args),
    /// Write a file of a snapshot to standard output
    Dump(dump::Args),
    /// Browse the snapshots as a read-only file system (FUSE) at an empty directory, until
    /// Ctrl-C or `fusermount -u`
    Mount(mount::Args),
    /// Restore a snapshot, or parts of it, into a directory
    Restore(restore::Args),
    /// Verify the repository: structure, and with --read-data every blob's content
    Check(check::Args),
    /// Restore a snapshot into a scratch directory and verify everything: a restore drill
    Drill(drill::Args),
    /// Per source: newest snapshot, last good drill, last failure; non-zero exit on problems
    Status(status::Args),
    /// The audit log: every run, its outcome and its first error; filters select which
    Log(log::Args),
    /// Remove snapshots by id or by a --keep-* retention policy
    Forget(forget::ForgetArgs),
    /// Add or remove tags on existing snapshots (`--add protected` keeps one from every policy)
    Tag(tag::Args),
    /// Delete data no snapshot needs any more (mark and sweep, repack)
    Prune(forget::PruneOnlyArgs),
    /// Rebuild repository files from what survives (`repair index`)
    #[command(subcommand)]
    Repair(repair::Args),
    /// Storage per source: stored, unique, shared bytes, each source's share and its price
    Stats(stats::Args),
    /// Copy snapshots and the data they need to another repository (offsite), incrementally
    Sync(sync::Args),
    /// The scheduled cycle from a config file: snapshot every source, retention, prune, offsite
    /// sync, due drills
    Run(run::Args),
    /// The HTTP API and status page over a config's repository and sources (README: "The API
    /// and status page")
    Serve(serve::Args),
    /// Print an example config, or check one
    #[command(subcommand)]
    Config(config::Args),
}

#[derive(Clone)]
pub struct Context {
    pub repo_path: PathBuf,
    pub quiet: bool,
    pub json: bool,
    pub lock_wait: std::time::Duration,
    /// Whether [`Context::open_or_create`] may create the repository (not in a step of `cairn run`).
    pub create: bool,
    /// Where [`Context::open_cached`] keeps its copies; `None` for no cache.
    pub cache: Option<PathBuf>,
    /// `--repo` was given on the command line: it beats a config file's `repository`.
    pub repo_flag: bool,
    /// Where the repository password comes from.
    pub password: password::Source,
}

impl Context {
    /// The `--repo` value as given: a directory path or an object-store URL.
    pub fn location(&self) -> String {
        self.repo_path.to_string_lossy().into_owned()
    }

    pub fn open(&self) -> Result<Repository> {
        Ok(self.open_at(&self.location())?)
    }

    /// Opens the repository at `location` (an encrypted one with this command's password).
    pub fn open_at(&self, location: &str) -> cairn::error::Result<Repository> {
        self.opening(location, |passphrase| Repository::open(&location.into(), passphrase))
    }

    /// Runs `open` with this command's password, and says if the repository turns out not to
    /// need one ([`Context::warn_unused_password`]). A wrong one from `CAIRN_PASSWORD` is tried
    /// again whole: until this version the variable was taken whole, so a repository made with
    /// one that ended in a newline has a key only the whole value opens. Opened so, the command
    /// says how to make its first line open it.
    pub fn opening(
        &self,
        location: &str,
        open: impl Fn(Passphrase<'_>) -> cairn::error::Result<Repository>,
    ) -> cairn::error::Result<Repository> {
        let ask = self.password.asker(location);
        let repo = match (open(Passphrase::Ask(&ask)), self.password.whole_variable()) {
            (Err(cairn::error::Error::WrongPassword(why)), Some(whole)) => {
                let opened = open(Passphrase::Given(&whole)).map_err(|_| cairn::error::Error::WrongPassword(why))?;
                errln!(
                    "warning: {location} opened with CAIRN_PASSWORD whole, line end included, as cairn read it before; \
                     cairn now takes its first line, as of every password source: set that as the password with \
                     `CAIRN_NEW_PASSWORD=... cairn key passwd`"
                );
                opened
            }
            (opened, _) => opened?,
        };
        self.warn_unused_password(&repo, location);
        Ok(repo)
    }

    /// Says, once per command, that a password was given for a repository that is not
    /// encrypted: whoever set it believes the backups are encrypted. Only a warning: a cron job
    /// that sets one password for all its repositories must go on working.
    fn warn_unused_password(&self, repo: &Repository, location: &str) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if repo.keys().is_none() && self.password.given() && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            errln!(
                "warning: {location} is NOT encrypted: the password given ({}) was not used; its data is stored \
                 as is (`cairn sync` to a new repository with the password gives an encrypted copy)",
                self.password.describe()
            );
        }
    }

    /// [`Context::open`] for a command that reads: an object store's immutable files are read
    /// through the local cache. (`check` verifies the store and reads none of it; commands that
    /// delete do not rely on it.)
    pub fn open_cached(&self) -> Result<Repository> {
        let mut repo = self.open()?;
        self.cache_for(&mut repo);
        Ok(repo)
    }

    /// The repository of a command that reads a config file (run, serve, status, stats): `--repo`
    /// on the command line, else the config's `repository`, else CAIRN_REPO or the default.
    /// One rule for all of them, so that status and stats judge the repository run writes to
    /// (README's examples export CAIRN_REPO and give --config too).
    pub fn location_with(&self, configured: Option<&str>) -> String {
        match (self.repo_flag, configured) {
            (false, Some(configured)) => {
                self.warn_variable_unused(configured);
                configured.to_string()
            }
            _ => self.location(),
        }
    }

    /// Says, once per command, that CAIRN_REPO names another repository than the config's,
    /// which is used: whoever exported it may believe it is the one judged or written.
    fn warn_variable_unused(&self, configured: &str) {
        static SAID: std::sync::Once = std::sync::Once::new();
        let Some(variable) = std::env::var_os("CAIRN_REPO").filter(|v| !v.is_empty()) else { return };
        let same = |a: &std::path::Path, b: &str| match cairn::backend::object::is_url(b) {
            true => a.as_os_str() == b,
            false => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
        };
        if !same(std::path::Path::new(&variable), configured) {
            SAID.call_once(|| {
                errln!(
                    "warning: CAIRN_REPO names {}, but the config's repository {configured} is used (give --repo to \
                     choose another)",
                    std::path::Path::new(&variable).display()
                )
            });
        }
    }

    /// [`Context::open_cached`] for a command that only reads, with its [`read_lock`] taken
    /// once the key has opened the repository (the lock's failure is the caller's to report),
    /// and then the listings of the snapshots and the index, which it reads next
    /// ([`cairn::backend::ahead`]). Not while the key is derived, though that would hide the
    /// lock's round trips: a wrong password must be said at once, with nothing written, and
    /// the lock writes a file and waits out --lock-wait behind a prune's.
    pub fn open_cached_read_locked(
        &self,
        command: &str,
    ) -> Result<(Repository, Result<Option<cairn::repository::lock::Lock>>)> {
        let location = self.location();
        let ahead = std::sync::Arc::new(ListedAhead::new(Location::parse(&location).backend()?));
        let mut repo = self.opening(&location, |passphrase| {
            Repository::open_on(ahead.clone(), &Location::parse(&location), passphrase)
        })?;
        let lock = std::thread::scope(|scope| {
            read_lock_then(ahead.clone(), command, self.lock_wait, &|| {
                scope.spawn(|| {
                    ahead.list_ahead(&[
                        cairn::repository::FileKind::Snapshot.dir(),
                        cairn::repository::FileKind::Index.dir(),
                    ])
                });
            })
        });
        self.cache_for(&mut repo);
        Ok((repo, lock))
    }

    /// Gives a child cairn (a step of `cairn run`, the run `cairn serve` starts) this one's
    /// choice of the global options it would otherwise make anew, from the environment alone:
    /// the lock wait and the cache. A flag beats its variable here (`--no-cache`, `--cache-dir`
    /// over CAIRN_CACHE_DIR), so it must in the child too, which sees only the variable. The
    /// password source is [`password::Source::pass_to`]'s; `--repo` and `--json` the caller's.
    pub fn pass_to(&self, command: &mut std::process::Command) {
        command.arg("--lock-wait").arg(format!("{}s", self.lock_wait.as_secs()));
        match &self.cache {
            None => command.arg("--no-cache"),
            // Absolute: a child may run elsewhere (hooks run in the config's directory).
            Some(dir) => command.arg("--cache-dir").arg(std::path::absolute(dir).unwrap_or_else(|_| dir.clone())),
        };
    }

    /// Makes `repo` read through the cache, if there is one; a cache that cannot be made only
    /// costs requests, and is said so.
    pub fn cache_for(&self, repo: &mut Repository) {
        if let Some(root) = &self.cache {
            if let Err(e) = repo.use_cache(root) {
                errln!("warning: no local cache: {e}");
            }
        }
    }

    /// Opens the repository, creating it first if it does not exist yet (the default local
    /// repository on a fresh machine), unless `--no-create` forbids it.
    pub fn open_or_create(&self) -> Result<Repository> {
        match self.open_at(&self.location()) {
            Err(cairn::error::Error::NotARepository(_)) if !self.create => anyhow::bail!(
                "there is no repository at {}, and a step of `cairn run` (--no-create) creates none: the run found or created it before its first step, so it has been moved or removed since, or its disk unmounted",
                self.repo_path.display()
            ),
            Err(cairn::error::Error::NotARepository(_)) => {}
            opened => return Ok(opened?),
        }
        // Encrypted when there is a password to give it; else plain, and said so.
        let keys = match self.password.read(&self.location())? {
            Some(passphrase) => cairn::repository::NewKeys::New { passphrase },
            None => cairn::repository::NewKeys::None,
        };
        let encrypted = !matches!(keys, cairn::repository::NewKeys::None);
        let repo = Repository::create(&self.location().as_str().into(), Config::new_random(), keys)
            .with_context(|| format!("creating repository {}", self.repo_path.display()))?;
        if !encrypted {
            errln!(
                "warning: created an UNENCRYPTED repository at {} (no password was given: set CAIRN_PASSWORD or --password-file to encrypt new repositories)",
                self.repo_path.display()
            );
        } else if !self.quiet && !self.json {
            errln!("created encrypted repository at {}", self.repo_path.display());
        }
        Ok(repo)
    }
}

/// A shared lock for a command that only reads the repository. Where the repository cannot be
/// written (a full or read-only disk, credentials that may only read), the command goes on
/// without one and says so: on the day of the disaster a restore must not need room on the
/// backup disk. A prune running meanwhile could then make it fail, never give wrong bytes: every
/// blob is verified as it is read.
pub fn read_lock(
    repo: &Repository,
    command: &str,
    wait: std::time::Duration,
) -> Result<Option<cairn::repository::lock::Lock>> {
    read_lock_then(repo.backend_arc(), command, wait, &|| ())
}

/// [`read_lock`] on a repository's backend (taken while the repository is opened), calling
/// `written` once its lock file is written ([`cairn::repository::lock::Lock::acquire_then`]).
fn read_lock_then(
    backend: std::sync::Arc<dyn cairn::backend::Backend>,
    command: &str,
    wait: std::time::Duration,
    written: &dyn Fn(),
) -> Result<Option<cairn::repository::lock::Lock>> {
    use cairn::repository::lock::{Lock, LockKind, Release};
    match Lock::acquire_then(backend, LockKind::Shared, command, wait, Release::Delete, written) {
        Ok(lock) => Ok(Some(lock)),
        Err(cairn::error::Error::Io { path, source }) if cannot_write(&source) => {
            errln!(
                "warning: {command} runs without a lock: the repository cannot be written ({}: {source}); a prune \
                 running meanwhile would make it fail, never give wrong bytes",
                path.display()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an error says the repository cannot be written at all (rather than that writing
/// failed this once).
fn cannot_write(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::PermissionDenied
        || matches!(error.raw_os_error(), Some(libc::EROFS | libc::ENOSPC | libc::EDQUOT))
}

/// The snapshot `spec` picks ([`filter::find`]) and the index, read at once: on an object store
/// each is a listing and a read, two round trips the other need not wait for.
pub fn find_with_index<'r>(
    repo: &'r Repository,
    spec: &str,
    filters: &filter::FilterArgs,
) -> cairn::error::Result<((cairn::id::Id, cairn::format::snapshot::Snapshot), cairn::repository::Indexed<'r>)> {
    std::thread::scope(|scope| {
        let index = scope.spawn(|| repo.load_index());
        let found = filter::find(repo, spec, filters);
        let index = index.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((found?, cairn::repository::Indexed::new(repo, index?)))
    })
}

/// The directory of a local repository at `location`, absolute (none for an object store): what
/// a safety snapshot never enters.
pub fn local_repository(location: &str) -> Vec<PathBuf> {
    Location::parse(location).path().and_then(|path| std::path::absolute(path).ok()).into_iter().collect()
}

/// Prints a warning for every damaged repository file the command skipped; true if any.
/// After a snapshot or a prune: sets the repository's reserve aside, or grows it with the index
/// ([`Repository::keep_reserve`]); warns when its file system has no room for it.
pub fn keep_reserve(repo: &Repository) {
    match repo.keep_reserve() {
        Ok(Some(cairn::repository::reserve::Kept::NoRoom { free, need })) => errln!(
            "warning: the repository's file system has {} free: too little to set aside the reserve that lets \
             forget and prune free it once it is full ({} needed, half of it to stay free)",
            format::bytes(free),
            format::bytes(need)
        ),
        Err(e) => errln!("warning: could not set aside the repository's reserve: {e}"),
        Ok(_) => {}
    }
}

pub fn warn_damage(repo: &Repository) -> bool {
    let damage = repo.take_damage();
    for error in &damage {
        errln!("warning: skipped damaged repository file: {error}");
    }
    !damage.is_empty()
}

/// What a warning says of a release marker that a lock's look found forged
/// ([`cairn::repository::lock::Lock::forged_markers`]).
pub fn forged_marker(marker: &str) -> String {
    format!(
        "{marker} does not release the lock file it names: only that lock's holder can write its marker, so it \
         was ignored. Someone who can write locks/ (a host syncing here?) may be compromised, or an older cairn \
         wrote it (its markers reveal no secret)"
    )
}

/// Warns of the forged release markers that taking `lock` found.
pub fn warn_forged_markers(lock: &cairn::repository::lock::Lock) {
    for marker in lock.forged_markers() {
        errln!("warning: {}", forged_marker(&marker));
    }
}

/// The result of an audited verb; that its records could not be written is said loudly, and
/// never replaces the verb's own outcome.
pub fn audited<T>(audited: cairn::audit::Audited<T>) -> cairn::error::Result<T> {
    if let Some(e) = &audited.audit_error {
        errln!("warning: could not write the audit record of this run: {e}");
    }
    audited.result
}

/// Writes a run's audit record. Failing to write it is reported loudly but does not replace the
/// run's own outcome (a committed snapshot stays committed; a run's own error stays the error).
/// [`cairn::audit::Run::begin`]: the start record, which makes a run that is killed visible.
pub fn begin_audit(audit: &cairn::audit::Run, repo: &Repository) {
    if let Err(e) = audit.begin(repo) {
        errln!("warning: could not write the start record of this run: {e}");
    }
}

pub fn finish_audit(audit: cairn::audit::Run, repo: &Repository, outcome: cairn::format::audit::Outcome) {
    if let Err(e) = audit.finish(repo, outcome) {
        errln!("warning: could not write the audit record of this run: {e}");
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let password = password::Source::chosen(cli.password_file.as_deref(), cli.password_command.as_deref())?;
    // A flag beats its variable; an empty variable counts as unset.
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let repo_flag = cli.repo.is_some();
    let repo = cli.repo.or_else(|| from_env("CAIRN_REPO"));
    let repo_path = match repo {
        Some(path) => path,
        None => default_location()
            .context("no --repo given, CAIRN_REPO unset, and no home directory for the default repository")?,
    };
    let cache = match cli.no_cache {
        true => None,
        false => {
            cli.cache_dir.or_else(|| from_env("CAIRN_CACHE_DIR")).or_else(cairn::repository::cache::Cache::default_root)
        }
    };
    let context = Context {
        repo_path,
        quiet: cli.quiet,
        json: cli.json,
        lock_wait: cli.lock_wait,
        create: !cli.no_create,
        cache,
        repo_flag,
        password,
    };
    match cli.command {
        Command::Init(args) => init::run(&context, args),
        Command::Key(args) => key::run(&context, args),
        Command::Snapshot(args) => snapshot::run(&context, args),
        Command::Snapshots(args) => snapshots::run(&context, args),
        Command::Ls(args) => ls::run(&context, args),
        Command::Diff(args) => diff::run(&context, args),
        Command::Find(args) => find::run(&context, args),
        Command::Dump(args) => dump::run(&context, args),
        Command::Mount(args) => mount::run(&context, args),
        Command::Restore(args) => restore::run(&context, args),
        Command::Check(args) => check::run(&context, args),
        Command::Drill(args) => drill::run(&context, args),
        Command::Status(args) => status::run(&context, args),
        Command::Log(args) => log::run(&context, args),
        Command::Forget(args) => forget::run_forget(&context, args),
        Command::Tag(args) => tag::run(&context, args),
        Command::Prune(args) => forget::run_prune(&context, args),
        Command::Repair(args) => repair::run(&context, args),
        Command::Stats(args) => stats::run(&context, args),
        Command::Sync(args) => sync::run(&context, args),
        Command::Run(args) => run::run(&context, args),
        Command::Serve(args) => serve::run(&context, args),
        Command::Config(args) => config::run(&context, args),
    }
}
