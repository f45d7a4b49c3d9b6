//! `cairn ls SNAPSHOT [PATH]`: list a snapshot's entries, recursively from PATH.

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::Result;

use super::{format, Context};
use cairn::format::tree::{Content, Node};
use cairn::repository::Indexed;
use cairn::restore::locate;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id, unique id prefix, or `latest` (the newest the filters select; a safety
    /// snapshot of an in-place restore only if they name it: --source pre-restore)
    snapshot: String,
    #[command(flatten)]
    filters: super::filter::FilterArgs,
    /// Path inside the snapshot to list from (as given, or as `ls` shows it, escapes and all)
    #[arg(default_value = "/")]
    path: OsString,
    /// Show type, mode, size and mtime
    #[arg(long, short)]
    long: bool,
}

pub fn run(context: &Context, args: Args) -> Result<ExitCode> {
    let repo = context.open_cached()?;
    let ((id, snapshot), indexed) = super::find_with_index(&repo, &args.snapshot, &args.filters)?;
    super::warn_damage(&repo);
    let located = locate(&indexed, &snapshot, args.path.as_bytes(), &id.short())?;
    let (start, mut prefix) = (located.node, located.meant);
    while prefix.last() == Some(&b'/') {
        prefix.pop();
    }
    if !prefix.is_empty() && !prefix.starts_with(b"/") {
        prefix.insert(0, b'/');
    }
    let lister = Lister { repo: &indexed, json: context.json, long: args.long };
    match start {
        None => lister.walk(&snapshot.tree, prefix)?,
        Some(node) => {
            lister.print(&node, &prefix);
            if let Content::Dir { subtree } = &node.content {
                lister.walk(subtree, prefix)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Lister<'a> {
    repo: &'a Indexed<'a>,
    json: bool,
    long: bool,
}

impl Lister<'_> {
    /// Prints every entry below the tree `id`, until nobody reads the output.
    fn walk(&self, id: &cairn::id::Id, prefix: Vec<u8>) -> Result<()> {
        cairn::walk::each_entry(self.repo, id, prefix, |node, path| {
            if super::output::closed() {
                return ControlFlow::Break(()); // nobody reads the rest
            }
            self.print(node, path);
            ControlFlow::Continue(())
        })?;
        Ok(())
    }

    /// One line: text with names as [`cairn::names::shown`] shows them, or JSON carrying them
    /// losslessly ([`cairn::names::json`]: `path_raw` and `target_raw` where not UTF-8).
    fn print(&self, node: &Node, path: &[u8]) {
        let m = &node.meta;
        if self.json {
            let (text, raw) = cairn::names::json(path);
            let mut entry = serde_json::json!({
                "path": text,
                "type": node.content.type_name(),
                "mode": m.mode,
                "uid": m.uid,
                "gid": m.gid,
                "size": m.size,
                "mtime": m.mtime_sec,
                "mtime_nsec": m.mtime_nsec,
            });
            if let Some(raw) = raw {
                entry["path_raw"] = raw.into();
            }
            if let Content::Symlink { target } = &node.content {
                let (text, raw) = cairn::names::json(target);
                entry["target"] = text.into();
                if let Some(raw) = raw {
                    entry["target_raw"] = raw.into();
                }
            }
            outln!("{entry}");
            return;
        }
        let path = cairn::names::shown(path);
        if self.long {
            let link = match &node.content {
                Content::Symlink { target } => format!(" -> {}", cairn::names::shown(target)),
                _ => String::new(),
            };
            outln!(
                "{:<8} {:04o} {:>5}:{:<5} {:>10}  {}  {path}{link}",
                node.content.type_name(),
                m.mode,
                m.uid,
                m.gid,
                format::bytes(m.size),
                format::utc(m.mtime_sec)
            );
        } else {
            outln!("{path}");
        }
    }
}
