//! Stream identities, manifests (the sidecar `<id>.json` of DESIGN §4), and the JSON form of
//! the planner's input.

use serde::{Deserialize, Serialize};

use super::plan::{Edge, Snap};

/// `<namespace>/<name>` of a project, both DNS-1123 labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectKey {
    pub namespace: String,
    pub name: String,
}

impl ProjectKey {
    pub fn new(namespace: &str, name: &str) -> Result<Self, String> {
        for (what, v) in [("namespace", namespace), ("project name", name)] {
            if !projstore_api::names::is_dns1123_label(v) {
                return Err(format!(
                    "invalid {what} {:?}: must be a DNS-1123 label",
                    v.escape_debug().to_string()
                ));
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The id of a stream: `<from>--<to>`, or `full--<to>` for a full stream. It is also the file
/// stem, so it is checked like a file name from outside: no `/`, no leading `-` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// The id of a stream from snapshot `from` (short names) to `to`.
    pub fn for_snapshots(from: Option<&str>, to: &str) -> Result<Self, String> {
        Self::parse(&format!("{}--{to}", from.unwrap_or("full")))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "invalid stream id {:?}: {why}",
                s.escape_debug().to_string()
            ))
        };
        if s.is_empty() || s.len() > 200 {
            return bad("must be 1 to 200 characters");
        }
        if s.starts_with('-') || s.starts_with('.') {
            return bad("must not start with '-' or '.'");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            return bad("only letters, digits, '_', '-', '.' and ':' are allowed");
        }
        if !s.contains("--") {
            return bad("must have the form <from>--<to>");
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a stream file name `<id>.zstream`.
    pub fn from_file_name(file: &str) -> Result<Self, String> {
        match file.strip_suffix(".zstream") {
            Some(stem) => Self::parse(stem),
            None => Err(format!(
                "not a stream file name: {:?}",
                file.escape_debug().to_string()
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn file_name(&self) -> String {
        format!("{}.zstream", self.0)
    }
    pub fn manifest_name(&self) -> String {
        format!("{}.json", self.0)
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A snapshot in a manifest or in the planner's JSON input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotJson {
    pub name: String,
    /// Decimal string: 64-bit GUIDs do not survive JSON numbers in every reader.
    pub guid: String,
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub time: i64,
}

impl SnapshotJson {
    fn to_snap(&self) -> Result<Snap, String> {
        if self.guid.is_empty() || !self.guid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("guid {:?} is not a decimal string", self.guid));
        }
        let guid = self
            .guid
            .parse::<u64>()
            .map_err(|_| format!("guid {:?} is out of range", self.guid))?;
        Ok(Snap {
            name: self.name.clone(),
            guid,
            createtxg: self.createtxg,
            time: self.time,
        })
    }

    pub fn from_snap(s: &Snap) -> Self {
        Self {
            name: s.name.clone(),
            guid: s.guid.to_string(),
            createtxg: s.createtxg,
            time: s.time,
        }
    }
}

/// The manifest written beside a stream file, last: its presence marks the stream complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `<namespace>/<name>`.
    pub project: String,
    pub from: Option<SnapshotJson>,
    pub to: SnapshotJson,
    pub epoch: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the stream file.
    pub sha256: String,
    /// RFC 3339.
    pub created_at: String,
    /// Node that wrote the stream.
    pub node: String,
}

impl Manifest {
    /// The stream as a planner edge.
    pub fn edge(&self, id: &StreamId) -> Result<Edge, String> {
        Ok(Edge {
            id: id.as_str().to_owned(),
            from: self.from.as_ref().map(SnapshotJson::to_snap).transpose()?,
            to: self.to.to_snap()?,
            bytes: self.bytes,
        })
    }
}

/// One stream of the planner's JSON input (`projstore-agent streams plan --json FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanInput {
    id: String,
    from: Option<SnapshotJson>,
    to: SnapshotJson,
    bytes: u64,
}

/// The planner's JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOutput {
    pub chain: Vec<String>,
    pub deletable: Vec<String>,
}

/// Parses the planner's JSON input into edges; any deviation from the shape is an error.
pub fn parse_plan_input(json: &str) -> Result<Vec<Edge>, String> {
    let input: Vec<PlanInput> =
        serde_json::from_str(json).map_err(|e| format!("not a list of streams: {e}"))?;
    input
        .into_iter()
        .map(|s| {
            let ctx = |e: String| format!("stream {:?}: {e}", s.id);
            Ok(Edge {
                id: s.id.clone(),
                from: s
                    .from
                    .as_ref()
                    .map(SnapshotJson::to_snap)
                    .transpose()
                    .map_err(ctx)?,
                to: s.to.to_snap().map_err(ctx)?,
                bytes: s.bytes,
            })
        })
        .collect()
}
