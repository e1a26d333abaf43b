//! Reading `/proc/self/mountinfo`, the kernel's own list of mounts, to find
//! busy mount points and which store a mount belongs to.

use std::path::{Path, PathBuf};

/// Prefix of the source field that syn gives its mounts: `syn:STORE_DIR`.
pub const SOURCE_PREFIX: &str = "syn:";

#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[index + 1] - b'0') * 64
                + (bytes[index + 2] - b'0') * 8
                + (bytes[index + 3] - b'0');
            out.push(value);
            index += 4;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = fields.iter().position(|field| *field == "-")?;
    Some(MountEntry {
        mountpoint: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(separator + 1)?.to_string(),
        source: unescape(fields.get(separator + 2)?),
    })
}

pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// The mount at `path`, if something is mounted exactly there.
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|entry| entry.mountpoint == path))
}

/// The store directory of a syn mount.
pub fn store_of(entry: &MountEntry) -> Option<PathBuf> {
    if !entry.fstype.starts_with("fuse") {
        return None;
    }
    entry.source.strip_prefix(SOURCE_PREFIX).map(PathBuf::from)
}

/// Returns the mount points of `store_dir` that the kernel lists. With no
/// daemon running, each is a stale mount left by a daemon that was killed.
pub fn mounts_of_store(store_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let canonical = |path: &Path| path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let expected = canonical(store_dir);
    Ok(mounts()?
        .into_iter()
        .filter(|entry| store_of(entry).is_some_and(|store| canonical(&store) == expected))
        .map(|entry| entry.mountpoint)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_line_with_escaped_space_parses() {
        let line = "52 29 0:47 / /tmp/my\\040mount rw,nosuid - fuse.syn syn:/home/a/store\\040x rw,user_id=0";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.mountpoint, PathBuf::from("/tmp/my mount"));
        assert_eq!(entry.fstype, "fuse.syn");
        assert_eq!(store_of(&entry), Some(PathBuf::from("/home/a/store x")));
    }

    #[test]
    fn line_with_optional_fields_parses() {
        let line = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue";
        let entry = parse_line(line).unwrap();
        assert_eq!(entry.fstype, "ext3");
        assert_eq!(store_of(&entry), None);
    }
}
