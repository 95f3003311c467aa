//! `/openapi/v2`: the served kinds as a Swagger 2.0 document, built from the same schemas as
//! `/openapi/v3` (`openapi.rs`), converted the way the real API server publishes a CRD's
//! schema in v2. kubectl before 1.27 reads it to validate, to compute apply patches and for
//! `kubectl explain`, and asks for it in the protobuf form of gnostic's `openapi_v2.Document`;
//! other clients (Helm, GitOps tools) may ask for JSON.

use prost::Message;
use serde_json::{Map, Value, json};

use super::openapi::{insert_paths, schema_name, type_schema};
use super::registry::{Registry, ResourceType};

/// The media type of the protobuf form as answered (clients ask for
/// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, whose `@` Go's media-type
/// parser refuses in a response).
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `GET /openapi/v2` in JSON.
pub fn document(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for t in registry.all() {
        insert_paths(&mut paths, t, operation);
        definitions.insert(schema_name(t), to_v2(type_schema(t)));
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

fn operation(t: &ResourceType, action: &str, writes: bool) -> Value {
    // Protobuf both ways only for the kinds that have it here.
    let (consumes, produces) =
        if crate::apiserver::protobuf::answer::answers(&t.api_version(), &t.kind) {
            (
                json!([
                    "application/json",
                    "application/yaml",
                    "application/vnd.kubernetes.protobuf"
                ]),
                json!(["application/json", "application/vnd.kubernetes.protobuf"]),
            )
        } else {
            (
                json!(["application/json", "application/yaml"]),
                json!(["application/json"]),
            )
        };
    let mut op = json!({
        "operationId": format!("{action}{}", t.kind),
        "consumes": consumes,
        "produces": produces,
        "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{}", schema_name(t))}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind},
    });
    if writes {
        op["parameters"] = ["dryRun", "fieldManager", "fieldValidation"]
            .iter()
            .map(|p| json!({"name": p, "in": "query", "type": "string", "uniqueItems": true}))
            .collect();
    }
    op
}

/// A structural (v3) schema as the real server publishes it in v2: what v2 cannot say is
/// left out (`nullable` and int-or-string fields lose their type, `anyOf`/`oneOf`/`not`
/// go, an object keeping unknown fields loses its properties so old clients do not refuse
/// them as unknown).
pub fn to_v2(mut s: Value) -> Value {
    let Some(m) = s.as_object_mut() else {
        return s;
    };
    for k in ["anyOf", "oneOf", "not", "x-kubernetes-validations"] {
        m.remove(k);
    }
    let untyped = m.remove("nullable").is_some_and(|n| n == true)
        || m.get("x-kubernetes-int-or-string")
            .is_some_and(|v| v == true);
    if untyped {
        m.remove("type");
    }
    if m.get("x-kubernetes-preserve-unknown-fields")
        .is_some_and(|v| v == true)
    {
        m.remove("properties");
        m.remove("required");
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        for v in props.values_mut() {
            *v = to_v2(v.take());
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = m.get_mut(k).filter(|v| v.is_object()) {
            *v = to_v2(v.take());
        }
    }
    if m.get("type").is_some_and(|t| t == "array") && !m.contains_key("items") {
        // An array needs exactly one item schema in v2; without one it is left untyped.
        m.remove("type");
    }
    s
}

/// The protobuf form of `document`.
pub fn to_protobuf(doc: &Value) -> Vec<u8> {
    let paths = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, item)| pb::NamedPathItem {
            name: name.clone(),
            value: Some(pb::PathItem {
                get: item.get("get").map(pb_operation),
                put: item.get("put").map(pb_operation),
                post: item.get("post").map(pb_operation),
                delete: item.get("delete").map(pb_operation),
                patch: item.get("patch").map(pb_operation),
            }),
        })
        .collect();
    pb::Document {
        swagger: str_of(&doc["swagger"]),
        info: Some(pb::Info {
            title: str_of(&doc["info"]["title"]),
            version: str_of(&doc["info"]["version"]),
        }),
        paths: Some(pb::Paths { path: paths }),
        definitions: Some(pb::Definitions {
            additional_properties: named_schemas(&doc["definitions"]),
        }),
    }
    .encode_to_vec()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A value gnostic keeps as YAML text (JSON is YAML).
fn any(v: &Value) -> pb::Any {
    pb::Any {
        yaml: v.to_string(),
    }
}

fn extensions(m: &Map<String, Value>) -> Vec<pb::NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| pb::NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

fn named_schemas(v: &Value) -> Vec<pb::NamedSchema> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| pb::NamedSchema {
            name: name.clone(),
            value: Some(pb_schema(s)),
        })
        .collect()
}

fn pb_operation(op: &Value) -> pb::Operation {
    let parameters = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| pb::ParametersItem {
            parameter: Some(pb::Parameter {
                non_body_parameter: Some(pb::NonBodyParameter {
                    query_parameter_sub_schema: Some(pb::QueryParameterSubSchema {
                        r#in: str_of(&p["in"]),
                        name: str_of(&p["name"]),
                        r#type: str_of(&p["type"]),
                        unique_items: p["uniqueItems"] == true,
                    }),
                }),
            }),
        })
        .collect();
    let responses = op["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(code, r)| pb::NamedResponseValue {
            name: code.clone(),
            value: Some(pb::ResponseValue {
                response: Some(pb::Response {
                    description: str_of(&r["description"]),
                    schema: Some(pb::SchemaItem {
                        schema: Some(pb_schema(&r["schema"])),
                    }),
                }),
            }),
        })
        .collect();
    pb::Operation {
        operation_id: str_of(&op["operationId"]),
        produces: strings(&op["produces"]),
        consumes: strings(&op["consumes"]),
        parameters,
        responses: Some(pb::Responses {
            response_code: responses,
        }),
        vendor_extension: op.as_object().map(extensions).unwrap_or_default(),
    }
}

