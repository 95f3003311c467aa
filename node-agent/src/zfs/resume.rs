//! Resumable receives (OpenZFS: `zfs recv -s`, `receive_resume_token`, `zfs send -t`).
//!
//! A receive run with `-s` that is cut off keeps what it received, and the target's
//! `receive_resume_token` property then names where to go on: the snapshot (GUID and full
//! name on the source), its base, and the object and offset reached. The source resumes with
//! `zfs send -t TOKEN`; `zfs recv -A` drops the partial state instead. zfs-fuse has none of
//! this (its `resumable_send` capability is false): there a cut transfer starts again from
//! the newest snapshot applied.
//!
//! A token is opaque text to the agents (hex, compressed, checksummed by ZFS); `zfs send
//! -nvt TOKEN` prints what it holds, which [`parse_resume_token`] reads. A token comes from a
//! peer, so a source checks it names the very snapshot asked for before it sends anything
//! ([`ResumeToken::check_for`]).

use super::names::DatasetName;
use super::{Zfs, ZfsError, args};

/// The longest token accepted (OpenZFS's are a few hundred characters).
pub const MAX_TOKEN: usize = 4096;

/// What a resume token says, as `zfs send -nvt` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// The snapshot being received (its GUID on every host).
    pub toguid: u64,
    /// Its full name on the source: `pool/…/dataset@snapshot`.
    pub toname: String,
    /// The base of an incremental send; None for a full one.
    pub fromguid: Option<u64>,
    /// Bytes received so far.
    pub bytes: u64,
    /// The send's flags the resumed send keeps (`-c`, `-L`, `-e`, `-w`).
    pub compressed: bool,
    pub large_blocks: bool,
    pub embedded: bool,
    pub raw: bool,
}

/// Checks a token's text before it goes anywhere: `1-<hex>-<hex>-<hex>`, bounded.
pub fn check_token_text(token: &str) -> Result<(), String> {
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token.split('-').count() == 4
        && token
            .split('-')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not a resume token (expected 1-<hex>-<hex>-<hex>, at most {MAX_TOKEN} characters)"
        ))
    }
}

/// Reads the output of `zfs send -nvt TOKEN`:
///
/// ```text
/// resume token contents:
/// nvlist version: 0
///         fromguid = 0x595d9f81aa9dddab
///         object = 0x1
///         offset = 0x0
///         bytes = 0x0
///         toguid = 0x854f02a2dd32cf0d
///         toname = pool1/test@b
/// ```
///
/// Strictly, because the token is the peer's: its fields are exactly the lines after the
/// header indented by one tab, each `key = value` with a key OpenZFS writes into a token, at
/// most once, without control characters; a flag (`compressok`, …) counts when present, as
/// `zfs send -t` reads it. Anything else — a nested list (deeper indentation), a field twice, a
/// key this agent does not know (a newer kind of send), a name that is not a snapshot's —
/// makes it None. The fields end at the first line that is not indented (the size estimate, or
/// "cannot resume send: …" on a host without the snapshot).
pub fn parse_resume_token(out: &str) -> Option<ResumeToken> {
    let mut lines = out
        .split('\n')
        .skip_while(|l| *l != "resume token contents:");
    lines.next()?;
    if lines.next()? != "nvlist version: 0" {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut t = ResumeToken {
        toguid: 0,
        toname: String::new(),
        fromguid: None,
        bytes: 0,
        compressed: false,
        large_blocks: false,
        embedded: false,
        raw: false,
    };
    let (mut toguid, mut toname) = (None, None);
    for line in lines {
        let Some(field) = line.strip_prefix('\t') else {
            break;
        };
        if field.starts_with(char::is_whitespace) || field.chars().any(char::is_control) {
            return None;
        }
        let (name, value) = match field.split_once(" = ") {
            Some((n, v)) => (n, Some(v)),
            None => (field, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let number = || value.and_then(parse_number);
        match name {
            "toguid" => toguid = Some(number()?),
            "fromguid" => t.fromguid = Some(number()?).filter(|g| *g != 0),
            "toname" => toname = Some(value?.to_owned()),
            "bytes" => t.bytes = number()?,
            "object" | "offset" => {
                number()?;
            }
            "compressok" => t.compressed = true,
            "largeblockok" => t.large_blocks = true,
            "embedok" => t.embedded = true,
            "rawok" => t.raw = true,
            _ => return None,
        }
    }
    t.toguid = toguid?;
    let name = toname?;
    crate::zfs::names::SnapshotName::parse(&name).ok()?;
    t.toname = name;
    Some(t)
}

/// `0x…` hex (as nvlist_print prints a uint64) or decimal.
fn parse_number(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

impl ResumeToken {
    /// Whether this token resumes exactly the send of snapshot `to` (named `snapshot`) of
    /// dataset `ds`, incremental from `from`: what a source checks before `zfs send -t`.
    /// A token naming any other dataset, snapshot or base (another project's data, say) is
    /// refused with the reason.
    pub fn check_for(
        &self,
        ds: &DatasetName,
        snapshot: &str,
        to: u64,
        from: Option<u64>,
    ) -> Result<(), String> {
        let want = format!("{ds}@{snapshot}");
        if self.toname != want {
            return Err(format!(
                "the resume token is for {:?}, not this project's snapshot",
                self.toname
            ));
        }
        if self.toguid != to {
            return Err(format!(
                "the resume token is for snapshot {}, not {to}",
                self.toguid
            ));
        }
        if self.fromguid != from {
            return Err(format!(
                "the resume token continues a send from {:?}, not from {from:?}",
                self.fromguid
            ));
        }
        Ok(())
    }
}

impl Zfs {
    /// The `receive_resume_token` of `ds`: Some when a cut-off `zfs recv -s` into it left
    /// partial state. Always None where receives cannot resume (zfs-fuse).
    pub async fn resume_token(&self, ds: &DatasetName) -> Result<Option<String>, ZfsError> {
        if !self.caps.resumable_send {
            return Ok(None);
        }
        let map = self.get(ds.as_str(), &["receive_resume_token"]).await?;
        Ok(map
            .get("receive_resume_token")
            .filter(|v| !v.is_empty() && v.as_str() != "-")
            .cloned())
    }

    /// What `token` holds, from `zfs send -nvt` (which prints it before it looks for the
    /// snapshot, so this works on any host with resumable sends).
    pub async fn describe_resume_token(&self, token: &str) -> Result<ResumeToken, ZfsError> {
        let what = "read a resume token".to_owned();
        if !self.caps.resumable_send {
            return Err(ZfsError::Parse {
                what,
                detail: "this host's ZFS has no resumable sends".into(),
            });
        }
        check_token_text(token).map_err(|detail| ZfsError::Parse {
            what: what.clone(),
            detail,
        })?;
        let out = super::output(&what, &self.zfs, args(["send", "-nvt", token])).await?;
        // The exit status says whether the snapshot is here too; the contents come first.
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_resume_token(&text).ok_or_else(|| {
            if text.contains("resume token is corrupt") {
                ZfsError::Parse {
                    what,
                    detail: "the resume token is corrupt".into(),
                }
            } else {
                ZfsError::classify(&what, &text)
            }
        })
    }

    /// `zfs recv -A ds`: drops the partial state of a cut-off resumable receive into `ds`.
    pub async fn abort_resumable(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        self.zfs(
            &format!("drop the partial receive into {ds}"),
            args(["recv", "-A", ds.as_str()]),
        )
        .await?;
        Ok(())
    }
}
