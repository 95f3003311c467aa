//! Name and path rules shared by the CRD schemas and the components that act on them.
//!
//! The patterns are written for both Go's RE2 (the real API server) and ECMA/Rust regex
//! engines (our tests and test API server): no look-around, no back-references.

/// DNS-1123 label: what Kubernetes requires of namespaces and what we require of Project names.
pub const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX: u32 = 63;

/// DNS-1123 subdomain: object names of most kinds (StoragePools, nodes).
pub const DNS1123_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX: u32 = 253;

/// A Kubernetes label value (topology zone and datacenter are read from node labels).
pub const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// ZFS pool name: starts with a letter; letters, digits, `_`, `-`, `.`, `:` only. That rules out
/// a leading `-`, `/`, `@`, `#`, whitespace and control characters. Reserved names are refused
/// by [`RESERVED_POOL_NAME_RULE`], which a regular expression without look-ahead cannot say.
pub const POOL_NAME: &str = "^[A-Za-z][A-Za-z0-9_.:-]*$";
/// Pool names stay short so that `<pool>/projects/<namespace>/<name>@<snapshot>` fits the
/// 255-byte ZFS dataset name limit with the longest namespace, project and snapshot names.
pub const POOL_NAME_MAX: u32 = 64;

/// Names ZFS refuses for pools: vdev type words and their prefixes.
pub const RESERVED_POOL_PREFIXES: &[&str] = &["mirror", "raidz", "draid", "spare"];
/// Names ZFS refuses for pools as whole words.
pub const RESERVED_POOL_NAMES: &[&str] = &["log", "cache", "special", "dedup"];

/// CEL rule refusing reserved pool names (the same list as the two constants above).
pub const RESERVED_POOL_NAME_RULE: &str = "!self.startsWith('mirror') && !self.startsWith('raidz') \
     && !self.startsWith('draid') && !self.startsWith('spare') \
     && !(self in ['log', 'cache', 'special', 'dedup'])";

// One path component: a conservative character set (no whitespace, quotes, `$`, `;`, `|`, `&`,
// `*`, `?`, backslash or control characters) and never `.` or `..`.
macro_rules! component {
    () => {
        "(\\.\\.[A-Za-z0-9_.,+@%=~-]+|\\.[A-Za-z0-9_,+@%=~-][A-Za-z0-9_.,+@%=~-]*|[A-Za-z0-9_,+@%=~-][A-Za-z0-9_.,+@%=~-]*)"
    };
}

/// A normalised absolute path: `/a/b`, no `//`, no trailing `/`, no `.` or `..` components.
pub const ABSOLUTE_PATH: &str = concat!("^(/", component!(), ")+$");
/// A normalised relative path: `a/b`, no leading `/`, no `.` or `..` components.
pub const RELATIVE_PATH: &str = concat!("^", component!(), "(/", component!(), ")*$");
/// Longest path we accept anywhere in a spec.
pub const PATH_MAX: u32 = 1024;

/// A Kubernetes quantity as a string (`10Gi`, `500M`, `1e9`); bounds are a CEL rule.
pub const QUANTITY: &str =
    "^[+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?[0-9]+)?$";

/// Checks `value` against one of the patterns above. The agent calls this before acting on a
/// spec (defence in depth: the API server checked the same patterns on admission).
pub fn matches(pattern: &str, value: &str) -> bool {
    // Patterns here are compile-time constants; an invalid one is a programming error that
    // every unit test would catch, so treat it as "does not match" rather than panicking.
    regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match(value))
}

/// Whether `name` is a pool name ZFS accepts and we allow (pattern, length, reserved words).
pub fn is_valid_pool_name(name: &str) -> bool {
    name.len() <= POOL_NAME_MAX as usize
        && matches(POOL_NAME, name)
        && !RESERVED_POOL_PREFIXES.iter().any(|p| name.starts_with(p))
        && !RESERVED_POOL_NAMES.contains(&name)
}

/// Whether `name` is a DNS-1123 label (Project and namespace names).
pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= DNS1123_LABEL_MAX as usize && matches(DNS1123_LABEL, name)
}

/// Whether `name` is a DNS-1123 subdomain (StoragePool and node names).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= DNS1123_SUBDOMAIN_MAX as usize && matches(DNS1123_SUBDOMAIN, name)
}

