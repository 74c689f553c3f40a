//! A small tmpfs for disk-full tests: mounted on a temporary directory (root only), filled by a
//! filler file, unmounted when dropped.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted on a temporary directory; unmounted when dropped.
pub struct Tmpfs {
    mount: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `bytes` of tmpfs, or says why it cannot.
    pub fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let uid = Command::new("id").arg("-u").output().map_err(|e| format!("cannot run id: {e}"))?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not running as root, so tmpfs cannot be mounted".into());
        }
        let mount = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "ferry-faults"])
            .arg(mount.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { mount })
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Writes a filler file until the file system is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(n) if n == chunk => {}
                    Ok(_) => break,
                    Err(e) if e.kind() == ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        path
    }

    /// Free bytes, as `df` sees them.
    pub fn free(&self) -> String {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(self.path()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("?").trim().to_string())
            .unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.path()).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}
