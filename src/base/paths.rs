//! Repository paths and names: validation of what reaches the store from outside (repository
//! names, paths, object ids, branch names), and the joins and splits every layer makes.
//! Everything is checked before it becomes a backend key or a FUSE name.

/// A name or path that is not acceptable, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

type Result<T> = std::result::Result<T, InvalidName>;

/// Names that cannot be repositories because the browsable view uses them.
const RESERVED_REPOS: [&str; 3] = ["api", "metrics", "healthz"];
/// Longest accepted path, in bytes (PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path segment, in bytes (NAME_MAX).
const MAX_NAME_BYTES: usize = 255;

/// Checks a repository name against `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` and the reserved names.
pub fn validate_repo_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let well_formed = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !well_formed || RESERVED_REPOS.contains(&name) {
        return Err(InvalidName(format!("invalid repository name {name:?}")));
    }
    Ok(())
}

/// Normalises a relative path (`""` is the root) and splits it into segments. Refuses `..`,
/// `.`, empty segments, NUL, absolute paths and over-long names. One trailing `/` is allowed
/// so that directory URLs work.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: &str| Err(InvalidName(format!("invalid path {path:?}: {why}")));
    if trimmed.len() > MAX_PATH_BYTES {
        return bad("too long");
    }
    if trimmed.contains('\0') {
        return bad("contains NUL");
    }
    if trimmed.starts_with('/') {
        return bad("must be relative");
    }
    let segments: Vec<&str> = trimmed.split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return bad("empty segment"),
            "." | ".." => return bad("dot segment"),
            s if s.len() > MAX_NAME_BYTES => return bad("segment too long"),
            _ => {}
        }
    }
    Ok(segments)
}

/// Returns the normalised form of a path (no trailing slash).
pub fn normalize_path(path: &str) -> Result<String> {
    Ok(split_path(path)?.join("/"))
}

/// Checks that `id` looks like an object id: 64 lowercase hex digits.
pub fn validate_object_id(id: &str) -> Result<()> {
    if super::ids::is_object_id(id) {
        Ok(())
    } else {
        Err(InvalidName(format!("invalid object id {id:?}")))
    }
}

/// `name` inside directory `dir` (`""` is the root).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent directory and the last segment of a normalised path (`""` is the root).
pub fn parent_and_name(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Characters escaped in one path segment of a URL: controls, space, the delimiters of
/// URLs and HTML attributes, and `/` itself.
const SEGMENT_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Percent-encodes one path segment (a name, a repository, a ref) for a URL.
pub fn encode_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT_ESCAPES).to_string()
}

