//! Validates HTTP requests and answers against Firecracker's swagger 2.0
//! spec (`spec/firecracker-v1.16.1.yaml` of this crate, embedded), parsed
//! here from the YAML.
//!
//! Stricter than the spec where the spec is loose: an object field not
//! declared in the schema is an error unless the schema says
//! `additionalProperties: true` (Firecracker's own deserializers refuse
//! unknown fields).

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::StandInError;

/// Where the one copy of the spec lives, for messages and readers.
pub const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/firecracker-v1.16.1.yaml");

/// The spec's text, compiled in so that the stand-in works from any
/// crate's tests whatever their working directory.
pub const SPEC_YAML: &str = include_str!("../../spec/firecracker-v1.16.1.yaml");

/// The parsed spec.
pub struct ApiSpec {
    paths: Vec<(String, Map<String, Value>)>,
    definitions: Map<String, Value>,
}

/// One operation matched by method and concrete path.
pub struct Operation<'a> {
    pub template: String,
    pub path_params: BTreeMap<String, String>,
    pub op: &'a Value,
}

impl ApiSpec {
    /// Parses the embedded v1.16.1 spec ([`SPEC_YAML`]).
    pub fn load() -> Result<ApiSpec, StandInError> {
        Self::parse(SPEC_YAML)
    }

    /// Parses a swagger 2.0 document given as YAML.
    pub fn parse(text: &str) -> Result<ApiSpec, StandInError> {
        let bad = |reason: String| StandInError::Spec { reason };
        let docs = YamlLoader::load_from_str(text).map_err(|e| bad(format!("not YAML: {e}")))?;
        let root = docs
            .first()
            .map(yaml_to_json)
            .ok_or_else(|| bad("the document is empty".into()))?;
        if root["swagger"] != "2.0" {
            return Err(bad(format!(
                "expected a swagger 2.0 document, got swagger {}",
                root["swagger"]
            )));
        }
        let mut paths = Vec::new();
        for (template, item) in root["paths"]
            .as_object()
            .ok_or_else(|| bad("it has no paths".into()))?
        {
            let item = item
                .as_object()
                .ok_or_else(|| bad(format!("the path item {template} is not a map")))?;
            paths.push((template.clone(), item.clone()));
        }
        let definitions = root["definitions"]
            .as_object()
            .ok_or_else(|| bad("it has no definitions".into()))?
            .clone();
        Ok(ApiSpec { paths, definitions })
    }

