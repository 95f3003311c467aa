//! Keys of encrypted datasets (OpenZFS). A copy received raw (`zfs send -w`: an encrypted
//! dataset's blocks only ever leave their host so) arrives as its own encryption root with
//! its key unloaded, and cannot be mounted — so a failover or move onto it would fail. Before
//! a dataset is mounted its key is loaded: from the encryption root's own `keylocation` when
//! that names a file or URL, or else, for such a received root, from the location of the key
//! this host's pool encrypts its projects with (the same key on every host, the operator's
//! set-up) — only when the received root's key format and PBKDF2 iterations are that key's
//! (they come from the sending peer: a hostile one could otherwise make the agent spend its
//! time deriving keys), and within a minute. Where neither works the mount fails saying so;
//! nothing is guessed.

use std::collections::BTreeMap;

use super::{DatasetName, PropertyName, Zfs, ZfsError, args};

/// What loading the key of a dataset takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLoad {
    /// Not encrypted, or its key is loaded.
    Ready,
    /// `zfs load-key [-L location] root`.
    Load {
        root: String,
        location: Option<String>,
    },
    /// Its key is not loaded and cannot be without someone: why.
    Impossible(String),
}

/// The encryption root of `ds` as its properties (`own`) name it: itself where none is named.
fn encryption_root(ds: &str, own: &BTreeMap<String, String>) -> String {
    own.get("encryptionroot")
        .filter(|r| !r.is_empty() && r.as_str() != "-")
        .map_or(ds, String::as_str)
        .to_owned()
}

/// Whether the agent can read a key from `location` without a prompt.
fn readable(location: &str) -> bool {
    ["file:///", "https://", "http://"]
        .iter()
        .any(|p| location.starts_with(p))
}

/// The properties of `ds` (and of the encryption root above it) [`key_to_load`] reads.
pub const KEY_PROPERTIES: [&str; 5] = [
    "keystatus",
    "encryptionroot",
    "keylocation",
    "keyformat",
    "pbkdf2iters",
];

