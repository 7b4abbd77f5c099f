//! The trigger file that makes a JVM start its attach listener on SIGQUIT: `.attach_pid<pid>`
//! in its working directory, else in its `/tmp`.
//!
//! Both directories belong to the target, which may have planted a symlink at that name to a
//! file of the host; created by path as root, the host's file would be truncated and given to
//! the target's user. So the file is made only as a new entry (`O_CREAT | O_EXCL |
//! O_NOFOLLOW`) relative to a held directory, only where the JVM's user could make it itself,
//! given to that user with `fchown` on its own descriptor, and removed only while the entry
//! still is the file that leakhound made: when the handshake ends, or when leakhound exits
//! while a handshake still waits (its thread is not waited for at the end of a trace).

use std::{
    fs::File,
    io,
    os::unix::fs::fchown,
    sync::{Mutex, Once, PoisonError},
};

use super::JvmIdentity;
use crate::process::root::{EntryName, HeldDir, file_id, fstat};

/// A trigger file that leakhound made; dropping it removes it.
pub struct Trigger {
    key: u64,
}

impl Trigger {
    pub fn create(dir: &HeldDir, name: &EntryName, jvm: JvmIdentity) -> io::Result<Self> {
        let parent = dir.fstat()?;
        if !jvm_may_create_in(parent.st_mode, parent.st_uid, parent.st_gid, jvm) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the JVM's user cannot create files there",
            ));
        }
        let held = dir.try_clone()?;
        let file = dir.create_exclusive(name, 0o600)?;
        // From here on the file is removed when the trigger is dropped, or at exit.
        let trigger = Self::register(Made {
            dir: held,
            name: name.clone(),
            file,
        });
        // The JVM trusts the file only if its owner is the JVM's effective uid or root as its
        // namespace sees it (host root is nobody in another user namespace).
        with_live(trigger.key, |made| {
            fchown(&made.file, Some(jvm.euid), Some(jvm.egid))
        })
        .map(|()| trigger)
    }

    fn register(made: Made) -> Self {
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: the handler is an extern "C" fn without arguments that never unwinds.
            if unsafe { libc::atexit(remove_at_exit) } != 0 {
                log::debug!("cannot register the removal of attach triggers at exit");
            }
        });
        let mut live = live();
        let key = live.next_key;
        live.next_key += 1;
        live.made.push((key, made));
        Self { key }
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        remove_live_where(|key| key == self.key);
    }
}

/// Runs `f` on a live trigger.
fn with_live(key: u64, f: impl FnOnce(&Made) -> io::Result<()>) -> io::Result<()> {
    let live = live();
    match live.made.iter().find(|(k, _)| *k == key) {
        Some((_, made)) => f(made),
        None => Err(io::Error::other("the trigger was removed at exit")),
    }
}

/// What is needed to remove a trigger: the directory it was made in, its name there, and the
/// file itself, to tell whether the name still is that file.
struct Made {
    dir: HeldDir,
    name: EntryName,
    file: File,
}

impl Made {
    /// Removes the entry if it is still the file made here (same device and inode). The target
    /// may rename that file away and put another entry under the name between the check and
    /// the unlink; the entry removed is then one that the target itself put in that directory,
    /// never a file elsewhere, and only the name goes: unlinkat never follows a link.
    fn remove(&self) {
        let ours = fstat(&self.file).map(|stat| file_id(&stat));
        let there = self.dir.stat_entry(&self.name).map(|stat| file_id(&stat));
        match (ours, there) {
            (Ok(ours), Ok(there)) if ours == there => {
                if let Err(err) = self.dir.unlink_entry(&self.name) {
                    log::warn!(
                        "cannot remove the attach trigger {}: {err}",
                        self.dir.display(&self.name).display()
                    );
                }
            }
            _ => log::debug!(
                "{} is no longer the trigger leakhound made; left alone",
                self.dir.display(&self.name).display()
            ),
        }
    }
}

/// Triggers that exist now. The handshake may run on a thread that the end of the trace does
/// not wait for (a JVM that never opens its socket keeps it waiting up to its deadline), so
/// leakhound's exit removes what such a thread could not.
struct Live {
    next_key: u64,
    made: Vec<(u64, Made)>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    next_key: 0,
    made: Vec::new(),
});

/// A panic elsewhere cannot leave the list half-changed: a push or a removal is one step.
fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the live triggers whose key `which` picks out of the list, then removes them: each
/// is removed once, by whoever takes it.
fn remove_live_where(which: impl Fn(u64) -> bool) {
    let taken: Vec<Made> = {
        let mut live = live();
        let (taken, kept) = std::mem::take(&mut live.made)
            .into_iter()
            .partition(|(key, _)| which(*key));
        live.made = kept;
        taken.into_iter().map(|(_, made)| made).collect()
    };
    for made in taken {
        made.remove();
    }
}

/// At exit, every trigger still live; their own drops then find nothing to do.
extern "C" fn remove_at_exit() {
    // A panic must not cross into libc's exit.
    let _ = std::panic::catch_unwind(|| remove_live_where(|_| true));
}

