//! The flags of `cairn snapshot` that decide what its walk leaves out beyond `--exclude`
//! (src/source/walk_options.rs says how each behaves), and the reading of `--exclude-file`.
//! `cairn run` passes a source's config keys as these same flags.

use std::path::PathBuf;

use cairn::error::Error;
use cairn::source::exclude;
use cairn::source::walk_options::WalkOptions;

#[derive(clap::Args, Debug)]
pub struct WalkArgs {
    /// Read exclude patterns from FILE, one a line (`#` comments and blank lines skipped), as
    /// `--exclude` takes them (repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Leave out the contents of cache directories, tagged with a CACHEDIR.TAG file that starts
    /// with its signature (the directory and the tag are kept)
    #[arg(long)]
    exclude_caches: bool,
    /// Leave out the contents of directories holding a file of this name (the directory and the
    /// file are kept; repeatable)
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Stay on the file system of each path given: a mount point below one is stored as an
    /// empty directory
    #[arg(long, short = 'x')]
    one_file_system: bool,
}

impl WalkArgs {
    /// Whether any of these flags was given.
    pub fn any(&self) -> bool {
        !self.exclude_files.is_empty()
            || self.exclude_caches
            || !self.exclude_if_present.is_empty()
            || self.one_file_system
    }

    /// The exclude patterns (`excludes`, then those of each `--exclude-file`) and the walk
    /// options, checked: a pattern that can never match, a file that cannot be read or a marker
    /// name that is no file name is an error before anything is written.
    pub fn resolve(&self, excludes: &[String]) -> cairn::error::Result<(Vec<String>, WalkOptions)> {
        exclude::check_patterns(excludes).map_err(Error::Exclude)?;
        let mut patterns = excludes.to_vec();
        for file in &self.exclude_files {
            patterns.extend(exclude::read_file(file).map_err(Error::Exclude)?);
        }
        let walk = WalkOptions {
            one_file_system: self.one_file_system,
            exclude_caches: self.exclude_caches,
            exclude_if_present: self.exclude_if_present.clone(),
        };
        walk.check().map_err(Error::MarkerName)?;
        Ok((patterns, walk))
    }
}
