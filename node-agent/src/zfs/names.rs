//! Validated ZFS names. Every name reaches `zfs`/`zpool` as one of these types, so nothing
//! that could be read as an option (`-x`), a path escape (`..`) or garbage ever gets there.

use std::fmt;

/// ZFS refuses dataset names of 256 bytes or more (ZFS_MAX_DATASET_NAME_LEN includes the NUL).
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

fn refuse(what: &'static str, value: &str, reason: &'static str) -> NameError {
    NameError {
        what,
        value: value.escape_debug().to_string(),
        reason,
    }
}

/// Checks one component of a dataset or snapshot name: letters, digits, `_`, `-`, `.`, `:`;
/// not empty, not `.` or `..`, not starting with `-`.
fn check_component(what: &'static str, whole: &str, c: &str) -> Result<(), NameError> {
    if c.is_empty() {
        return Err(refuse(
            what,
            whole,
            "empty component (leading, trailing or double '/')",
        ));
    }
    if c == "." || c == ".." {
        return Err(refuse(what, whole, "'.' and '..' are not allowed"));
    }
    if c.starts_with('-') {
        return Err(refuse(what, whole, "a component must not start with '-'"));
    }
    if let Some(bad) = c
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || "_-.:".contains(*ch)))
    {
        return Err(if bad.is_control() || bad.is_whitespace() {
            refuse(
                what,
                whole,
                "control characters and whitespace are not allowed",
            )
        } else {
            refuse(
                what,
                whole,
                "only letters, digits, '_', '-', '.' and ':' are allowed",
            )
        });
    }
    Ok(())
}

/// A ZFS pool name (DESIGN §3 `poolName` rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if projstore_api::names::is_valid_pool_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(refuse(
                "pool name",
                s,
                "must start with a letter, use only letters, digits, '_', '-', '.', ':', be at most 64 characters and not be a reserved word",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The pool's root dataset.
    pub fn root(&self) -> DatasetName {
        DatasetName(self.0.clone())
    }
    /// A child dataset `<pool>/<path>`; `path` is validated.
    pub fn dataset(&self, path: &str) -> Result<DatasetName, NameError> {
        DatasetName::parse(&format!("{}/{}", self.0, path))
    }
}

/// A filesystem name `pool/a/b`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "dataset name";
        if s.len() > MAX_NAME_LEN {
            return Err(refuse(WHAT, s, "longer than 255 bytes"));
        }
        if s.contains('@') || s.contains('#') || s.contains('%') {
            return Err(refuse(
                WHAT,
                s,
                "'@', '#' and '%' are not allowed in a dataset name",
            ));
        }
        let pool = s.split('/').next().unwrap_or_default();
        PoolName::parse(pool)
            .map_err(|_| refuse(WHAT, s, "does not start with a valid pool name"))?;
        for c in s.split('/') {
            check_component(WHAT, s, c)?;
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn pool(&self) -> PoolName {
        PoolName(self.0.split('/').next().unwrap_or_default().to_owned())
    }
    /// `self/child`, validated.
    pub fn child(&self, child: &str) -> Result<DatasetName, NameError> {
        Self::parse(&format!("{}/{}", self.0, child))
    }
    /// The parent dataset; `None` for a pool's root.
    pub fn parent(&self) -> Option<DatasetName> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| DatasetName(p.to_owned()))
    }
    /// The snapshot `self@name`, validated.
    pub fn snapshot(&self, name: &str) -> Result<SnapshotName, NameError> {
        SnapshotName::parse(&format!("{}@{}", self.0, name))
    }
}

/// A snapshot name `pool/a/b@snap`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotName {
    dataset: DatasetName,
    snap: String,
}