/// How long `zfs load-key` may take.
const LOAD_KEY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What loading the key of `ds` takes, from its [`KEY_PROPERTIES`] (`own`, as `zfs get -Hp`
/// gives them), the `keylocation` of its encryption root, and the properties of the encryption
/// root above it on this host (`local`, None where the parent is not encrypted).
pub fn key_to_load(
    ds: &str,
    own: &BTreeMap<String, String>,
    root_location: &str,
    local: Option<&BTreeMap<String, String>>,
) -> KeyLoad {
    if own.get("keystatus").map(String::as_str) != Some("unavailable") {
        return KeyLoad::Ready;
    }
    let root = encryption_root(ds, own);
    if readable(root_location) {
        return KeyLoad::Load {
            root,
            location: None,
        };
    }
    let local_location = local
        .and_then(|l| l.get("keylocation"))
        .map(String::as_str)
        .filter(|l| readable(l));
    let same_wrapping = |l: &BTreeMap<String, String>| {
        ["keyformat", "pbkdf2iters"]
            .iter()
            .all(|p| own.get(*p).is_some() && own.get(*p) == l.get(*p))
    };
    match (local_location, local) {
        (Some(l), Some(props)) if root == ds && same_wrapping(props) => KeyLoad::Load {
            root,
            location: Some(l.to_owned()),
        },
        (Some(_), Some(props)) if root == ds => KeyLoad::Impossible(format!(
            "{ds} is encrypted and its key is not loaded: it was received wrapped as keyformat {:?} \
             with {:?} PBKDF2 iterations, not as the key this pool encrypts projects with \
             ({:?}, {:?}), so that key is not tried (load it by hand: zfs load-key {root})",
            own.get("keyformat").map_or("", String::as_str),
            own.get("pbkdf2iters").map_or("", String::as_str),
            props.get("keyformat").map_or("", String::as_str),
            props.get("pbkdf2iters").map_or("", String::as_str),
        )),
        _ => KeyLoad::Impossible(format!(
            "{ds} is encrypted (encryption root {root}) and its key is not loaded: its keylocation \
             is {root_location:?}, which the agent cannot read without a prompt, and the pool \
             encrypts no projects with a key it can read; give the projects' filesystem of every \
             pool the same key with keylocation=file:///… (or load it by hand: zfs load-key {root})"
        )),
    }
}

impl Zfs {
    /// Loads the key of `ds` where it is encrypted and unloaded (see [`key_to_load`]), and
    /// checks that it is loaded afterwards. Nothing where the host's ZFS has no encryption.
    pub async fn load_key_if_needed(&self, ds: &DatasetName) -> Result<(), ZfsError> {
        if !self.caps.raw_send {
            return Ok(());
        }
        let own = self.get(ds.as_str(), &KEY_PROPERTIES).await?;
        if own.get("keystatus").map(String::as_str) != Some("unavailable") {
            return Ok(());
        }
        let what = format!("load the key of {ds}");
        // Names as zfs printed them, checked before they are used again.
        let name = |n: &str| DatasetName::parse(n).map_err(ZfsError::invalid_name(&what));
        let prop = |p: &str| PropertyName::parse(p).map_err(ZfsError::invalid_name(&what));
        let root = encryption_root(ds.as_str(), &own);
        let root_location = if root == ds.as_str() {
            own.get("keylocation").cloned().unwrap_or_default()
        } else {
            self.property(&name(&root)?, &prop("keylocation")?).await?
        };
        let local = match ds.parent() {
            Some(parent) => {
                let above = self.property(&parent, &prop("encryptionroot")?).await?;
                if above.is_empty() || above == "-" {
                    None
                } else {
                    Some(self.get_props(&name(&above)?, &KEY_PROPERTIES).await?)
                }
            }
            None => None,
        };
        let (root, location) = match key_to_load(ds.as_str(), &own, &root_location, local.as_ref())
        {
            KeyLoad::Ready => return Ok(()),
            KeyLoad::Load { root, location } => (root, location),
            KeyLoad::Impossible(problem) => return Err(ZfsError::Unverified { what, problem }),
        };
        let mut a = vec!["load-key".to_owned()];
        if let Some(l) = location {
            a.extend(["-L".to_owned(), l]);
        }
        a.push(root);
        let loaded = match tokio::time::timeout(LOAD_KEY_TIMEOUT, self.zfs(&what, args(a))).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(ZfsError::Unverified {
                what: what.clone(),
                problem: format!("zfs load-key took longer than {LOAD_KEY_TIMEOUT:?}"),
            }),
        };
        // Another mount under the same encryption root may have loaded it meanwhile.
        match self.property(ds, &prop("keystatus")?).await?.as_str() {
            "available" => Ok(()),
            other => Err(loaded.err().unwrap_or(ZfsError::Unverified {
                what,
                problem: format!("its keystatus is {other:?} afterwards"),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `zfs get -Hp -o name,property,value keystatus,encryptionroot,keylocation` of a copy
    /// received raw on OpenZFS 2.2, and of one that is not encrypted.
    const RECEIVED_RAW: &str = "tank/projects/alice/thesis\tkeystatus\tunavailable\n\
        tank/projects/alice/thesis\tencryptionroot\ttank/projects/alice/thesis\n\
        tank/projects/alice/thesis\tkeylocation\tprompt\n\
        tank/projects/alice/thesis\tkeyformat\traw\n\
        tank/projects/alice/thesis\tpbkdf2iters\t0\n";
    /// The same of this host's `tank/projects`, encrypted with a key file.
    const LOCAL_ROOT: &str = "tank/projects\tkeystatus\tavailable\n\
        tank/projects\tencryptionroot\ttank/projects\n\
        tank/projects\tkeylocation\tfile:///etc/projstore/zfs.key\n\
        tank/projects\tkeyformat\traw\n\
        tank/projects\tpbkdf2iters\t0\n";
    const PLAIN: &str = "tank/projects/alice/thesis\tkeystatus\t-\n\
        tank/projects/alice/thesis\tencryptionroot\t-\n\
        tank/projects/alice/thesis\tkeylocation\tnone\n";

    fn props(out: &str) -> BTreeMap<String, String> {
        super::super::parse::parse_get(out)
            .unwrap()
            .into_iter()
            .map(|r| (r.property, r.value))
            .collect()
    }

    const DS: &str = "tank/projects/alice/thesis";

    #[test]
    fn a_raw_received_copy_is_opened_with_the_key_the_pool_encrypts_projects_with() {
        let local = props(LOCAL_ROOT);
        assert_eq!(
            key_to_load(DS, &props(RECEIVED_RAW), "prompt", Some(&local)),
            KeyLoad::Load {
                root: DS.into(),
                location: Some("file:///etc/projstore/zfs.key".into())
            }
        );
        // Its own location wins where the agent can read it.
        assert_eq!(
            key_to_load(
                DS,
                &props(RECEIVED_RAW),
                "file:///keys/thesis",
                Some(&local)
            ),
            KeyLoad::Load {
                root: DS.into(),
                location: None
            }
        );
    }

    #[test]
    fn a_key_wrapped_otherwise_than_the_pools_is_not_tried_with_it() {
        // A peer chose a passphrase with 2^31 PBKDF2 iterations: deriving would take minutes.
        let mut hostile = props(RECEIVED_RAW);
        hostile.insert("keyformat".into(), "passphrase".into());
        hostile.insert("pbkdf2iters".into(), "2147483647".into());
        match key_to_load(DS, &hostile, "prompt", Some(&props(LOCAL_ROOT))) {
            KeyLoad::Impossible(why) => assert!(why.contains("2147483647"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_that_needs_a_prompt_is_not_guessed() {
        let mut prompting = props(LOCAL_ROOT);
        prompting.insert("keylocation".into(), "prompt".into());
        for local in [None, Some(&prompting)] {
            match key_to_load(DS, &props(RECEIVED_RAW), "prompt", local) {
                KeyLoad::Impossible(why) => {
                    assert!(
                        why.contains("not loaded") && why.contains("zfs load-key"),
                        "{why}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_inherited_key_is_loaded_at_its_root_and_a_plain_dataset_needs_nothing() {
        let mut child = props(RECEIVED_RAW);
        child.insert("encryptionroot".into(), "tank/projects".into());
        assert_eq!(
            key_to_load(DS, &child, "file:///etc/projstore/zfs.key", None),
            KeyLoad::Load {
                root: "tank/projects".into(),
                location: None
            }
        );
        // An inherited key the agent cannot read is not replaced by another.
        assert!(matches!(
            key_to_load(DS, &child, "prompt", Some(&props(LOCAL_ROOT))),
            KeyLoad::Impossible(_)
        ));
        assert_eq!(key_to_load(DS, &props(PLAIN), "none", None), KeyLoad::Ready);
        let mut loaded = props(RECEIVED_RAW);
        loaded.insert("keystatus".into(), "available".into());
        assert_eq!(key_to_load(DS, &loaded, "prompt", None), KeyLoad::Ready);
    }
}