/// Percent-encodes each segment of a repository path, keeping the slashes.
pub fn encode_path(path: &str) -> String {
    path.trim_matches('/')
        .split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks a branch name: like a path, but only one segment-safe alphabet.
pub fn validate_branch(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.')
        && !name.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(InvalidName(format!("invalid ref name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_names() {
        assert!(validate_repo_name("default").is_ok());
        assert!(validate_repo_name("a.b-c_d9").is_ok());
        for bad in [
            "",
            "-x",
            ".x",
            "api",
            "metrics",
            "healthz",
            "a/b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_repo_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("a/b/").unwrap(), vec!["a", "b"]);
        for bad in ["/a", "a//b", "a/../b", "..", "a/./b", "a\0b", "//"] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        assert!(split_path(&"a".repeat(256)).is_err());
        assert!(split_path(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn join_and_split_are_inverse() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(parent_and_name("a/b/c"), ("a/b", "c"));
        assert_eq!(parent_and_name("a"), ("", "a"));
    }

    #[test]
    fn urls_escape_each_segment_and_keep_the_slashes() {
        assert_eq!(encode_path("/a b/c#d/"), "a%20b/c%23d");
        assert_eq!(encode_segment("x/y?"), "x%2Fy%3F");
        assert_eq!(encode_path("ünï/[1]"), "%C3%BCn%C3%AF/%5B1%5D");
    }

    proptest! {
        #[test]
        fn accepted_paths_have_only_safe_segments(path in "[a-z./\\x00]{0,20}") {
            if let Ok(segments) = split_path(&path) {
                for s in segments {
                    prop_assert!(!s.is_empty() && s != "." && s != ".." && !s.contains('\0') && !s.contains('/'));
                }
            }
        }
    }

    // Fuzzing of the validators with hostile input (moved from tests/hostile_input.rs, same
    // case counts).

    fn fuzz_config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..ProptestConfig::default()
        }
    }

    /// Path pieces an attacker would combine.
    fn path_atom() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z]{1,8}",
            2 => prop_oneof![
                Just(".."), Just("."), Just(""), Just("/"), Just("//"), Just("\0"), Just("\\"),
                Just("%2e%2e"), Just(".\0."), Just("..\\.."), Just("~"),
            ]
            .prop_map(str::to_string),
            2 => "\\PC{0,6}",
            1 => "[\\x00-\\x7f]{0,6}",
            1 => (250usize..260).prop_map(|n| "n".repeat(n)),
        ]
    }

    fn hostile_path() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::collection::vec(path_atom(), 0..12).prop_map(|v| v.join("/")),
            1 => any::<String>(),
            1 => (4080usize..4110, prop_oneof![Just("a/"), Just("ab/"), Just("../"), Just("a")])
                .prop_map(|(n, unit)| unit.repeat(n / unit.len() + 1)[..n].to_string()),
        ]
    }

    /// CONTRACT §3's rule for repository names, written independently of the validator.
    fn contract_repo_name(name: &str) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            && !["api", "metrics", "healthz"].contains(&name)
    }

    proptest! {
        #![proptest_config(fuzz_config(4000))]

        /// An accepted path has only normal segments, normalises idempotently and, resolved
        /// under a root, never leaves it.
        #[test]
        fn fuzz_path_validation(path in hostile_path()) {
            use std::path::{Component, Path};
            if let Ok(segments) = split_path(&path) {
                // One trailing `/` is allowed (directory URLs), so `/` alone is the root.
                let trimmed = path.strip_suffix('/').unwrap_or(&path);
                prop_assert!(!trimmed.starts_with('/'), "accepted an absolute path {:?}", path);
                prop_assert!(!path.contains('\0'), "accepted a path with NUL {:?}", path);
                for s in &segments {
                    prop_assert!(
                        !s.is_empty() && *s != "." && *s != "..",
                        "accepted segment {:?} of {:?}",
                        s,
                        path
                    );
                    prop_assert!(
                        !s.contains('/') && !s.contains('\0') && s.len() <= 255,
                        "bad segment {:?}",
                        s
                    );
                }
                let joined = segments.join("/");
                prop_assert!(joined.len() <= 4096);
                prop_assert_eq!(normalize_path(&path).ok(), Some(joined.clone()));
                prop_assert_eq!(
                    normalize_path(&joined).ok(),
                    Some(joined.clone()),
                    "normalising is idempotent"
                );
                let root = Path::new("/srv/data/root");
                let full = root.join(&joined);
                prop_assert!(full.starts_with(root));
                prop_assert!(full
                    .components()
                    .skip(root.components().count())
                    .all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(2000))]

        /// The validator agrees with the contract, and an accepted name is one path component.
        #[test]
        fn fuzz_repository_names(name in prop_oneof![
            4 => "[A-Za-z0-9._-]{0,70}",
            2 => "\\PC{0,12}",
            1 => prop_oneof![
                Just("api"), Just("metrics"), Just("healthz"), Just(".."), Just("."), Just("API"),
                Just("a/b"), Just("a\\b"), Just("a\0"), Just(""),
            ]
            .prop_map(str::to_string),
            1 => "[a-z]{1,3}[/\\\\\\x00 %][a-z.]{1,3}",
        ]) {
            use std::path::{Component, Path};
            let accepted = validate_repo_name(&name).is_ok();
            prop_assert_eq!(
                accepted,
                contract_repo_name(&name),
                "validate_repo_name({:?}) disagrees with CONTRACT §3",
                name
            );
            if accepted {
                let p = Path::new("repos").join(&name);
                prop_assert_eq!(p.components().count(), 2);
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(500))]

        /// Only 64 lowercase hex digits are an object id.
        #[test]
        fn fuzz_object_ids(id in prop_oneof![
            2 => "[0-9a-f]{64}",
            2 => "[0-9a-fA-F]{62,66}",
            1 => "\\PC{0,70}",
            1 => "[0-9a-f]{60}[^0-9a-f]{1,4}",
        ]) {
            if validate_object_id(&id).is_ok() {
                prop_assert!(
                    id.len() == 64
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "accepted id {:?}",
                    id
                );
                prop_assert!(
                    id.is_char_boundary(2),
                    "an accepted id cannot be cut into its fan-out directory"
                );
            }
        }

        /// An accepted branch is one safe component under `refs/heads`.
        #[test]
        fn fuzz_branch_names(b in prop_oneof![
            2 => "[A-Za-z0-9._-]{0,130}",
            1 => "\\PC{0,20}",
            1 => "[a-z]{0,3}(\\.\\.|/|\\.lock|\\x00)[a-z]{0,3}",
        ]) {
            use std::path::{Component, Path};
            if validate_branch(&b).is_ok() {
                prop_assert!(
                    !b.is_empty()
                        && b.len() <= 128
                        && !b.starts_with('.')
                        && !b.contains('/')
                        && !b.contains('\0')
                        && !b.ends_with(".lock"),
                    "accepted branch {:?}",
                    b
                );
                let p = Path::new("refs/heads").join(&b);
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }
    }
}
