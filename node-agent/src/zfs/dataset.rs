//! Dataset and snapshot operations. Idempotent where the outcome is the same ("already
//! exists" is success for create), but a missing pool is always an error.

use std::collections::BTreeMap;

use super::names::{DatasetName, HoldTag, PropertyName, SnapshotName, check_property_value};
use super::parse::{self, SNAPSHOT_PROPS, SnapshotInfo};
use super::{Zfs, ZfsError, args, push_props};

/// Whether a create made something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Now,
    Already,
}

/// Whether a destroy removed something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Now,
    AlreadyGone,
}

impl Zfs {
    /// `zfs get -Hp` of `props` on one dataset or snapshot: property → value.
    pub(crate) async fn get(
        &self,
        name: &str,
        props: &[&str],
    ) -> Result<BTreeMap<String, String>, ZfsError> {
        let what = format!("get {} of {name}", props.join(","));
        let out = self
            .zfs(
                &what,
                args([
                    "get",
                    "-Hp",
                    "-o",
                    "name,property,value",
                    &props.join(","),
                    name,
                ]),
            )
            .await?;
        let rows = parse::parse_get(&out).map_err(|detail| ZfsError::Parse {
            what: what.clone(),
            detail,
        })?;
        Ok(rows
            .into_iter()
            .filter(|r| r.name == name)
            .map(|r| (r.property, r.value))
            .collect())
    }

    /// Several properties of a dataset by name (each name checked first).
    pub async fn get_props(
        &self,
        ds: &DatasetName,
        props: &[&str],
    ) -> Result<BTreeMap<String, String>, ZfsError> {
        for name in props {
            PropertyName::parse(name).map_err(ZfsError::invalid_name(format!("get of {ds}")))?;
        }
        self.get(ds.as_str(), props).await
    }

    /// One property of a dataset (`-` when unset for user properties).
    pub async fn property(
        &self,
        ds: &DatasetName,
        prop: &PropertyName,
    ) -> Result<String, ZfsError> {
        let [value] = self.property_values(ds, [prop]).await?;
        Ok(value)
    }

    /// Properties of a dataset with one `zfs get`, in the order asked (`-` when unset for
    /// user properties); an error when one is missing from the output.
    pub async fn property_values<const N: usize>(
        &self,
        ds: &DatasetName,
        props: [&PropertyName; N],
    ) -> Result<[String; N], ZfsError> {
        let names = props.map(PropertyName::as_str);
        let mut map = self.get(ds.as_str(), &names).await?;
        let mut values = Vec::with_capacity(N);
        for name in names {
            values.push(map.remove(name).ok_or_else(|| ZfsError::Parse {
                what: format!("get {name} of {ds}"),
                detail: "property missing from output".into(),
            })?);
        }
        let mut values = values.into_iter();
        Ok(std::array::from_fn(|_| values.next().unwrap_or_default()))
    }

    /// Several properties of a dataset.
    pub async fn properties(
        &self,
        ds: &DatasetName,
        props: &[&PropertyName],
    ) -> Result<BTreeMap<String, String>, ZfsError> {
        let names: Vec<&str> = props.iter().map(|p| p.as_str()).collect();
        self.get(ds.as_str(), &names).await
    }

    /// Whether `ds` is encrypted (its `encryption` property is set, perhaps inherited). Never
    /// where the host's ZFS has no encryption (zfs-fuse).
    pub async fn encrypted(&self, ds: &DatasetName) -> Result<bool, ZfsError> {
        if !self.caps.raw_send {
            return Ok(false);
        }
        let map = self.get(ds.as_str(), &["encryption"]).await?;
        Ok(map
            .get("encryption")
            .is_some_and(|v| !v.is_empty() && v != "off" && v != "-"))
    }

