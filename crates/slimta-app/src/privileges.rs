//! Dropping root after start-up (`process.user`, `process.group`).
//!
//! Why: port 25 needs root (or `CAP_NET_BIND_SERVICE`); nothing after the
//! listeners are bound does, and an MTA parses hostile input all day.
//!
//! Decisions:
//! - **Order** (`build::run`): everything that needs root happens first:
//!   listeners bound (TCP and unix), TLS keys read, spools opened and their
//!   control sockets bound. Then every file and directory under each disk
//!   spool, and each unix listener socket, is given to the target user and
//!   group (so the spool stays writable, including files a root run left
//!   there), then the supplementary groups are set to the target group
//!   alone, then the group id, then the user id (after `setuid` a `setgid`
//!   would no longer be allowed). Only then do queues start delivering (a
//!   pipe relay's program never runs as root) and edges start accepting.
//! - `group` defaults to the user's primary group; `group` without `user`
//!   changes the group only.
//! - A process that is not root but already runs as the configured user
//!   and group goes on (a container started as the mail user). Any other
//!   non-root process refuses to start: running with other privileges
//!   than the configured ones is a broken promise, not a detail.
//! - After the drop, getting root back must be impossible: `setuid(0)` is
//!   tried and must fail, or the daemon stops.
//! - The calls go through the C library, which applies them to every
//!   thread of the process (the runtime's threads already exist).
//! - The walk that gives a spool away runs as root inside directories the
//!   target user may already own (any earlier run gave them), so that user
//!   could swap an entry for a symbolic link or a hard link between a check
//!   and a `chown` (the `chown -R` race) to have root give away, say,
//!   `/etc`. So the walk never goes by path below the spool: every entry is
//!   opened relative to its parent's descriptor with `O_NOFOLLOW` (`O_PATH`,
//!   which also works for sockets and links), checked with `fstat` and
//!   changed through that descriptor (`fchownat(fd, "", AT_EMPTY_PATH)`);
//!   a directory is read through a descriptor opened from that one. A file
//!   with more than one link is not the spool's alone and is left as it is
//!   (with a warning). Entries that already belong to the target are not
//!   changed, so a restart over an already given spool writes nothing.
//! - SIGHUP's certificate reload runs as the user afterwards: a key file
//!   readable only by root can no longer be reloaded (the error is logged
//!   and the old certificate kept), as with any daemon that drops root;
//!   make keys readable by the group.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::chown;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{
    Gid, Group, Uid, User, fchownat, getegid, geteuid, getgid, getuid, setgid, setgroups, setuid,
};

/// Whom to become.
#[derive(Debug, Clone)]
pub struct Target {
    user: Option<(String, Uid)>,
    group: Gid,
}

impl Target {
    /// Who this is, for logs.
    pub fn describe(&self) -> String {
        match &self.user {
            Some((name, uid)) => format!("user {name} (uid {uid}), gid {}", self.group),
            None => format!("gid {}", self.group),
        }
    }
}

/// The user named `name`; the error (without its key) says why not.
fn find_user(name: &str) -> Result<User, String> {
    User::from_name(name)
        .map_err(|e| format!("cannot look up {name:?}: {e}"))?
        .ok_or_else(|| format!("no user named {name:?}"))
}

/// The group named `name`; the error (without its key) says why not.
fn find_group(name: &str) -> Result<Group, String> {
    Group::from_name(name)
        .map_err(|e| format!("cannot look up {name:?}: {e}"))?
        .ok_or_else(|| format!("no group named {name:?}"))
}

/// Looks up the configured user and group. `None` when nothing is to be
/// dropped: none configured, or the process already runs as them.
///
/// # Errors
///
/// An unknown user or group, or a process that is neither root nor
/// already the configured user and group.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Target>, String> {
    let user = user
        .map(find_user)
        .transpose()
        .map_err(|e| format!("process.user: {e}"))?;
    let gid = match group {
        Some(name) => {
            find_group(name)
                .map_err(|e| format!("process.group: {e}"))?
                .gid
        }
        None => match &user {
            Some(u) => u.gid,
            None => return Ok(None),
        },
    };
    let target = Target {
        user: user.map(|u| (u.name, u.uid)),
        group: gid,
    };
    let (euid, egid) = (geteuid(), getegid());
    let already = target.user.as_ref().is_none_or(|(_, uid)| *uid == euid) && gid == egid;
    if already && !euid.is_root() {
        return Ok(None);
    }
    if !euid.is_root() {
        let key = if target.user.is_some() {
            "process.user"
        } else {
            "process.group"
        };
        return Err(format!(
            "{key}: switching to {} needs root, but this process runs as uid {euid}, gid {egid}",
            target.describe()
        ));
    }
    Ok(Some(target))
}

/// The configured user and group names this machine does not know, for
/// `--check-config` (which, unlike the daemon, needs no root).
pub fn unknown_names(user: Option<&str>, group: Option<&str>) -> Vec<crate::ConfigError> {
    let user = user.and_then(|name| find_user(name).err());
    let group = group.and_then(|name| find_group(name).err());
    [("process.user", user), ("process.group", group)]
        .into_iter()
        .filter_map(|(key, error)| Some(crate::ConfigError::new(key, error?)))
        .collect()
}