/// Whether the JVM's user could create a file in a directory, by the directory's mode bits as
/// the kernel reads them (the owner's bits for the owner, else the group's for the group,
/// else the others'; supplementary groups and ACLs are not seen, which only refuses more).
/// Elsewhere, the trigger would hand that user a file of its own in a directory that it
/// cannot write, so none is made.
fn jvm_may_create_in(mode: libc::mode_t, uid: u32, gid: u32, jvm: JvmIdentity) -> bool {
    if jvm.euid == 0 {
        return true;
    }
    let write_and_search = 0o3;
    let bits = if uid == jvm.euid {
        mode >> 6
    } else if gid == jvm.egid {
        mode >> 3
    } else {
        mode
    };
    bits & write_and_search == write_and_search
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::symlink, path::PathBuf};

    use super::*;
    use crate::process::root::TargetRoot;

    const JVM: JvmIdentity = JvmIdentity {
        nspid: 1,
        euid: 1000,
        egid: 100,
        catches_quit: true,
    };

    #[test]
    fn only_where_the_jvm_could_write() {
        let dir = libc::S_IFDIR;
        // /tmp: everyone may write (sticky).
        assert!(jvm_may_create_in(dir | 0o1777, 0, 0, JVM));
        // Its own directory.
        assert!(jvm_may_create_in(dir | 0o700, 1000, 0, JVM));
        // Its group's, writable by the group.
        assert!(jvm_may_create_in(dir | 0o770, 0, 100, JVM));
        // Root's directory, or another user's.
        assert!(!jvm_may_create_in(dir | 0o755, 0, 0, JVM));
        assert!(!jvm_may_create_in(dir | 0o755, 2000, 100, JVM));
        // The owner's bits count for the owner, even when others may write.
        assert!(!jvm_may_create_in(dir | 0o577, 1000, 100, JVM));
        // Write without search is no use.
        assert!(!jvm_may_create_in(dir | 0o222, 1000, 100, JVM));
        let root_jvm = JvmIdentity { euid: 0, ..JVM };
        assert!(jvm_may_create_in(dir | 0o755, 0, 0, root_jvm));
    }

    /// A directory of the test's own (as root's JVM: the test need not run as root).
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leakhound-trigger-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tmp")).unwrap();
        dir
    }

    fn me() -> JvmIdentity {
        // SAFETY: geteuid and getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        JvmIdentity { euid, egid, ..JVM }
    }

    #[test]
    fn made_new_and_removed_on_drop() {
        let base = scratch("made");
        let root = TargetRoot::at(&base).unwrap();
        let tmp = root.hold_dir(std::path::Path::new("/tmp")).unwrap();
        let name = EntryName::new(".attach_pid1").unwrap();
        let trigger = Trigger::create(&tmp, &name, me()).unwrap();
        let made = fs::symlink_metadata(base.join("tmp/.attach_pid1")).unwrap();
        assert!(made.is_file());
        drop(trigger);
        assert!(!base.join("tmp/.attach_pid1").exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_planted_link_is_never_followed() {
        let base = scratch("link");
        let secret = base.join("secret");
        fs::write(&secret, "host file\n").unwrap();
        symlink(&secret, base.join("tmp/.attach_pid1")).unwrap();
        symlink(base.join("missing"), base.join("tmp/.attach_pid2")).unwrap();
        let root = TargetRoot::at(&base).unwrap();
        let tmp = root.hold_dir(std::path::Path::new("/tmp")).unwrap();
        for name in [".attach_pid1", ".attach_pid2"] {
            let err = Trigger::create(&tmp, &EntryName::new(name).unwrap(), me())
                .err()
                .expect("a planted link is refused");
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        }
        assert_eq!(fs::read_to_string(&secret).unwrap(), "host file\n");
        assert!(
            !base.join("missing").exists(),
            "a dangling link is not created through"
        );
        assert!(
            fs::symlink_metadata(base.join("tmp/.attach_pid1"))
                .unwrap()
                .is_symlink()
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn live_triggers_are_removed_at_exit() {
        let base = scratch("exit");
        let root = TargetRoot::at(&base).unwrap();
        let tmp = root.hold_dir(std::path::Path::new("/tmp")).unwrap();
        let name = EntryName::new(".attach_pid7").unwrap();
        let trigger = Trigger::create(&tmp, &name, me()).unwrap();
        assert!(base.join("tmp/.attach_pid7").exists());
        // What the exit handler does, while a handshake on another thread still waits (for
        // this trigger only: other tests run beside this one).
        remove_live_where(|key| key == trigger.key);
        assert!(!base.join("tmp/.attach_pid7").exists());
        // A new file under the name is not the trigger's to remove.
        fs::write(base.join("tmp/.attach_pid7"), "the target's\n").unwrap();
        drop(trigger);
        assert!(base.join("tmp/.attach_pid7").exists());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_file_put_in_its_place_is_left_alone() {
        let base = scratch("swap");
        let root = TargetRoot::at(&base).unwrap();
        let tmp = root.hold_dir(std::path::Path::new("/tmp")).unwrap();
        let name = EntryName::new(".attach_pid1").unwrap();
        let trigger = Trigger::create(&tmp, &name, me()).unwrap();
        // The target renames the trigger away and puts its own file under the name.
        fs::rename(base.join("tmp/.attach_pid1"), base.join("tmp/moved")).unwrap();
        fs::write(base.join("tmp/.attach_pid1"), "the target's\n").unwrap();
        drop(trigger);
        assert_eq!(
            fs::read_to_string(base.join("tmp/.attach_pid1")).unwrap(),
            "the target's\n"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
