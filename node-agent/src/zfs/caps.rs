//! What the host's ZFS can do, detected once at start-up and used to choose flags.

use super::parse::{PoolFormat, parse_compression_values, parse_upgrade_v, parse_zfs_version};

/// Which ZFS implementation runs on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// OpenZFS (ZFS on Linux) 0.8 and later: kernel module, `zfs version` works.
    OpenZfs,
    /// zfs-fuse 0.7: userspace daemon, pool version 23, no feature flags.
    ZfsFuse,
}

impl Implementation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenZfs => "openzfs",
            Self::ZfsFuse => "zfs-fuse",
        }
    }
}

/// The features the agent may use on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub implementation: Implementation,
    /// Userland version (OpenZFS) or pool version (zfs-fuse: `pool-v23`).
    pub version: Option<String>,
    /// Accepted values of the `compression` property.
    pub compression: Vec<String>,
    /// `zfs send -t` / `zfs recv -s`.
    pub resumable_send: bool,
    /// `zfs bookmark`.
    pub bookmarks: bool,
    /// `zfs hold` / `zfs release` (snapshot user holds).
    pub holds: bool,
    /// `zfs holds` lists the holds of a snapshot.
    pub list_holds: bool,
    /// `zfs send -w` (raw, encrypted datasets).
    pub raw_send: bool,
    /// `zfs send -c` (compressed blocks as they are on disk).
    pub compressed_send: bool,
    /// `zfs send -L` (records larger than 128 KiB kept whole).
    pub large_block_send: bool,
    /// `zfs send -e` (blocks embedded in their block pointers kept so).
    pub embedded_send: bool,
    /// `-p` on `zfs list` and `zpool list` (exact numbers).
    pub parsable_list: bool,
    /// The `written` property (bytes written since the previous snapshot).
    pub written_property: bool,
}

impl Capabilities {
    /// Derives capabilities from command outputs: `zfs version` (None when the command does
    /// not exist), `zpool upgrade -v`, and the usage text `zfs get` prints for a bad property
    /// (which lists the accepted compression values).
    pub fn from_outputs(
        zfs_version: Option<&str>,
        upgrade_v: &str,
        get_usage: &str,
    ) -> Option<Self> {
        let format = parse_upgrade_v(upgrade_v)?;
        let mut compression = parse_compression_values(get_usage);
        match format {
            PoolFormat::Legacy(v) => Some(Self {
                implementation: Implementation::ZfsFuse,
                version: Some(format!("pool-v{v}")),
                compression: if compression.is_empty() {
                    legacy_compression()
                } else {
                    compression
                },
                resumable_send: false,
                bookmarks: false,
                holds: v >= 18,
                list_holds: false,
                raw_send: false,
                compressed_send: false,
                large_block_send: false,
                embedded_send: false,
                parsable_list: false,
                written_property: false,
            }),
            PoolFormat::Features(features) => {
                let has = |f: &str| features.iter().any(|x| x == f);
                if compression.is_empty() {
                    compression = legacy_compression();
                    if has("lz4_compress") {
                        compression.push("lz4".into());
                    }
                    if has("zstd_compress") {
                        compression.push("zstd".into());
                        compression.push("zstd-fast".into());
                        compression.extend((1..=19).map(|n| format!("zstd-{n}")));
                    }
                }
                let version = zfs_version.and_then(parse_zfs_version);
                Some(Self {
                    implementation: Implementation::OpenZfs,
                    version,
                    compression,
                    resumable_send: has("extensible_dataset"),
                    bookmarks: has("bookmarks"),
                    holds: true,
                    list_holds: true,
                    raw_send: has("encryption"),
                    compressed_send: has("lz4_compress"),
                    large_block_send: has("large_blocks"),
                    embedded_send: has("embedded_data"),
                    parsable_list: true,
                    written_property: true,
                })
            }
        }
    }

    /// The `zfs send` flags this host can make and receive.
    pub fn send_flags(&self) -> super::SendFlags {
        super::SendFlags {
            compressed: self.compressed_send,
            large_blocks: self.large_block_send,
            embedded: self.embedded_send,
            raw: self.raw_send,
        }
    }

    /// Names of the notable features in use, for `StoragePool.status.capabilities.features`.
    pub fn feature_names(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (on, name) in [
            (self.compression.iter().any(|c| c == "lz4"), "lz4"),
            (self.compression.iter().any(|c| c == "zstd"), "zstd"),
            (self.resumable_send, "resumable-send"),
            (self.bookmarks, "bookmarks"),
            (self.holds, "holds"),
            (self.raw_send, "raw-send"),
            (self.compressed_send, "compressed-send"),
        ] {
            if on {
                f.push(name.to_owned());
            }
        }
        f
    }

    /// The compression value to set for `wanted`: itself when supported, else the best
    /// supported fallback (`lz4`/`zstd*` → `lz4`, then `on`). The second field says whether a
    /// fallback was used, so status can report it.
    pub fn compression_for(&self, wanted: &str) -> (String, bool) {
        if self.compression.iter().any(|c| c == wanted) {
            return (wanted.to_owned(), false);
        }
        for candidate in ["lz4", "on"] {
            if self.compression.iter().any(|c| c == candidate) {
                return (candidate.to_owned(), true);
            }
        }
        ("off".to_owned(), true)
    }
}

fn legacy_compression() -> Vec<String> {
    let mut v: Vec<String> = ["on", "off", "lzjb", "gzip", "zle"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.extend((1..=9).map(|n| format!("gzip-{n}")));
    v
}