/// Gives `path` and, for a directory, everything under it to the target.
/// `path` itself may be a symbolic link (a spool moved to another disk:
/// the configuration is root's); links found inside are changed
/// themselves, never what they point to, and nothing below `path` is
/// reached by name (see the module docs).
///
/// # Errors
///
/// The first failing open, `fstat`, `chown` or directory read.
pub fn give(path: &Path, target: &Target) -> io::Result<()> {
    let uid = target.user.as_ref().map(|(_, uid)| *uid);
    chown(path, uid.map(Uid::as_raw), Some(target.group.as_raw()))?;
    if fs::metadata(path)?.is_dir() {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = Dir::open(path, flags, Mode::empty())?;
        give_inside(&mut dir, path, uid, target.group)?;
    }
    Ok(())
}

/// Gives every entry of the open directory `dir` (at `shown`, for
/// warnings) to `uid`/`gid`, descending into subdirectories.
fn give_inside(dir: &mut Dir, shown: &Path, uid: Option<Uid>, gid: Gid) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    for name in names {
        let path_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let entry = openat(dir.as_fd(), name.as_c_str(), path_flags, Mode::empty())?;
        let stat = fstat(&entry)?;
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !is_dir && stat.st_nlink > 1 {
            tracing::warn!(
                path = %shown.join(name_text(&name)).display(),
                links = stat.st_nlink,
                "not giving a file with other links to the mail user"
            );
            continue;
        }
        if !owned_by(&stat, uid, gid) {
            fchownat(&entry, c"", uid, Some(gid), AtFlags::AT_EMPTY_PATH)?;
        }
        if is_dir {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let mut child = Dir::openat(&entry, c".", flags, Mode::empty())?;
            give_inside(&mut child, &shown.join(name_text(&name)), uid, gid)?;
        }
    }
    Ok(())
}

fn owned_by(stat: &FileStat, uid: Option<Uid>, gid: Gid) -> bool {
    uid.is_none_or(|uid| uid.as_raw() == stat.st_uid) && gid.as_raw() == stat.st_gid
}

fn name_text(name: &CString) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

/// Becomes the target: supplementary groups, group id, user id, in that
/// order; then checks that root cannot be regained.
///
/// # Errors
///
/// Any failing call, or a process that could still become root.
pub fn drop_to(target: &Target) -> Result<(), String> {
    setgroups(&[target.group]).map_err(|e| format!("setgroups({}): {e}", target.group))?;
    setgid(target.group).map_err(|e| format!("setgid({}): {e}", target.group))?;
    if let Some((name, uid)) = &target.user {
        setuid(*uid).map_err(|e| format!("setuid({uid}) for {name}: {e}"))?;
    }
    let expected_uid = target.user.as_ref().map_or_else(getuid, |(_, uid)| *uid);
    if getuid() != expected_uid || geteuid() != expected_uid || getgid() != target.group {
        return Err(format!(
            "still running as uid {}/{} gid {} after switching to {}",
            getuid(),
            geteuid(),
            getgid(),
            target.describe()
        ));
    }
    if !expected_uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err("root could be regained after dropping privileges".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_with_their_key() {
        let err = resolve(Some("no-such-user-slimta"), None).unwrap_err();
        assert!(err.starts_with("process.user: no user named"), "{err}");
        let err = resolve(None, Some("no-such-group-slimta")).unwrap_err();
        assert!(err.starts_with("process.group: no group named"), "{err}");
        assert!(resolve(None, None).unwrap().is_none());
    }

    #[test]
    fn give_follows_the_spool_link_but_no_link_inside() {
        use std::os::unix::fs::{MetadataExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir_all(real.join("msg")).unwrap();
        fs::write(real.join("msg").join("m"), "x").unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "not the spool's").unwrap();
        symlink(&outside, real.join("escape")).unwrap();
        // A file with a second link (here: outside the spool) is not the
        // spool's alone: neither name is changed.
        let linked = dir.path().join("linked");
        fs::write(&linked, "also not the spool's").unwrap();
        fs::hard_link(&linked, real.join("msg").join("hardlink")).unwrap();
        let link = dir.path().join("spool");
        symlink(&real, &link).unwrap();
        let nobody = User::from_name("nobody").unwrap().expect("user nobody");
        let target = Target {
            user: Some(("nobody".into(), nobody.uid)),
            group: nobody.gid,
        };
        let result = give(&link, &target);
        if !geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "this test must run as root under CI=true (it gives files away)"
            );
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
            return;
        }
        result.unwrap();
        for path in [&real, &real.join("msg"), &real.join("msg").join("m")] {
            let meta = fs::metadata(path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (nobody.uid.as_raw(), nobody.gid.as_raw()),
                "{}",
                path.display()
            );
        }
        // The link inside changed, what it points to did not.
        assert_eq!(
            fs::symlink_metadata(real.join("escape")).unwrap().uid(),
            nobody.uid.as_raw()
        );
        assert_eq!(fs::metadata(&outside).unwrap().uid(), geteuid().as_raw());
        assert_eq!(fs::metadata(&linked).unwrap().uid(), geteuid().as_raw());
        // Giving an already given spool again changes nothing and works.
        give(&link, &target).unwrap();
    }

    #[test]
    fn the_current_identity_needs_no_drop() {
        let me = User::from_uid(geteuid()).unwrap().unwrap();
        let group = Group::from_gid(getegid()).unwrap().unwrap();
        let target = resolve(Some(&me.name), Some(&group.name)).unwrap();
        // Root keeps a target (the drop to root is harmless); anyone else
        // has nothing to do.
        assert_eq!(target.is_some(), geteuid().is_root());
    }
}
