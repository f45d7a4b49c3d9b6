//! A snapshot's tree as a tar stream (`cairn dump --archive tar`): the portable export, which
//! any `tar` reads on a machine without cairn. POSIX pax format (ustar headers, with a pax
//! extended header wherever ustar cannot say it exactly: a long or non-ASCII name or link
//! target, a size of 8 GiB or more, ids past ustar's range, a time with nanoseconds). Files are
//! streamed chunk by chunk, each verified; memory holds one chunk. Sockets cannot be archived
//! and are skipped (counted). Extended attributes and ACLs go in `SCHILY.xattr.` records, as GNU
//! tar and star write them. A file with other names (hard links) is archived once, at its first
//! name; its other names are link entries to it, as `tar` writes them. Names are bytes as
//! stored: one that is not UTF-8 goes in its pax record as it is, as GNU tar writes one, and
//! `tar x` writes it back byte for byte (POSIX's `hdrcharset=BINARY` before it would say so too,
//! but GNU tar warns at every such record that it ignores the keyword, and reads the bytes the
//! same without it).

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::format::tree::{Content, Node};
use crate::id::Id;
use crate::repository::Indexed;

const BLOCK: usize = 512;

/// What went into the archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub entries: u64,
    pub bytes: u64,
    pub sockets_skipped: u64,
    /// Extended attributes whose name holds a `=` or a newline, which a pax record cannot carry.
    pub xattrs_skipped: u64,
}

