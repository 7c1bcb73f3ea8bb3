//! The OpenAPI document (`sidecar/openapi.json`) lists exactly the routes the sidecar serves.
//!
//! The routes are read from the sources: every `.route("<path>", <method>(..)...)` call in
//! `sidecar/src`. A route added to the code but not to the document fails this test, and so
//! does a documented route that no code serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "options", "head"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read sidecar/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of the call starting at `open` (an opening parenthesis), up to its match.
fn call_text(text: &str, open: usize) -> &str {
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..open + i + 1];
                }
            }
            _ => {}
        }
    }
    &text[open..]
}

/// The methods named as method-router calls in `expr`: `get(`, `.post(`, ...
fn methods_in(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    for method in METHODS {
        let pattern = format!("{method}(");
        let mut from = 0;
        while let Some(at) = expr[from..].find(&pattern) {
            let at = from + at;
            let before = at.checked_sub(1).map(|i| bytes[i]);
            // A whole word, not `::post(` of a module path or the tail of another name.
            let word_start =
                !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
            if word_start {
                found.push(method.to_string());
            }
            from = at + pattern.len();
        }
    }
    found
}

fn code_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let mut from = 0;
        while let Some(at) = text[from..].find(".route(") {
            let open = from + at + ".route".len();
            let call = call_text(&text, open);
            from = open + call.len();
            // The path is the first argument, a string literal (rustfmt may break the line).
            let literal = call[1..]
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split_once('"'));
            let Some((path, after)) = literal else {
                panic!(
                    "{}: a route whose path is not a string literal: {call}; write the path \
                     out so that this test can check it against the document",
                    file.display()
                );
            };
            let methods = methods_in(after);
            assert!(
                !methods.is_empty(),
                "{}: cannot tell the methods of route {path}",
                file.display()
            );
            for method in methods {
                routes.insert((method, path.to_owned()));
            }
        }
    }
    routes
}

fn documented_routes() -> BTreeSet<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read openapi.json"))
            .expect("openapi.json is JSON");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.as_str()) {
                routes.insert((method.clone(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_code() {
    let code = code_routes();
    let documented = documented_routes();
    assert!(
        code.contains(&("post".into(), "/join/{channel}".into())),
        "{code:?}"
    );
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "routes in the code but not in sidecar/openapi.json: {undocumented:?}\n\
         routes in sidecar/openapi.json but not in the code: {unserved:?}"
    );
}

#[test]
fn every_operation_documents_its_responses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            for (status, response) in responses.unwrap() {
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    let mut from = 0;
    while let Some(at) = text[from..].find("#/components/schemas/") {
        let start = from + at + "#/components/schemas/".len();
        let end = start + text[start..].find('"').unwrap();
        assert!(
            schemas.contains_key(&text[start..end]),
            "missing schema {}",
            &text[start..end]
        );
        from = end;
    }
}
