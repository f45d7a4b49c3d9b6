//! Who may call `cairn serve`: named bearer tokens from a file (or a systemd credential), and
//! the check of a request's `Authorization` header against them.
//!
//! The file holds one token per line, `NAME TOKEN` (or a bare `TOKEN`, named `default`); `#` at the
//! start of a line or after a space starts a comment (a `#` inside a token is part of it). A token is at least [`MIN_LEN`] characters, so that guessing one over the
//! network is hopeless, and the file may be readable by its owner only, as ssh demands of its
//! keys. Only BLAKE3 hashes of the tokens are kept in memory, and a presented token is hashed
//! and compared with every one of them in constant time (`blake3::Hash`'s equality), so neither
//! the timing of a refusal nor a memory dump gives a token away.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// The fewest characters a token may have (`openssl rand -hex 32` gives 64).
pub const MIN_LEN: usize = 24;

/// The systemd credential `cairn serve` reads when no token file is given
/// (`LoadCredential=cairn-tokens:/etc/cairn/tokens`).
pub const CREDENTIAL: &str = "cairn-tokens";

pub struct Tokens {
    entries: Vec<(String, blake3::Hash)>,
}

impl Tokens {
    /// Reads the token file: `--token-file`, else the config's `token_file`, else the systemd
    /// credential. Without any, the server does not start: no request would be allowed.
    pub fn load(flag: Option<&Path>, configured: Option<&Path>) -> Result<(Tokens, PathBuf)> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(CREDENTIAL))
            .filter(|p| p.exists());
        let Some(path) = flag.or(configured).map(Path::to_path_buf).or(credential) else {
            bail!(
                "no token file: give --token-file FILE (lines of `NAME TOKEN`; `openssl rand -hex 32` makes a token), \
                 `token_file` in the config's [serve] table, or a systemd credential named {CREDENTIAL}"
            );
        };
        let metadata =
            std::fs::metadata(&path).with_context(|| format!("reading the token file {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        if metadata.permissions().mode() & 0o077 != 0 {
            bail!(
                "the token file {} may be read by other users: `chmod 600 {}` (the tokens open the API)",
                path.display(),
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("reading the token file {}", path.display()))?;
        let tokens = Tokens::parse(&text).with_context(|| format!("in the token file {}", path.display()))?;
        Ok((tokens, path))
    }

    pub fn parse(text: &str) -> Result<Tokens> {
        let mut entries: Vec<(String, blake3::Hash)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = uncommented(line).trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, token) = match words.as_slice() {
                [token] => ("default", *token),
                [name, token] => (*name, *token),
                _ => bail!("line {}: give `NAME TOKEN` (two words)", number + 1),
            };
            let name_ok = name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
            if !name_ok {
                bail!("line {}: a token's name is letters, digits, `-`, `_`, `.` or `@`, at most 64", number + 1);
            }
            if token.chars().count() < MIN_LEN {
                bail!(
                    "line {}: the token of {name} is shorter than {MIN_LEN} characters: `openssl rand -hex 32` makes one",
                    number + 1
                );
            }
            let hash = blake3::hash(token.as_bytes());
            if entries.iter().any(|(n, h)| n == name || *h == hash) {
                bail!("line {}: the name {name} or its token is given twice", number + 1);
            }
            entries.push((name.to_string(), hash));
        }
        if entries.is_empty() {
            bail!("it holds no token");
        }
        Ok(Tokens { entries })
    }

    /// The name of the token that an `Authorization` header carries, and how: `Bearer TOKEN`,
    /// or `Basic` with the token as the password (any user name), which a browser asks for by
    /// itself and then sends with every request to the server, wherever the request comes from.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Option<(&str, Scheme)> {
        let header = std::str::from_utf8(authorization?).ok()?.trim();
        let (scheme, value) = header.split_once(' ')?;
        let (token, scheme): (Vec<u8>, Scheme) = if scheme.eq_ignore_ascii_case("bearer") {
            (value.trim().as_bytes().to_vec(), Scheme::Bearer)
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = cairn::base64::decode(value.trim())?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            (decoded[colon + 1..].to_vec(), Scheme::Basic)
        } else {
            return None;
        };
        let presented = blake3::hash(&token);
        // Every entry is compared, each in constant time: which one matched, if any, takes the
        // same time to find.
        let mut found = None;
        for (name, hash) in &self.entries {
            if *hash == presented {
                found = Some(name.as_str());
            }
        }
        found.map(|name| (name, scheme))
    }
}

