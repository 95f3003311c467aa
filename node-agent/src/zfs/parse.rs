//! Parsers for `zfs`/`zpool` output. Pure: text in, typed rows out, errors for anything odd.

use std::collections::BTreeMap;

/// One `name<TAB>property<TAB>value` row of `zfs get -H -o name,property,value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropRow {
    pub name: String,
    pub property: String,
    pub value: String,
}

/// Parses `zfs get -H[p] -o name,property,value …` output.
pub fn parse_get(out: &str) -> Result<Vec<PropRow>, String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut f = line.splitn(3, '\t');
            match (f.next(), f.next(), f.next()) {
                (Some(name), Some(property), Some(value))
                    if !name.is_empty() && !property.is_empty() =>
                {
                    Ok(PropRow {
                        name: name.into(),
                        property: property.into(),
                        value: value.into(),
                    })
                }
                _ => Err(format!(
                    "expected name<TAB>property<TAB>value, got {line:?}"
                )),
            }
        })
        .collect()
}

/// Groups rows by object name: name → property → value.
pub fn group(rows: Vec<PropRow>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.name).or_default().insert(r.property, r.value);
    }
    out
}

/// A snapshot with the facts that identify and order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The part after `@`.
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub creation: i64,
    /// Bytes unique to this snapshot.
    pub used: u64,
    /// User property `projstore.io:…` values and other requested properties, raw.
    pub properties: BTreeMap<String, String>,
}

/// The properties every snapshot listing asks for.
pub const SNAPSHOT_PROPS: &str = "guid,createtxg,creation,used";

/// Picks the snapshots of `dataset` out of grouped `zfs get -Hp` output, oldest first
/// (by `createtxg`: order is never taken from names or clocks).
pub fn snapshots_of(
    dataset: &str,
    grouped: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Vec<SnapshotInfo>, String> {
    let prefix = format!("{dataset}@");
    let mut snaps = Vec::new();
    for (name, props) in grouped {
        let Some(short) = name.strip_prefix(&prefix) else {
            continue;
        };
        let num = |p: &str| -> Result<u64, String> {
            let v = props.get(p).ok_or_else(|| format!("{name}: no {p}"))?;
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {p} is not a number: {v:?}"))
        };
        snaps.push(SnapshotInfo {
            name: short.to_owned(),
            guid: num("guid")?,
            createtxg: num("createtxg")?,
            creation: i64::try_from(num("creation")?)
                .map_err(|_| format!("{name}: creation out of range"))?,
            used: num("used")?,
            properties: props.clone(),
        });
    }
    snaps.sort_by_key(|s| (s.createtxg, s.guid));
    Ok(snaps)
}

/// One row of `zpool list -H -o name,size,allocated,free,health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub health: String,
}

/// Parses `zpool list -H[p] -o name,size,allocated,free,health`. Sizes may be exact (`-p`,
/// OpenZFS) or human (`250M`, zfs-fuse, which has no `-p`).
pub fn parse_zpool_list(out: &str) -> Result<Vec<PoolRow>, String> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 5 {
                return Err(format!("expected 5 columns, got {line:?}"));
            }
            Ok(PoolRow {
                name: f[0].into(),
                size: parse_size(f[1])?,
                allocated: parse_size(f[2])?,
                free: parse_size(f[3])?,
                health: f[4].into(),
            })
        })
        .collect()
}

/// Parses an exact (`1234`) or human (`21.4M`, `1.5T`, `0`, `-`) ZFS size into bytes.
/// Human sizes are powers of 1024 and rounded, so they are approximate.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "-" || s == "none" {
        return Ok(0);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let shift = match unit {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return Err(format!("unknown size unit in {s:?}")),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("not a size: {s:?}"));
    }
    // Rounding a human size is the best zfs-fuse offers; `as` saturates on overflow.
    Ok((n * (1u64 << shift) as f64).round() as u64)
}

/// Parses `zfs version` (OpenZFS ≥ 0.8): the userland line `zfs-2.2.2-0ubuntu9` → `2.2.2`.
pub fn parse_zfs_version(out: &str) -> Option<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("zfs-") && !l.starts_with("zfs-kmod-"))?;
    let rest = line.trim().strip_prefix("zfs-")?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

/// What `zpool upgrade -v` says about the on-disk format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolFormat {
    /// Feature flags (OpenZFS): the names of the supported features.
    Features(Vec<String>),
    /// A legacy version number only (zfs-fuse: 23).
    Legacy(u32),
}

/// Parses `zpool upgrade -v`.
pub fn parse_upgrade_v(out: &str) -> Option<PoolFormat> {
    if out.contains("supports ZFS pool feature flags") {
        let mut features = Vec::new();
        let mut in_features = false;
        for line in out.lines() {
            if line.starts_with("FEAT ") {
                in_features = true;
                continue;
            }
            if in_features && line.starts_with("The following legacy versions") {
                break;
            }
            // Feature names start in column 0; descriptions are indented.
            if in_features
                && !line.starts_with(' ')
                && !line.starts_with('-')
                && let Some(name) = line.split_whitespace().next()
            {
                features.push(name.to_owned());
            }
        }
        return Some(PoolFormat::Features(features));
    }
    let line = out
        .lines()
        .find(|l| l.contains("running ZFS pool version"))?;
    let v = line.trim().trim_end_matches('.').rsplit(' ').next()?;
    v.parse().ok().map(PoolFormat::Legacy)
}

/// Parses the compression values a ZFS accepts from its own usage text
/// (`compression  YES  YES  on | off | lzjb | gzip | gzip-[1-9] | zle`).
pub fn parse_compression_values(usage: &str) -> Vec<String> {
    let Some(line) = usage
        .lines()
        .find(|l| l.trim_start().starts_with("compression "))
    else {
        return Vec::new();
    };
    // Columns: PROPERTY EDIT INHERIT VALUES…
    let tail = line
        .split_whitespace()
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = Vec::new();
    for v in tail.split('|').map(str::trim).filter(|v| !v.is_empty()) {
        if v == "gzip-[1-9]" {
            out.extend((1..=9).map(|n| format!("gzip-{n}")));
        } else if let Some(base) = v.strip_suffix("-[1-19]") {
            out.extend((1..=19).map(|n| format!("{base}-{n}")));
        } else if !v.contains('[') {
            out.push(v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("250M").unwrap(), 250 << 20);
        assert_eq!(
            parse_size("21.4M").unwrap(),
            (21.4 * 1048576.0f64).round() as u64
        );
        assert_eq!(parse_size("556K").unwrap(), 556 << 10);
        assert_eq!(
            parse_size("1.81T").unwrap(),
            (1.81 * (1u64 << 40) as f64).round() as u64
        );
        assert_eq!(parse_size("-").unwrap(), 0);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("-5M").is_err());
    }

    #[test]
    fn get_rows_reject_garbage() {
        assert!(parse_get("tank\tused\t1\n").is_ok());
        assert!(parse_get("tank used 1\n").is_err());
        assert!(parse_get("\tused\t1\n").is_err());
    }

    #[test]
    fn zfs_version_lines() {
        assert_eq!(
            parse_zfs_version("zfs-2.2.2-0ubuntu9\nzfs-kmod-2.2.2-0ubuntu9\n").as_deref(),
            Some("2.2.2")
        );
        assert_eq!(parse_zfs_version("zfs-kmod-2.1.0\n"), None);
        assert_eq!(parse_zfs_version("unrecognized command 'version'"), None);
    }
}
