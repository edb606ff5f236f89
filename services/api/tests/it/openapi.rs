//! The OpenAPI document against the routes `app::routes` mounts: every mounted (method, path) is
//! documented and every documented one is mounted, so a new undocumented route fails here.
//!
//! The mounted routes are read from the application itself, not from a list: actix's resource
//! map (every resource pattern, scopes joined) gives the paths, and one request per method and
//! path (no application state, so a mounted handler fails with 500 or 4xx but never 404/405)
//! tells which methods each path serves.

use std::collections::BTreeSet;

use actix_web::{App, HttpRequest, HttpResponse, test, web};

/// Rust's `{:?}` output, parsed just enough to walk actix's `ResourceMap`.
#[allow(dead_code)]
#[derive(Debug)]
enum D {
    Str(String),
    Atom(String),
    List(Vec<D>),
    Struct(String, Vec<(String, D)>),
    Tuple(String, Vec<D>),
    Map(Vec<(D, D)>),
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn seq(&mut self, close: u8) -> Vec<D> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return out;
            }
            out.push(self.value());
            self.eat(b',');
        }
    }
    fn value(&mut self) -> D {
        self.ws();
        match self.s[self.i] {
            b'"' => {
                let start = self.i;
                self.i += 1;
                while self.s[self.i] != b'"' {
                    self.i += if self.s[self.i] == b'\\' { 2 } else { 1 };
                }
                self.i += 1;
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                D::Str(serde_json::from_str(text).unwrap_or_else(|_| text.to_owned()))
            }
            b'[' => {
                self.i += 1;
                D::List(self.seq(b']'))
            }
            b'(' => {
                self.i += 1;
                D::Tuple(String::new(), self.seq(b')'))
            }
            b'{' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return D::Map(out);
                    }
                    let k = self.value();
                    self.eat(b':');
                    out.push((k, self.value()));
                    self.eat(b',');
                }
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric()
                        || b"_.-<>".contains(&self.s[self.i]))
                {
                    self.i += 1;
                }
                let name = std::str::from_utf8(&self.s[start..self.i])
                    .unwrap()
                    .to_owned();
                assert!(!name.is_empty(), "unparsed Debug text at {}", self.i);
                self.ws();
                if self.eat(b'{') {
                    let mut fields = Vec::new();
                    loop {
                        if self.eat(b'}') {
                            return D::Struct(name, fields);
                        }
                        let D::Atom(field) = self.value() else {
                            panic!("field name expected at {}", self.i)
                        };
                        self.eat(b':');
                        fields.push((field, self.value()));
                        self.eat(b',');
                    }
                } else if self.eat(b'(') {
                    D::Tuple(name, self.seq(b')'))
                } else {
                    D::Atom(name)
                }
            }
        }
    }
}

fn field<'a>(d: &'a D, name: &str) -> &'a D {
    match d {
        D::Struct(_, fields) => &fields.iter().find(|(f, _)| f == name).unwrap().1,
        other => panic!("no field {name} in {other:?}"),
    }
}

/// The patterns of a ResourceDef (`Single("/x")` or `List(["/x", "/y"])`).
fn patterns(def: &D) -> Vec<String> {
    match field(def, "patterns") {
        D::Tuple(kind, items) if kind == "Single" => match &items[0] {
            D::Str(s) => vec![s.clone()],
            other => panic!("{other:?}"),
        },
        D::Tuple(kind, items) if kind == "List" => match &items[0] {
            D::List(l) => l
                .iter()
                .map(|p| match p {
                    D::Str(s) => s.clone(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        },
        other => panic!("unexpected patterns {other:?}"),
    }
}

/// Full paths of the leaf resources under `node` (a `ResourceMap`).
fn leaves(node: &D, prefix: &str, out: &mut Vec<String>) {
    let def = field(node, "pattern");
    let here: Vec<String> = patterns(def)
        .into_iter()
        .map(|p| format!("{prefix}{p}"))
        .collect();
    match field(node, "nodes") {
        D::Tuple(some, children) if some == "Some" => {
            let D::List(children) = &children[0] else {
                panic!("nodes")
            };
            for p in &here {
                for c in children {
                    leaves(c, p, out);
                }
            }
        }
        D::Atom(none) if none == "None" => out.extend(here),
        other => panic!("unexpected nodes {other:?}"),
    }
}

/// `{anything}` → `{}`.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    out.push_str("{}");
                }
            }
            '}' => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{market}", "EMBED-MINILM-L6")
        .replace("{custom_id}", "tile-0")
}

const PROBE: &str = "/__resource_map";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[actix_web::test]
async fn every_mounted_route_is_documented() {
    let service = test::init_service(App::new().configure(gridbook_api::app::routes).service(
        web::resource(PROBE).route(web::get().to(|req: HttpRequest| async move {
            HttpResponse::Ok().body(format!("{:?}", req.resource_map()))
        })),
    ))
    .await;
    let req = test::TestRequest::get().uri(PROBE).to_request();
    let text = String::from_utf8(test::call_and_read_body(&service, req).await.to_vec()).unwrap();
    let tree = P {
        s: text.as_bytes(),
        i: 0,
    }
    .value();
    let mut paths = Vec::new();
    leaves(&tree, "", &mut paths);
    paths.retain(|p| p != PROBE);
    assert!(
        paths.len() >= 30,
        "only {} resources found: {paths:?}",
        paths.len()
    );

    let mut mounted = BTreeSet::new();
    for path in &paths {
        let mut any = false;
        for m in METHODS {
            let req = test::TestRequest::default()
                .method(actix_web::http::Method::from_bytes(m.as_bytes()).unwrap())
                .uri(&concrete(path))
                .to_request();
            let status = test::call_service(&service, req).await.status().as_u16();
            if status != 404 && status != 405 {
                mounted.insert((m.to_owned(), shape(path)));
                any = true;
            }
        }
        assert!(any, "{path} is mounted but answers no method");
    }

    let doc = serde_json::to_value(gridbook_api::openapi::document()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m.to_ascii_lowercase()).is_some() {
                documented.insert((m.to_owned(), shape(path)));
            }
        }
    }
    let undocumented: Vec<_> = mounted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "mounted in app.rs but missing from /openapi.json (add a #[utoipa::path] and list it in the module's ApiDoc): {undocumented:?}"
    );
    let stale: Vec<_> = documented.difference(&mounted).collect();
    assert!(stale.is_empty(), "documented but not mounted: {stale:?}");
    // The walk sees the routes one expects.
    for must in [
        ("POST", "/v1/files"),
        ("GET", "/v1/markets/{}/ws"),
        ("DELETE", "/v1/keys/{}"),
        ("GET", "/openapi.json"),
    ] {
        assert!(
            mounted.contains(&(must.0.to_owned(), must.1.to_owned())),
            "{must:?} not found by the walk"
        );
    }
}