/// How a request gave its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// A browser's login: good for reading only. A page elsewhere can make the browser send it
    /// (a form posted to the server), so nothing that changes anything accepts it.
    Basic,
}

/// `line` up to its comment: a `#` that starts the line or follows whitespace. A `#` inside a
/// word belongs to it, so a token with `#` in it (as a password generator makes) is read whole,
/// never cut to a shorter, weaker prefix.
fn uncommented(line: &str) -> &str {
    let starts = line
        .char_indices()
        .find(|&(at, c)| c == '#' && line[..at].chars().next_back().map_or(true, char::is_whitespace));
    starts.map_or(line, |(at, _)| &line[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn names_the_caller_of_a_bearer_or_basic_token_and_no_one_else() {
        let tokens = Tokens::parse(&format!("# who may call\nplatform {TOKEN}\nops {TOKEN}x # a second\n")).unwrap();
        assert_eq!(tokens.caller(Some(format!("Bearer {TOKEN}").as_bytes())), Some(("platform", Scheme::Bearer)));
        assert_eq!(tokens.caller(Some(format!("bearer {TOKEN}x").as_bytes())), Some(("ops", Scheme::Bearer)));
        // "anyone:<TOKEN>" in base64, as a browser sends it.
        let basic = format!("Basic {}", cairn::base64::encode(format!("anyone:{TOKEN}").as_bytes()));
        assert_eq!(tokens.caller(Some(basic.as_bytes())), Some(("platform", Scheme::Basic)));
        for wrong in ["", "Bearer", "Bearer ", "Bearer 0123456789abcdef0123456789abcdeF", "Token x", "Basic !!!"] {
            assert_eq!(tokens.caller(Some(wrong.as_bytes())), None, "{wrong:?}");
        }
        assert_eq!(tokens.caller(None), None);
        assert_eq!(tokens.caller(Some(b"Bearer \xff\xfe")), None);
    }

    /// A `#` inside a token is part of it: the whole token opens the API, its prefix does not.
    #[test]
    fn a_hash_inside_a_token_is_part_of_it() {
        let with_hash = format!("{TOKEN}#tail");
        let tokens = Tokens::parse(&format!(
            "# who may call
ops {with_hash} # a comment
"
        ))
        .unwrap();
        assert_eq!(tokens.caller(Some(format!("Bearer {with_hash}").as_bytes())), Some(("ops", Scheme::Bearer)));
        assert_eq!(tokens.caller(Some(format!("Bearer {TOKEN}").as_bytes())), None);
    }

    #[test]
    fn refuses_short_duplicate_or_missing_tokens() {
        assert!(Tokens::parse("").is_err());
        assert!(Tokens::parse("# only a comment\n").is_err());
        assert!(Tokens::parse("short").is_err());
        assert!(Tokens::parse(&format!("a {TOKEN}\nb {TOKEN}")).is_err());
        assert!(Tokens::parse(&format!("a {TOKEN}\na {TOKEN}x")).is_err());
        assert!(Tokens::parse(&format!("a b {TOKEN}")).is_err());
        assert!(Tokens::parse(&format!("na/me {TOKEN}")).is_err());
        let default = Tokens::parse(TOKEN).unwrap();
        assert_eq!(default.caller(Some(format!("Bearer {TOKEN}").as_bytes())).map(|(name, _)| name), Some("default"));
    }
}
