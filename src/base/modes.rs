//! The Git modes a tree entry keeps, and how a requested POSIX mode maps onto them.

/// Git mode of a regular file.
pub const MODE_FILE: u32 = 0o100644;
/// Git mode of an executable file.
pub const MODE_EXECUTABLE: u32 = 0o100755;
/// Git mode of a directory.
pub const MODE_DIR: u32 = 0o040000;
/// Git mode of a symbolic link.
pub const MODE_SYMLINK: u32 = 0o120000;
/// The file-type bits of a POSIX mode.
const TYPE_BITS: u32 = 0o170000;

/// The Git mode kept for a file or symlink created with `mode` (none: a plain file). Only
/// the type and the executable bit survive, as in Git.
pub fn normalize_file_mode(mode: Option<u32>) -> u32 {
    match mode {
        Some(m) if m & TYPE_BITS == MODE_SYMLINK => MODE_SYMLINK,
        Some(m) if m & 0o111 != 0 => MODE_EXECUTABLE,
        _ => MODE_FILE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_type_and_executable_bit_survive() {
        assert_eq!(normalize_file_mode(None), MODE_FILE);
        assert_eq!(normalize_file_mode(Some(0o100600)), MODE_FILE);
        assert_eq!(normalize_file_mode(Some(0o100700)), MODE_EXECUTABLE);
        assert_eq!(normalize_file_mode(Some(0o120777)), MODE_SYMLINK);
    }
}
