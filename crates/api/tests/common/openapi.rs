//! Checks JSON bodies against the official Fly Machines OpenAPI document
//! (a copy lives in `tests/data`). Covers the part of OpenAPI 3.0 schemas that
//! document uses: `$ref`, `allOf`, `type`, `nullable`, `enum`, `properties`,
//! `required`, `items`, `additionalProperties`, `minimum`/`maximum`.

use std::sync::OnceLock;

use serde_json::Value;

const SPEC_JSON: &str = include_str!("../data/fly-machines-openapi.json");

pub struct Spec {
    document: Value,
}

/// What checking one body found: violations of the schema, and properties
/// the schema does not name (allowed, since no schema closes its objects).
#[derive(Debug, Default)]
pub struct Findings {
    pub violations: Vec<String>,
    pub undocumented: Vec<String>,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec {
        document: serde_json::from_str(SPEC_JSON).expect("the vendored OpenAPI document parses"),
    })
}

impl Spec {
    /// The schema of a named component, e.g. `Machine`.
    pub fn component(&self, name: &str) -> Value {
        serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The JSON schema the spec gives for `status` of `method path_template`;
    /// `None` when the spec documents no JSON body for it.
    pub fn response_schema(&self, method: &str, path_template: &str, status: u16) -> Option<Value> {
        let operation = self
            .document
            .pointer(&format!(
                "/paths/{}/{}",
                escape_pointer(path_template),
                method.to_ascii_lowercase()
            ))
            .unwrap_or_else(|| panic!("the spec has no operation {method} {path_template}"));
        operation
            .pointer(&format!(
                "/responses/{status}/content/application~1json/schema"
            ))
            .cloned()
    }

    pub fn check(&self, schema: &Value, value: &Value) -> Findings {
        let mut findings = Findings::default();
        self.validate(schema, value, "$", &mut findings);
        findings
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut current = schema;
        while let Some(reference) = current.get("$ref").and_then(Value::as_str) {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $refs are supported, not {reference}"));
            current = self
                .document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        current
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, findings: &mut Findings) {
        let schema = self.resolve(schema);
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.validate(part, value, at, findings);
            }
        }
        if value.is_null() {
            if schema.get("type").is_some() && schema.get("nullable") != Some(&Value::Bool(true)) {
                findings.violations.push(format!(
                    "{at}: null where the spec wants {}",
                    type_name(schema)
                ));
            }
            return;
        }
        if let Some(expected) = schema.get("type").and_then(Value::as_str)
            && !has_type(value, expected)
        {
            findings
                .violations
                .push(format!("{at}: expected {expected}, got {}", compact(value)));
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            findings.violations.push(format!(
                "{at}: {} is not one of {}",
                compact(value),
                compact(&Value::Array(allowed.clone()))
            ));
        }
        if let Some(number) = value.as_f64() {
            if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
                && number < minimum
            {
                findings
                    .violations
                    .push(format!("{at}: {number} < minimum {minimum}"));
            }
            if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64)
                && number > maximum
            {
                findings
                    .violations
                    .push(format!("{at}: {number} > maximum {maximum}"));
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    self.validate(item_schema, item, &format!("{at}[{index}]"), findings);
                }
            }
            return;
        }
        let Some(object) = value.as_object() else {
            return;
        };
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    findings
                        .violations
                        .push(format!("{at}: required property {name:?} is missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, member) in object {
            let member_at = format!("{at}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(member_schema) => self.validate(member_schema, member, &member_at, findings),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => findings
                        .violations
                        .push(format!("{member_at}: property not allowed")),
                    Some(extra) if extra.is_object() => {
                        self.validate(extra, member, &member_at, findings);
                    }
                    // Only objects the spec describes property by property
                    // can have undocumented members.
                    _ if properties.is_some() => findings.undocumented.push(member_at),
                    _ => {}
                },
            }
        }
    }
}

fn has_type(value: &Value, expected: &str) -> bool {
    match expected {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown schema type {other}"),
    }
}

fn type_name(schema: &Value) -> String {
    schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("a value")
        .to_string()
}

fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