/// Writes every entry below the tree `root` to `out` as a tar stream, paths relative to it
/// (`prefix/…` when `prefix` is not empty), then the end-of-archive blocks.
pub fn tar(repo: &Indexed, root: &Id, prefix: &[u8], out: &mut dyn Write) -> Result<Exported> {
    let mut done = Exported::default();
    let mut failed: Option<Error> = None;
    let start = prefix.iter().position(|&b| b != b'/').unwrap_or(prefix.len());
    let end = prefix.iter().rposition(|&b| b != b'/').map_or(start, |at| at + 1);
    let base = &prefix[start..end];
    let mut linked = HashMap::new();
    crate::walk::each_entry(repo, root, Vec::new(), |node, path| {
        let name = match base.is_empty() {
            true => path.strip_prefix(b"/").unwrap_or(path).to_vec(),
            false => [base, path].concat(),
        };
        match entry(repo, node, &name, &mut linked, out, &mut done) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.write_all(&[0u8; 2 * BLOCK]).map_err(|e| Error::io("standard output", e))?;
    out.flush().map_err(|e| Error::io("standard output", e))?;
    Ok(done)
}

/// The first name archived of each file with several names, by device and inode.
type Linked = HashMap<(u64, u64), Vec<u8>>;

fn entry(
    repo: &Indexed,
    node: &Node,
    name: &[u8],
    linked: &mut Linked,
    out: &mut dyn Write,
    done: &mut Exported,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("standard output", e);
    let other_name = match (&node.content, node.meta.nlink > 1) {
        (Content::File { .. }, true) => {
            let first = linked.entry((node.meta.dev, node.meta.ino)).or_insert_with(|| name.to_vec());
            (first[..] != *name).then(|| first.clone())
        }
        _ => None,
    };
    let (kind, link, size, device): (u8, &[u8], u64, u64) = match (&node.content, &other_name) {
        (_, Some(first)) => (b'1', first, 0, 0),
        (Content::File { .. }, None) => (b'0', b"", node.meta.size, 0),
        (Content::Dir { .. }, _) => (b'5', b"", 0, 0),
        (Content::Symlink { target }, _) => (b'2', target, 0, 0),
        (Content::Fifo, _) => (b'6', b"", 0, 0),
        (Content::CharDevice { rdev }, _) => (b'3', b"", 0, *rdev),
        (Content::BlockDevice { rdev }, _) => (b'4', b"", 0, *rdev),
        (Content::Socket, _) => {
            done.sockets_skipped += 1;
            return Ok(());
        }
    };
    let mut name = name.to_vec();
    if kind == b'5' {
        name.push(b'/');
    }
    let meta = &node.meta;
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if name.len() > 100 || !name.is_ascii() {
        pax.push((b"path".to_vec(), name.clone()));
    }
    if link.len() > 100 || !link.is_ascii() {
        pax.push((b"linkpath".to_vec(), link.to_vec()));
    }
    if size > 0o77_777_777_777 {
        pax.push((b"size".to_vec(), size.to_string().into_bytes()));
    }
    for (key, id) in [("uid", meta.uid), ("gid", meta.gid)] {
        if u64::from(id) > 0o7_777_777 {
            pax.push((key.as_bytes().to_vec(), id.to_string().into_bytes()));
        }
    }
    if meta.mtime_nsec != 0 || !(0..=0o77_777_777_777).contains(&meta.mtime_sec) {
        pax.push((b"mtime".to_vec(), pax_time(meta.mtime_sec, meta.mtime_nsec).into_bytes()));
    }
    // Extended attributes and ACLs as GNU tar and star write them (`tar x --xattrs` restores them),
    // on the entry that holds the content: a link entry's are its first name's. A record's key
    // ends at its first `=`, so a name holding one cannot be said and is counted as left out.
    if other_name.is_none() {
        for xattr in &node.xattrs {
            match xattr.name.contains(&b'=') || xattr.name.contains(&b'\n') {
                true => done.xattrs_skipped += 1,
                false => pax.push(([&b"SCHILY.xattr."[..], &xattr.name].concat(), xattr.value.clone())),
            }
        }
    }
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &pax {
            records.extend(pax_record(key, value));
        }
        let header = header(b"PaxHeaders/entry", b'x', b"", records.len() as u64, meta, 0);
        out.write_all(&header).map_err(io)?;
        out.write_all(&records).map_err(io)?;
        out.write_all(&vec![0u8; padding(records.len() as u64)]).map_err(io)?;
    }
    out.write_all(&header(&ustar_name(&name), kind, &ustar_name(link), size, meta, device)).map_err(io)?;
    if let (Content::File { chunks }, None) = (&node.content, &other_name) {
        let mut written = 0u64;
        for chunk in repo.chunk_list(chunks)?.iter() {
            let bytes = repo.read_blob(chunk)?;
            written += bytes.len() as u64;
            // Never more than the header announced: bytes past it would be read as headers.
            if written > size {
                return Err(Error::corrupt(
                    name_text(&name),
                    format!("holds more than the {size} bytes its entry says"),
                ));
            }
            out.write_all(&bytes).map_err(io)?;
        }
        if written != size {
            return Err(Error::corrupt(
                name_text(&name),
                format!("holds {written} bytes, not the {size} its entry says"),
            ));
        }
        out.write_all(&vec![0u8; padding(size)]).map_err(io)?;
        done.bytes += size;
    }
    done.entries += 1;
    Ok(())
}

/// What a ustar field of 100 bytes holds of a longer name (a reader that ignores the pax record
/// still puts the entry inside the archive's directory): the whole components at its end that
/// fit, else the end of its last component without leading dots; never absolute, never `..`.
fn ustar_name(name: &[u8]) -> Vec<u8> {
    if name.len() <= 100 {
        return name.to_vec();
    }
    let body = name.strip_suffix(b"/").unwrap_or(name);
    let fits = (0..body.len()).find(|&at| body[at] == b'/' && body.len() - at - 1 <= 99);
    let mut short = match fits {
        Some(at) => body[at + 1..].to_vec(),
        None => {
            let tail = &body[body.len() - 99..];
            let tail = &tail[tail.iter().position(|&b| b != b'.' && b != b'/').unwrap_or(tail.len())..];
            tail.to_vec()
        }
    };
    if body.len() < name.len() {
        short.push(b'/');
    }
    short
}

/// A pax time: seconds and nanoseconds as a decimal, negative ones too (-4.877 s is `-4.877`,
/// not the `-5` and `.123` it is stored as).
fn pax_time(sec: i64, nsec: u32) -> String {
    match (sec < 0, nsec) {
        (true, n) if n > 0 => format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - n),
        _ => format!("{sec}.{nsec:09}"),
    }
}