impl SnapshotName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "snapshot name";
        if s.len() > MAX_NAME_LEN {
            return Err(refuse(WHAT, s, "longer than 255 bytes"));
        }
        let Some((ds, snap)) = s.split_once('@') else {
            return Err(refuse(WHAT, s, "missing '@'"));
        };
        let dataset = DatasetName::parse(ds).map_err(|e| refuse(WHAT, s, e.reason))?;
        check_component(WHAT, s, snap)?;
        Ok(Self {
            dataset,
            snap: snap.to_owned(),
        })
    }
    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }
    /// The part after `@`.
    pub fn short(&self) -> &str {
        &self.snap
    }
    pub fn full(&self) -> String {
        format!("{}@{}", self.dataset.0, self.snap)
    }
}

/// A snapshot hold tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HoldTag(String);

impl HoldTag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() > 200 {
            return Err(refuse("hold tag", s, "longer than 200 bytes"));
        }
        check_component("hold tag", s, s)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A ZFS property name: a native one (`refquota`) or a user property (`projstore.io:epoch`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PropertyName(String);

impl PropertyName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        const WHAT: &str = "property name";
        if s.is_empty() || s.len() > 255 {
            return Err(refuse(WHAT, s, "must be 1 to 255 bytes"));
        }
        if s.starts_with('-') {
            return Err(refuse(WHAT, s, "must not start with '-'"));
        }
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.:-@".contains(c);
        if !s.chars().all(ok) {
            return Err(refuse(
                WHAT,
                s,
                "only lower-case letters, digits, '_', '.', ':', '-' and '@'",
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// User properties contain a `:`.
    pub fn is_user(&self) -> bool {
        self.0.contains(':')
    }
}

/// Checks a property value: no control characters (a newline would break `-H` parsing),
/// at most 8191 bytes (the user property limit), and not starting with `-`.
pub fn check_property_value(value: &str) -> Result<(), NameError> {
    const WHAT: &str = "property value";
    if value.len() > 8191 {
        return Err(refuse(WHAT, value, "longer than 8191 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(refuse(WHAT, value, "control characters are not allowed"));
    }
    if value.starts_with('-') {
        return Err(refuse(WHAT, value, "must not start with '-'"));
    }
    Ok(())
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset.0, self.snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        assert!(DatasetName::parse("storage/projects/alice/thesis").is_ok());
        assert!(DatasetName::parse("tank").is_ok());
        assert!(SnapshotName::parse("tank/a@ps-20261121T140000Z").is_ok());
        assert!(SnapshotName::parse("tank/a@before.upgrade:2").is_ok());
        assert!(PropertyName::parse("projstore.io:epoch").is_ok());
        assert!(HoldTag::parse("projstore-replica").is_ok());
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "-tank",
            "tank/-rf",
            "tank/../etc",
            "tank/./a",
            "tank//a",
            "tank/a/",
            "/tank",
            "tank/a;rm -rf /",
            "tank/$(reboot)",
            "tank/a`x`",
            "tank/a b",
            "tank/a\nb",
            "tank/a\0b",
            "tank/a@b",
            "tank/a#b",
            "tank/a%b",
            "mirror/a",
            "tank/a|b",
            "tank/a&b",
            "tank/a>b",
        ] {
            assert!(
                DatasetName::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(DatasetName::parse(&format!("tank/{}", "a".repeat(260))).is_err());
        for bad in [
            "tank/a",
            "tank/a@",
            "tank/a@-x",
            "tank/a@..",
            "tank/a@b@c",
            "tank/a@b c",
            "@x",
        ] {
            assert!(
                SnapshotName::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        for bad in ["-o", "Foo", "a b", "x\n"] {
            assert!(
                PropertyName::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(check_property_value("-x").is_err());
        assert!(check_property_value("a\nb").is_err());
        assert!(check_property_value("alice/thesis").is_ok());
    }

    #[test]
    fn snapshot_parts() {
        let s = SnapshotName::parse("tank/p/a@s1").unwrap();
        assert_eq!(s.dataset().as_str(), "tank/p/a");
        assert_eq!(s.short(), "s1");
        assert_eq!(s.to_string(), "tank/p/a@s1");
        assert_eq!(s.dataset().pool().as_str(), "tank");
        assert_eq!(s.dataset().parent().unwrap().as_str(), "tank/p");
    }
}
