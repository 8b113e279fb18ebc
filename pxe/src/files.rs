//! Where the iPXE binaries come from: checking and populating the TFTP root.

use std::path::{Path, PathBuf};

use crate::boot::BootFiles;
use crate::error::PxeError;

/// Where Debian's `ipxe` package installs its binaries.
pub const DEBIAN_IPXE_DIR: &str = "/usr/lib/ipxe";

/// Result of [`check_tftp_root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCheck {
    /// Optional binaries that are missing (arm64); boot of that arch will fail.
    pub warnings: Vec<String>,
}

/// Fails when the BIOS or x86-64 UEFI iPXE binary is missing; warns for arm64.
pub fn check_tftp_root(root: &Path, files: &BootFiles) -> Result<RootCheck, PxeError> {
    let missing: Vec<String> = [&files.bios, &files.uefi_x64]
        .into_iter()
        .filter(|f| !root.join(f.as_str()).is_file())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(PxeError::MissingBootFiles {
            root: root.to_path_buf(),
            missing,
        });
    }
    let mut warnings = Vec::new();
    if !root.join(&files.uefi_arm64).is_file() {
        warnings.push(format!(
            "{} missing in {}: arm64 UEFI machines cannot PXE-boot (build iPXE for arm64 or copy it there)",
            files.uefi_arm64,
            root.display()
        ));
    }
    Ok(RootCheck { warnings })
}

/// Copies the iPXE binaries named in `files` (plus `ipxe.efi` and `snponly.efi`) from
/// `source` (usually [`DEBIAN_IPXE_DIR`]) into `root`, creating it. Files already present
/// are replaced atomically. Returns the files copied.
pub fn populate_tftp_root(
    root: &Path,
    source: &Path,
    files: &BootFiles,
) -> Result<Vec<PathBuf>, PxeError> {
    let io = |context: String| move |source| PxeError::Io { context, source };
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let mut names = vec![
        files.bios.clone(),
        files.uefi_x64.clone(),
        files.uefi_arm64.clone(),
        "ipxe.efi".to_string(),
        "snponly.efi".to_string(),
        "undionly.kpxe".to_string(),
    ];
    names.sort();
    names.dedup();
    let mut copied = Vec::new();
    for name in names {
        let src = source.join(&name);
        if !src.is_file() {
            continue;
        }
        let dst = root.join(&name);
        let tmp = root.join(format!(".{name}.tmp"));
        std::fs::copy(&src, &tmp).map_err(io(format!("copying {}", src.display())))?;
        std::fs::rename(&tmp, &dst).map_err(io(format!("renaming into {}", dst.display())))?;
        copied.push(dst);
    }
    check_tftp_root(root, files)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_and_populate() {
        let src = tempfile::tempdir().expect("tmp");
        let root = tempfile::tempdir().expect("tmp");
        let files = BootFiles::default();
        let err = check_tftp_root(root.path(), &files).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("undionly.kpxe") && msg.contains("`ipxe`"),
            "{msg}"
        );
        assert!(populate_tftp_root(root.path(), src.path(), &files).is_err());
        std::fs::write(src.path().join("undionly.kpxe"), b"bios").expect("w");
        std::fs::write(src.path().join("snponly.efi"), b"efi").expect("w");
        let copied = populate_tftp_root(root.path(), src.path(), &files).expect("populate");
        assert_eq!(copied.len(), 2);
        let check = check_tftp_root(root.path(), &files).expect("ok");
        assert_eq!(check.warnings.len(), 1);
    }
}