    /// All (METHOD, template) pairs of the spec.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (template, item) in &self.paths {
            for method in item.keys() {
                ops.push((method.to_uppercase(), template.clone()));
            }
        }
        ops
    }

    /// Finds the operation for `method path`.
    pub fn operation(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let path = path.split('?').next().unwrap_or(path);
        let mut path_matched = false;
        for (template, item) in &self.paths {
            let Some(params) = match_template(template, path) else {
                continue;
            };
            path_matched = true;
            if let Some(op) = item.get(&method.to_lowercase()) {
                return Ok(Operation {
                    template: template.clone(),
                    path_params: params,
                    op,
                });
            }
        }
        if path_matched {
            Err(format!(
                "{method} is not an operation of {path} in the spec"
            ))
        } else {
            Err(format!("{path} is not a path of the spec"))
        }
    }

    /// Validates a whole request; returns the matched template.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<String, Vec<String>> {
        let op = self.operation(method, path).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let params = op.op["parameters"].as_array().cloned().unwrap_or_default();
        let body_param = params.iter().find(|p| p["in"] == "body");
        for p in params.iter().filter(|p| p["in"] == "path") {
            let name = p["name"].as_str().unwrap_or_default();
            if op.path_params.get(name).is_none_or(|v| v.is_empty()) {
                errors.push(format!("path parameter {name} is missing"));
            }
        }
        match body_param {
            None => {
                if !body.is_empty() {
                    errors.push(format!(
                        "{method} {} takes no body, got {} bytes",
                        op.template,
                        body.len()
                    ));
                }
            }
            Some(param) => {
                if body.is_empty() {
                    if param["required"] == true {
                        errors.push(format!("{method} {} requires a body", op.template));
                    }
                } else {
                    if content_type != Some("application/json") {
                        errors.push(format!(
                            "body sent with content type {content_type:?}, not application/json"
                        ));
                    }
                    match serde_json::from_slice::<Value>(body) {
                        Err(e) => errors.push(format!("body is not JSON: {e}")),
                        Ok(json) => {
                            self.validate_value(&param["schema"], &json, "body", &mut errors);
                            // Firecracker refuses a body whose id differs from the path's.
                            for (name, value) in &op.path_params {
                                if let Some(in_body) = json.get(name) {
                                    if in_body != value.as_str() {
                                        errors.push(format!(
                                            "body.{name} = {in_body} differs from the path's {value:?}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(op.template)
        } else {
            Err(errors)
        }
    }

    /// Validates an answer against the operation's response schemas.
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> Result<(), Vec<String>> {
        let op = self.operation(method, path).map_err(|e| vec![e])?;
        let responses = &op.op["responses"];
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .ok_or_else(|| {
                vec![format!(
                    "status {status} is not declared for {method} {}",
                    op.template
                )]
            })?;
        let mut errors = Vec::new();
        match response.get("schema") {
            None => {
                if !body.is_empty() {
                    errors.push(format!(
                        "status {status} declares no body, got {} bytes",
                        body.len()
                    ));
                }
            }
            Some(schema) => match serde_json::from_slice::<Value>(body) {
                Err(e) => errors.push(format!("answer body is not JSON: {e}")),
                Ok(json) => self.validate_value(schema, &json, "answer", &mut errors),
            },
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks `value` against `schema`, collecting every violation.
    pub fn validate_value(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                return;
            }
        };
        if let Some(choices) = schema.get("enum").and_then(Value::as_array) {
            if !choices.contains(value) {
                errors.push(format!("{at}: {value} is not one of {choices:?}"));
                return;
            }
        }
        let ty = schema
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| schema.get("properties").map(|_| "object"));
        match ty {
            Some("object") => self.validate_object(schema, value, at, errors),
            Some("array") => match value.as_array() {
                None => errors.push(format!("{at}: expected an array, got {value}")),
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.validate_value(&schema["items"], item, &format!("{at}[{i}]"), errors);
                    }
                }
            },
            Some("string") => match value.as_str() {
                None => errors.push(format!("{at}: expected a string, got {value}")),
                Some(s) => check_format(schema, s, at, errors),
            },
            Some("integer") => {
                let n = value
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| value.as_u64().map(i128::from));
                match n {
                    None => errors.push(format!("{at}: expected an integer, got {value}")),
                    Some(n) => {
                        if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
                            if n < i128::from(min) {
                                errors.push(format!("{at}: {n} is below the minimum {min}"));
                            }
                        }
                        if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
                            if n > i128::from(max) {
                                errors.push(format!("{at}: {n} is above the maximum {max}"));
                            }
                        }
                        if schema.get("format") == Some(&Value::from("int32"))
                            && (n < i128::from(i32::MIN) || n > i128::from(i32::MAX))
                        {
                            errors.push(format!("{at}: {n} does not fit int32"));
                        }
                    }
                }
            }
            Some("number") if !value.is_number() => {
                errors.push(format!("{at}: expected a number, got {value}"))
            }
            Some("boolean") if !value.is_boolean() => {
                errors.push(format!("{at}: expected a boolean, got {value}"))
            }
            Some("number" | "boolean") => {}
            Some(other) => errors.push(format!(
                "{at}: the validator does not know schema type {other}"
            )),
            None => {} // An empty schema accepts anything.
        }
    }

    fn validate_object(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(obj) = value.as_object() else {
            errors.push(format!("{at}: expected an object, got {value}"));
            return;
        };
        let empty = Map::new();
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errors.push(format!("{at}: required field {name} is missing"));
            }
        }
        for (key, v) in obj {
            match props.get(key) {
                Some(prop) => self.validate_value(prop, v, &format!("{at}.{key}"), errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(true)) => {}
                    Some(extra @ Value::Object(_)) => {
                        self.validate_value(extra, v, &format!("{at}.{key}"), errors)
                    }
                    _ => errors.push(format!("{at}: unknown field {key}")),
                },
            }
        }
    }

    /// Follows `$ref`s; `Err` names a reference the spec cannot satisfy.
    fn resolve<'a>(&'a self, schema: &'a Value) -> Result<&'a Value, String> {
        let mut schema = schema;
        // A `$ref` wins over sibling keys (swagger 2.0).
        while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/definitions/")
                .ok_or_else(|| format!("the validator does not follow $ref {r}"))?;
            schema = self
                .definitions
                .get(name)
                .ok_or_else(|| format!("$ref to a missing definition {name}"))?;
        }
        Ok(schema)
    }
}

/// Formats the validator understands: the spec's int formats (checked with
/// integers) and, for strings, a regular expression (the spec writes the MMDS
/// address pattern as a format).
fn check_format(schema: &Value, s: &str, at: &str, errors: &mut Vec<String>) {
    let Some(format) = schema.get("format").and_then(Value::as_str) else {
        return;
    };
    if ["int32", "int64", "date-time", "byte", "binary", "password"].contains(&format) {
        return;
    }
    match regex::Regex::new(&format!("^(?:{format})$")) {
        Ok(re) if re.is_match(s) => {}
        Ok(_) => errors.push(format!("{at}: {s:?} does not match the format {format}")),
        Err(e) => errors.push(format!("{at}: the format {format} is not a regex: {e}")),
    }
}

/// `/drives/{drive_id}` against `/drives/rootfs` → `{drive_id: rootfs}`.
fn match_template(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = BTreeMap::new();
    for (ts, ps) in t.iter().zip(&p) {
        if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if ps.is_empty() {
                return None;
            }
            params.insert(name.to_string(), ps.to_string());
        } else if ts != ps {
            return None;
        }
    }
    Some(params)
}

/// YAML to JSON; map keys (e.g. status codes) become strings.
fn yaml_to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}