/// Whether `path` is a normalised relative path without `..` (mount paths).
pub fn is_relative_path(path: &str) -> bool {
    path.len() <= PATH_MAX as usize && matches(RELATIVE_PATH, path)
}

/// Whether `path` is a normalised absolute path without `..` (vdev paths).
pub fn is_absolute_path(path: &str) -> bool {
    path.len() <= PATH_MAX as usize && matches(ABSOLUTE_PATH, path)
}

/// The name of a snapshot after `@`: letters, digits, `_`, `.`, `:`, `-`, not starting with
/// `-` or `.`.
pub const SNAPSHOT_SHORT: &str = "^[A-Za-z0-9_:][A-Za-z0-9_.:-]*$";

/// An S3 bucket name (S3's rules for new buckets: 3..63 characters, lower-case letters,
/// digits, `.` and `-`, starting and ending with a letter or digit).
pub const BUCKET: &str = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";

/// A key prefix inside a bucket: path components of safe characters separated by `/`, no
/// leading or trailing `/`, no `.` or `..` components (the same rule as [`RELATIVE_PATH`]).
pub const BUCKET_PREFIX: &str = RELATIVE_PATH;

/// An `http://` or `https://` URL of an S3-compatible endpoint: scheme, host (name, IPv4 or
/// bracketed IPv6), optional port, optional path; no user info, query or fragment.
pub const ENDPOINT_URL: &str = "^https?://([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*|\\[[0-9A-Fa-f:.]+\\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$";

/// An S3 region name such as `us-east-1`.
pub const REGION: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// Whether `name` is a bucket name we accept (S3 naming rules; not an IP address, no `..`).
pub fn is_valid_bucket(name: &str) -> bool {
    matches(BUCKET, name)
        && !name.contains("..")
        && !(name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_follow_zfs_rules() {
        for ok in ["storage", "tank", "p1", "a.b:c_d-e", "tankmirror"] {
            assert!(is_valid_pool_name(ok), "{ok} should be valid");
        }
        for bad in [
            "", "-tank", "1tank", "ta/nk", "ta@nk", "ta#nk", "ta nk", "ta\tnk", "ta\nnk", "mirror",
            "mirror0", "raidz2", "draid", "spare1", "log", "cache", "tank;rm", "$(x)",
        ] {
            assert!(!is_valid_pool_name(bad), "{bad:?} should be refused");
        }
        assert!(!is_valid_pool_name(&"a".repeat(65)));
    }

    #[test]
    fn relative_paths_never_climb_out() {
        for ok in [
            "a",
            "a/b",
            "handin/2024",
            ".hidden",
            "..dots",
            "a.b/c..d",
            "x/.y",
        ] {
            assert!(is_relative_path(ok), "{ok} should be valid");
        }
        for bad in [
            "", "/a", "a/", "a//b", "..", "../a", "a/..", "a/../b", ".", "./a", "a/./b", "a b",
            "a;b", "a$b", "a\nb", "a\\b", "a*",
        ] {
            assert!(!is_relative_path(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn absolute_paths_are_normalised() {
        for ok in ["/dev/sdb", "/var/lib/projstore/pool-1.img", "/a"] {
            assert!(is_absolute_path(ok), "{ok} should be valid");
        }
        for bad in [
            "",
            "/",
            "dev/sdb",
            "/dev/../etc",
            "/dev/",
            "//dev",
            "/a/./b",
            "/a b",
            "/a;b",
        ] {
            assert!(!is_absolute_path(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn kubernetes_names() {
        assert!(is_dns1123_label("my-project-1"));
        assert!(!is_dns1123_label("My-Project"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("pool-a.dc1"));
        assert!(!is_dns1123_subdomain("pool_a"));
    }

    #[test]
    fn quantities() {
        for ok in ["1Mi", "10Gi", "500M", "1e9", "1.5Gi", "1024"] {
            assert!(matches(QUANTITY, ok), "{ok}");
        }
        for bad in ["", "ten", "1 Gi", "-1Gi", "1GiB"] {
            assert!(!matches(QUANTITY, bad), "{bad}");
        }
    }
}