fn name_text(name: &[u8]) -> String {
    crate::names::shown(name).into_owned()
}

/// Zeros after `len` bytes of content, to the next block.
fn padding(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// `LEN key=value\n`, where LEN counts the whole record, its own digits included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// A ustar header block.
fn header(
    name: &[u8],
    kind: u8,
    link: &[u8],
    size: u64,
    meta: &crate::format::tree::Metadata,
    device: u64,
) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    let put = |block: &mut [u8; BLOCK], at: usize, bytes: &[u8]| block[at..at + bytes.len()].copy_from_slice(bytes);
    // An octal field of `width` bytes: digits, then NUL; a value too large is clipped to the
    // largest (the pax header carries the exact one).
    let octal = |block: &mut [u8; BLOCK], at: usize, width: usize, value: u64| {
        let max = 8u64.pow(width as u32 - 1) - 1;
        let text = format!("{:0w$o}", value.min(max), w = width - 1);
        block[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    put(&mut block, 0, &name[..name.len().min(100)]);
    octal(&mut block, 100, 8, u64::from(meta.mode & 0o7777));
    octal(&mut block, 108, 8, u64::from(meta.uid));
    octal(&mut block, 116, 8, u64::from(meta.gid));
    octal(&mut block, 124, 12, size);
    octal(&mut block, 136, 12, meta.mtime_sec.max(0) as u64);
    block[156] = kind;
    put(&mut block, 157, &link[..link.len().min(100)]);
    put(&mut block, 257, b"ustar\x0000");
    let (major, minor) = (libc::major(device), libc::minor(device));
    if device != 0 {
        octal(&mut block, 329, 8, u64::from(major));
        octal(&mut block, 337, 8, u64::from(minor));
    }
    // The checksum: the bytes' sum with the field itself as spaces.
    put(&mut block, 148, b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    put(&mut block, 148, format!("{sum:06o}\0 ").as_bytes());
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record(b"path", b"a"), b"9 path=a\n");
        let long = vec![b'x'; 95];
        let record = pax_record(b"path", &long);
        assert_eq!(record.len().to_string(), String::from_utf8_lossy(&record[..3]));
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }

    #[test]
    fn long_names_keep_whole_components_and_never_climb_out() {
        let component = "c".repeat(40);
        let long = format!("{component}/{component}/{component}/file").into_bytes();
        let short = ustar_name(&long);
        assert!(short.len() <= 100 && !short.starts_with(b"/"));
        assert_eq!(short, format!("{component}/{component}/file").into_bytes());
        let dots = format!("{}{}", "x".repeat(60), ".".repeat(60)).into_bytes();
        let cut = ustar_name(&dots);
        assert!(!cut.starts_with(b".") && cut.len() <= 100, "{}", String::from_utf8_lossy(&cut));
        assert_eq!(ustar_name(b"short/name"), b"short/name");
        assert_eq!(pax_time(5, 123), "5.000000123");
        assert_eq!(pax_time(-5, 123_000_000), "-4.877000000");
        assert_eq!(pax_time(-5, 0), "-5.000000000");
    }

    #[test]
    fn a_header_checks_its_sum() {
        let meta = crate::format::tree::Metadata { mode: 0o644, mtime_sec: 1_700_000_000, ..Default::default() };
        let block = header(b"a.txt", b'0', b"", 5, &meta, 0);
        let field = std::str::from_utf8(&block[148..154]).unwrap();
        let mut blank = block;
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(&block[257..263], b"ustar\0");
    }
}
