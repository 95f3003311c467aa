//! Hand-written schema pieces where the derived ones do not say enough.

use schemars::{Schema, SchemaGenerator, json_schema};

use crate::names;

/// A quantity written as a string (`10Gi`); its bounds are CEL rules on the field.
pub(crate) fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": names::QUANTITY,
        "description": "A Kubernetes quantity, e.g. 10Gi"
    })
}