fn pb_schema(s: &Value) -> pb::Schema {
    let empty = Map::new();
    let m = s.as_object().unwrap_or(&empty);
    let f64_of = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or_default();
    let i64_of = |k: &str| m.get(k).and_then(Value::as_i64).unwrap_or_default();
    let additional_properties = match m.get("additionalProperties") {
        Some(Value::Bool(b)) => Some(pb::AdditionalPropertiesItem {
            oneof: Some(pb::AdditionalPropertiesOneof::Boolean(*b)),
        }),
        Some(v @ Value::Object(_)) => Some(pb::AdditionalPropertiesItem {
            oneof: Some(pb::AdditionalPropertiesOneof::Schema(Box::new(pb_schema(
                v,
            )))),
        }),
        _ => None,
    };
    pb::Schema {
        r#ref: m.get("$ref").map(str_of).unwrap_or_default(),
        format: m.get("format").map(str_of).unwrap_or_default(),
        title: m.get("title").map(str_of).unwrap_or_default(),
        description: m.get("description").map(str_of).unwrap_or_default(),
        default: m.get("default").map(any),
        multiple_of: f64_of("multipleOf"),
        maximum: f64_of("maximum"),
        exclusive_maximum: m.get("exclusiveMaximum") == Some(&Value::Bool(true)),
        minimum: f64_of("minimum"),
        exclusive_minimum: m.get("exclusiveMinimum") == Some(&Value::Bool(true)),
        max_length: i64_of("maxLength"),
        min_length: i64_of("minLength"),
        pattern: m.get("pattern").map(str_of).unwrap_or_default(),
        max_items: i64_of("maxItems"),
        min_items: i64_of("minItems"),
        unique_items: m.get("uniqueItems") == Some(&Value::Bool(true)),
        max_properties: i64_of("maxProperties"),
        min_properties: i64_of("minProperties"),
        required: m.get("required").map(strings).unwrap_or_default(),
        r#enum: m
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(any)
            .collect(),
        additional_properties: additional_properties.map(Box::new),
        r#type: m.get("type").map(|t| pb::TypeItem {
            value: match t {
                Value::Array(_) => strings(t),
                other => vec![str_of(other)],
            },
        }),
        items: m.get("items").map(|i| pb::ItemsItem {
            schema: vec![pb_schema(i)],
        }),
        all_of: m
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(pb_schema)
            .collect(),
        properties: m.get("properties").map(|p| pb::Properties {
            additional_properties: named_schemas(p),
        }),
        vendor_extension: extensions(m),
    }
}

/// The part of gnostic's `openapi_v2` protobuf messages (package `openapi.v2`, the form
/// client-go's `OpenAPISchema()` decodes) that this server fills. Tags are gnostic's.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub post: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(string, repeated, tag = "6")]
        pub produces: Vec<String>,
        #[prost(string, repeated, tag = "7")]
        pub consumes: Vec<String>,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        pub responses: Option<Responses>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
        #[prost(bool, tag = "20")]
        pub unique_items: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Responses {
        #[prost(message, repeated, tag = "1")]
        pub response_code: Vec<NamedResponseValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedResponseValue {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<ResponseValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        pub response: Option<Response>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(string, tag = "1")]
        pub description: String,
        #[prost(message, optional, tag = "2")]
        pub schema: Option<SchemaItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SchemaItem {
        #[prost(message, optional, tag = "1")]
        pub schema: Option<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }
    /// gnostic's `Any`: the value as YAML (its `google.protobuf.Any` field is left unset).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(oneof = "AdditionalPropertiesOneof", tags = "1, 2")]
        pub oneof: Option<AdditionalPropertiesOneof>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum AdditionalPropertiesOneof {
        #[prost(message, tag = "1")]
        Schema(Box<Schema>),
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub r#ref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "3")]
        pub title: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(message, optional, tag = "5")]
        pub default: Option<Any>,
        #[prost(double, tag = "6")]
        pub multiple_of: f64,
        #[prost(double, tag = "7")]
        pub maximum: f64,
        #[prost(bool, tag = "8")]
        pub exclusive_maximum: bool,
        #[prost(double, tag = "9")]
        pub minimum: f64,
        #[prost(bool, tag = "10")]
        pub exclusive_minimum: bool,
        #[prost(int64, tag = "11")]
        pub max_length: i64,
        #[prost(int64, tag = "12")]
        pub min_length: i64,
        #[prost(string, tag = "13")]
        pub pattern: String,
        #[prost(int64, tag = "14")]
        pub max_items: i64,
        #[prost(int64, tag = "15")]
        pub min_items: i64,
        #[prost(bool, tag = "16")]
        pub unique_items: bool,
        #[prost(int64, tag = "17")]
        pub max_properties: i64,
        #[prost(int64, tag = "18")]
        pub min_properties: i64,
        #[prost(string, repeated, tag = "19")]
        pub required: Vec<String>,
        #[prost(message, repeated, tag = "20")]
        pub r#enum: Vec<Any>,
        #[prost(message, optional, boxed, tag = "21")]
        pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, repeated, tag = "24")]
        pub all_of: Vec<Schema>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }
}