    /// Whether `ds` exists. A missing pool is an error, not "does not exist".
    pub async fn exists(&self, ds: &DatasetName) -> Result<bool, ZfsError> {
        match self.get(ds.as_str(), &["type"]).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => {
                self.pool_info(&ds.pool()).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets `prop=value` on `ds` and checks that it took.
    pub async fn set(
        &self,
        ds: &DatasetName,
        prop: &PropertyName,
        value: &str,
    ) -> Result<(), ZfsError> {
        self.set_on(ds.as_str(), prop, value).await
    }

    /// Sets `prop=value` on snapshot `snap` (a user property: what a snapshot can carry) and
    /// checks that it took.
    pub async fn set_on_snapshot(
        &self,
        snap: &SnapshotName,
        prop: &PropertyName,
        value: &str,
    ) -> Result<(), ZfsError> {
        self.set_on(&snap.full(), prop, value).await
    }

    async fn set_on(&self, target: &str, prop: &PropertyName, value: &str) -> Result<(), ZfsError> {
        let what = format!("set {}={value} on {target}", prop.as_str());
        check_property_value(value).map_err(ZfsError::invalid_name(&what))?;
        self.zfs(
            &what,
            args([
                "set".to_owned(),
                format!("{}={value}", prop.as_str()),
                target.to_owned(),
            ]),
        )
        .await?;
        let mut map = self.get(target, &[prop.as_str()]).await?;
        let now = map.remove(prop.as_str()).ok_or_else(|| ZfsError::Parse {
            what: format!("get {} of {target}", prop.as_str()),
            detail: "property missing from output".into(),
        })?;
        let same = now == value || now.eq_ignore_ascii_case(value) || {
            // Sizes come back exact under -p: `1G` reads as 1073741824.
            match (parse::parse_size(value), now.parse::<u64>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        };
        if !same {
            return Err(ZfsError::Unverified {
                what,
                problem: format!("it reads back as {now:?}"),
            });
        }
        Ok(())
    }

    /// Creates the filesystem `ds` with `props`. The parent must exist (see
    /// [`Zfs::create_parents`]); an existing `ds` is success.
    pub async fn create(
        &self,
        ds: &DatasetName,
        props: &[(PropertyName, String)],
    ) -> Result<Created, ZfsError> {
        let what = format!("create {ds}");
        let mut a = args(["create"]);
        push_props(&mut a, "-o", props, &what)?;
        a.push(ds.as_str().into());
        let created = match self.zfs(&what, a).await {
            Ok(_) => Created::Now,
            Err(e) if e.is_already_exists() => Created::Already,
            Err(e) => return Err(e),
        };
        if !self.exists(ds).await? {
            return Err(ZfsError::Unverified {
                what,
                problem: "the dataset does not exist afterwards".into(),
            });
        }
        Ok(created)
    }

    /// Creates every missing ancestor of `ds` below the pool root, with no properties of its
    /// own (they inherit).
    pub async fn create_parents(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        let mut chain = Vec::new();
        let mut cur = ds.parent();
        while let Some(p) = cur {
            if p.parent().is_none() {
                break; // the pool root
            }
            cur = p.parent();
            chain.push(p);
        }
        for p in chain.into_iter().rev() {
            if !self.exists(&p).await? {
                self.create(&p, &[]).await?;
            }
        }
        Ok(())
    }

    /// Destroys `ds` (with its snapshots and children when `recursive`). A dataset already gone
    /// is success; a missing pool is not.
    pub async fn destroy(&self, ds: &DatasetName, recursive: bool) -> Result<Destroyed, ZfsError> {
        let what = format!("destroy {ds}");
        let mut a = args(["destroy"]);
        if recursive {
            a.push("-r".into());
        }
        a.push(ds.as_str().into());
        match self.zfs(&what, a).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                self.pool_info(&ds.pool()).await?;
                return Ok(Destroyed::AlreadyGone);
            }
            Err(e) => return Err(e),
        }
        if self.exists(ds).await? {
            return Err(ZfsError::Unverified {
                what,
                problem: "the dataset still exists".into(),
            });
        }
        Ok(Destroyed::Now)
    }

    /// Renames `from` to `to` (zfs-fuse refuses while `from` is mounted: unmount first).
    pub async fn rename(&self, from: &DatasetName, to: &DatasetName) -> Result<(), ZfsError> {
        let what = format!("rename {from} to {to}");
        self.zfs(&what, args(["rename", from.as_str(), to.as_str()]))
            .await?;
        if !self.exists(to).await? || self.exists(from).await? {
            return Err(ZfsError::Unverified {
                what,
                problem: "the new name is missing or the old one remains".into(),
            });
        }
        Ok(())
    }

    /// Whether ZFS reports `ds` mounted.
    pub async fn is_mounted(&self, ds: &DatasetName) -> Result<bool, ZfsError> {
        Ok(self
            .get(ds.as_str(), &["mounted"])
            .await?
            .get("mounted")
            .map(String::as_str)
            == Some("yes"))
    }

    /// Mounts `ds` at its `mountpoint` property (its key loaded first where it is encrypted:
    /// [`Zfs::load_key_if_needed`]) and checks that it is mounted.
    pub async fn mount(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        let what = format!("mount {ds}");
        if self.is_mounted(ds).await? {
            return Ok(());
        }
        self.load_key_if_needed(ds).await?;
        self.zfs(&what, args(["mount", ds.as_str()])).await?;
        if !self.is_mounted(ds).await? {
            return Err(ZfsError::Unverified {
                what,
                problem: "it is not mounted afterwards".into(),
            });
        }
        Ok(())
    }

    /// Unmounts `ds`; not mounted is success.
    pub async fn unmount(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        self.unmount_with(ds, false).await
    }

    /// Unmounts `ds` even while files on it are open (`-f`): writes must stop now.
    pub async fn unmount_force(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        self.unmount_with(ds, true).await
    }

    async fn unmount_with(&self, ds: &DatasetName, force: bool) -> Result<(), ZfsError> {
        let what = format!("unmount {ds}");
        if !self.is_mounted(ds).await? {
            return Ok(());
        }
        let a = if force {
            args(["unmount", "-f", ds.as_str()])
        } else {
            args(["unmount", ds.as_str()])
        };
        self.zfs(&what, a).await?;
        if self.is_mounted(ds).await? {
            return Err(ZfsError::Unverified {
                what,
                problem: "it is still mounted".into(),
            });
        }
        Ok(())
    }

    /// The filesystems below `ds` (not `ds` itself, down to `depth` levels) with the values of
    /// `props`, in one call. A depth also keeps the snapshots of the deepest level out of what
    /// `zfs` reads.
    pub async fn descendants_with(
        &self,
        ds: &DatasetName,
        props: &[&PropertyName],
        depth: Option<u32>,
    ) -> Result<Vec<(DatasetName, Vec<String>)>, ZfsError> {
        self.filesystems_below(ds, props, depth).await
    }

    /// The direct child filesystems of `ds`.
    pub async fn children(&self, ds: &DatasetName) -> Result<Vec<DatasetName>, ZfsError> {
        let found = self.filesystems_below(ds, &[], Some(1)).await?;
        Ok(found.into_iter().map(|(name, _)| name).collect())
    }

    /// The filesystems below `ds` (down to `depth` levels), with the values of `props`:
    /// `zfs get -Hp -r`, as `zfs list` has no `-p` and `zfs get` no `-t` on every
    /// implementation (zfs-fuse); snapshots are left out by their type.
    async fn filesystems_below(
        &self,
        ds: &DatasetName,
        props: &[&PropertyName],
        depth: Option<u32>,
    ) -> Result<Vec<(DatasetName, Vec<String>)>, ZfsError> {
        let what = format!("list filesystems below {ds}");
        let wanted = std::iter::once("type")
            .chain(props.iter().map(|p| p.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let mut a = args(["get", "-Hp", "-r"]);
        if let Some(d) = depth {
            a.extend(["-d".into(), d.to_string().into()]);
        }
        a.extend(["-o".into(), "name,property,value".into(), wanted.into()]);
        a.push(ds.as_str().into());
        let out = self.zfs(&what, a).await?;
        let rows = parse::parse_get(&out).map_err(|detail| ZfsError::Parse {
            what: what.clone(),
            detail,
        })?;
        let mut found = Vec::new();
        for (name, values) in parse::group(rows) {
            if name == ds.as_str() || values.get("type").map(String::as_str) != Some("filesystem") {
                continue;
            }
            let row = props
                .iter()
                .map(|p| values.get(p.as_str()).cloned())
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| ZfsError::Parse {
                    what: what.clone(),
                    detail: format!("{name}: a property is missing from the output"),
                })?;
            let name = DatasetName::parse(&name).map_err(ZfsError::invalid_name(&what))?;
            found.push((name, row));
        }
        Ok(found)
    }

    /// Takes snapshot `snap` (with user properties `props`) and returns what identifies it.
    pub async fn snapshot(
        &self,
        snap: &SnapshotName,
        props: &[(PropertyName, String)],
    ) -> Result<SnapshotInfo, ZfsError> {
        let what = format!("snapshot {snap}");
        let mut a = args(["snapshot"]);
        push_props(&mut a, "-o", props, &what)?;
        a.push(snap.full().into());
        self.zfs(&what, a).await?;
        self.snapshot_info(snap)
            .await
            .map_err(|e| ZfsError::Unverified {
                what,
                problem: format!("the snapshot cannot be read back: {e}"),
            })
    }

    /// Keeps what was written to `ds` since its newest snapshot in a new snapshot `snap`, and
    /// returns it; None (and no snapshot left behind) when nothing was written.
    pub async fn snapshot_unsaved(
        &self,
        ds: &DatasetName,
        snap: &SnapshotName,
    ) -> Result<Option<SnapshotInfo>, ZfsError> {
        let newest = self.snapshots(ds, &[]).await?.pop();
        if newest.is_some() && self.caps.written_property {
            let written = self.get(ds.as_str(), &["written"]).await?;
            if written.get("written").map(|w| w.trim()) == Some("0") {
                return Ok(None);
            }
        }
        let info = self.snapshot(snap, &[]).await?;
        let Some(prev) = newest else {
            return Ok(Some(info));
        };
        let prev = ds
            .snapshot(&prev.name)
            .map_err(ZfsError::invalid_name(format!("snapshot {snap}")))?;
        if self.caps.written_property || self.changed_between(&prev, snap).await? {
            return Ok(Some(info));
        }
        self.destroy_snapshot(snap).await?;
        Ok(None)
    }

    /// Identity and order of one snapshot.
    pub async fn snapshot_info(&self, snap: &SnapshotName) -> Result<SnapshotInfo, ZfsError> {
        let what = format!("read snapshot {snap}");
        let props: Vec<&str> = SNAPSHOT_PROPS.split(',').collect();
        let map = self.get(&snap.full(), &props).await?;
        let grouped = BTreeMap::from([(snap.full(), map)]);
        let mut list =
            parse::snapshots_of(snap.dataset().as_str(), &grouped).map_err(|detail| {
                ZfsError::Parse {
                    what: what.clone(),
                    detail,
                }
            })?;
        list.pop().ok_or_else(|| ZfsError::NotFound {
            what,
            stderr: "no such snapshot".into(),
        })
    }

    /// The snapshots of `ds`, oldest first (by createtxg), with `extra` properties too.
    pub async fn snapshots(
        &self,
        ds: &DatasetName,
        extra: &[&PropertyName],
    ) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let what = format!("list snapshots of {ds}");
        let mut props = SNAPSHOT_PROPS.to_owned();
        for p in extra {
            props.push(',');
            props.push_str(p.as_str());
        }
        let out = self
            .zfs(
                &what,
                args([
                    "get",
                    "-Hp",
                    "-d",
                    "1",
                    "-o",
                    "name,property,value",
                    &props,
                    ds.as_str(),
                ]),
            )
            .await?;
        let rows = parse::parse_get(&out).map_err(|detail| ZfsError::Parse {
            what: what.clone(),
            detail,
        })?;
        parse::snapshots_of(ds.as_str(), &parse::group(rows))
            .map_err(|detail| ZfsError::Parse { what, detail })
    }

    /// Destroys one snapshot; already gone is success. A held snapshot is `Busy`.
    pub async fn destroy_snapshot(&self, snap: &SnapshotName) -> Result<Destroyed, ZfsError> {
        let what = format!("destroy {snap}");
        match self
            .zfs(&what, args(["destroy".to_owned(), snap.full()]))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                self.pool_info(&snap.dataset().pool()).await?;
                return Ok(Destroyed::AlreadyGone);
            }
            Err(e) => return Err(e),
        }
        match self.snapshot_info(snap).await {
            Err(e) if e.is_not_found() => Ok(Destroyed::Now),
            Ok(_) => Err(ZfsError::Unverified {
                what,
                problem: "the snapshot still exists".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Places hold `tag` on `snap` (it can then not be destroyed); already held is success.
    pub async fn hold(&self, snap: &SnapshotName, tag: &HoldTag) -> Result<(), ZfsError> {
        let what = format!("hold {snap} as {}", tag.as_str());
        match self
            .zfs(
                &what,
                args(["hold".to_owned(), tag.as_str().to_owned(), snap.full()]),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Releases hold `tag` on `snap`; not held is success.
    pub async fn release(&self, snap: &SnapshotName, tag: &HoldTag) -> Result<(), ZfsError> {
        let what = format!("release {} on {snap}", tag.as_str());
        match self
            .zfs(
                &what,
                args(["release".to_owned(), tag.as_str().to_owned(), snap.full()]),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() && self.snapshot_info(snap).await.is_ok() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Rolls the dataset back to `snap`, which must be its newest snapshot: this never
    /// destroys later snapshots (no `-r`).
    pub async fn rollback(&self, snap: &SnapshotName) -> Result<(), ZfsError> {
        self.zfs(
            &format!("rollback to {snap}"),
            args(["rollback".to_owned(), snap.full()]),
        )
        .await?;
        Ok(())
    }
}
