//! The house rules of ARCHITECTURE.md, checked against the source: the dependency table between
//! top-level modules (read from ARCHITECTURE.md itself, so the page cannot drift from the code)
//! and the invariants stated as absences. Each check first proves on a planted violation that
//! it can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Module → the modules it may use, in the order of ARCHITECTURE.md's table.
struct Matrix {
    order: Vec<String>,
    allowed: BTreeMap<String, BTreeSet<String>>,
}

/// Reads the table under "## Dependencies": rows `| `module` | `a`, `b` |`.
fn matrix(architecture: &str) -> Matrix {
    let section = architecture.split("\n## Dependencies").nth(1).expect("ARCHITECTURE.md has '## Dependencies'");
    let section = section.split("\n## ").next().unwrap_or_default();
    let names = |cell: &str| -> Vec<String> {
        cell.split(',').map(|name| name.trim().trim_matches('`').to_owned()).filter(|name| !name.is_empty()).collect()
    };
    let mut order = Vec::new();
    let mut allowed = BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 2, "a dependency row has two cells: {line}");
        let module = names(cells[0]).pop().expect("a module name");
        order.push(module.clone());
        allowed.insert(module, names(cells[1]).into_iter().collect());
    }
    assert!(!order.is_empty(), "the dependency table has rows");
    Matrix { order, allowed }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The top-level module a file under `src/` belongs to (`None`: the crate root or the binary).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The code of a file, without comments (doc links are not dependencies), with line numbers.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.split("//").next().unwrap_or_default()))
        .filter(|(_, code)| !code.trim().is_empty())
}

/// The `crate::<module>` paths a file's code names.
fn crate_paths(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .filter(|(at, _)| !code[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, prefix)| {
            code[at + prefix.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        })
        .collect()
}

/// Every import of a top-level module outside the file's row: "file:line: a → b".
fn layering_violations(matrix: &Matrix, files: &[(String, String)]) -> Vec<String> {
    let mut violations = Vec::new();
    for (relative, text) in files {
        let Some(module) = module_of(Path::new(relative)) else { continue };
        let Some(allowed) = matrix.allowed.get(&module) else {
            violations.push(format!("{relative}: module `{module}` has no row in ARCHITECTURE.md's table"));
            continue;
        };
        for (line, code) in code_lines(text) {
            for target in crate_paths(code) {
                if target != module && matrix.allowed.contains_key(&target) && !allowed.contains(&target) {
                    violations.push(format!("{relative}:{line}: {module} → {target}"));
                }
            }
        }
    }
    violations
}

/// Lines of `files` (those `applies` selects) whose code contains one of `forbidden`.
fn absences(files: &[(String, String)], applies: impl Fn(&str) -> bool, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (relative, text) in files.iter().filter(|(relative, _)| applies(relative)) {
        for (line, code) in code_lines(text) {
            if let Some(word) = forbidden.iter().find(|word| code.contains(**word)) {
                found.push(format!("{relative}:{line}: `{word}`"));
            }
        }
    }
    found
}

fn sources() -> Vec<(String, String)> {
    let src = Path::new(ROOT).join("src");
    rust_files(&src)
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
            (relative, std::fs::read_to_string(&path).expect("a readable source file"))
        })
        .collect()
}

fn architecture() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md at the root")
}

fn planted(relative: &str, code: &str) -> Vec<(String, String)> {
    vec![(relative.to_owned(), code.to_owned())]
}

#[test]
fn dependencies_between_modules_follow_the_table() {
    let matrix = matrix(&architecture());
    // The check can fail: an upward import planted in the ledger is caught, a doc link is not.
    let caught = layering_violations(&matrix, &planted("ledger/model.rs", "use crate::server::serve;\n"));
    assert_eq!(caught, ["ledger/model.rs:1: ledger → server"]);
    assert!(layering_violations(&matrix, &planted("ledger/model.rs", "/// See [`crate::server`].\n")).is_empty());

    let files = sources();
    let modules: BTreeSet<String> = files.iter().filter_map(|(relative, _)| module_of(Path::new(relative))).collect();
    let rows: BTreeSet<String> = matrix.order.iter().cloned().collect();
    assert_eq!(modules, rows, "ARCHITECTURE.md's dependency table must have one row per top-level module");
    let violations = layering_violations(&matrix, &files);
    assert!(
        violations.is_empty(),
        "imports outside ARCHITECTURE.md's dependency table (move the code, or change the table with a reason):\n{}",
        violations.join("\n")
    );
}

#[test]
fn dependencies_point_down_the_table() {
    let matrix = matrix(&architecture());
    for (index, module) in matrix.order.iter().enumerate() {
        let below: BTreeSet<&String> = matrix.order[index + 1..].iter().collect();
        for target in &matrix.allowed[module] {
            assert!(
                below.contains(target),
                "`{module}` may use `{target}`, which is not below it in the table: the layers would form a cycle"
            );
        }
    }
}

#[test]
fn the_ledger_names_no_io() {
    const IO: [&str; 13] = [
        "tokio",
        "redis::",
        "sqlx",
        "tonic",
        "axum",
        "hyper",
        "metrics::",
        "tracing::",
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
        "std::io",
    ];
    let in_ledger = |relative: &str| relative.starts_with("ledger/");
    assert_eq!(absences(&planted("ledger/x.rs", "let f = std::fs::read(p);"), in_ledger, &IO).len(), 1);
    let found = absences(&sources(), in_ledger, &IO);
    assert!(found.is_empty(), "the ledger is pure rules, with no I/O (ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn only_the_api_names_generated_types() {
    let outside_api = |relative: &str| !relative.starts_with("api/");
    let generated = ["api::pb", "include_proto!"];
    assert_eq!(absences(&planted("health.rs", "use crate::api::pb;"), outside_api, &generated).len(), 1);
    let found = absences(&sources(), outside_api, &generated);
    assert!(found.is_empty(), "generated protobuf types outside `api` (ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn only_config_reads_the_environment() {
    let outside_config = |relative: &str| module_of(Path::new(relative)).as_deref() != Some("config");
    let environment = ["std::env", "env::var", "env::args"];
    assert_eq!(absences(&planted("server.rs", "let v = std::env::var(\"X\");"), outside_config, &environment).len(), 1);
    let found = absences(&sources(), outside_config, &environment);
    assert!(found.is_empty(), "the environment read outside `config` (ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn every_reference_to_a_repository_file_resolves() {
    // Docs and code cite files by path (`docs/rules.md#invariants`, `tests/it/crash.rs`): each must
    // exist in this repository, so a clone can follow every reference.
    let root = Path::new(ROOT);
    let mut texts: Vec<(String, String)> = ["README.md", "ARCHITECTURE.md", "docs/rules.md"]
        .iter()
        .map(|name| (name.to_string(), std::fs::read_to_string(root.join(name)).expect("a document")))
        .collect();
    texts.extend(sources().into_iter().map(|(relative, text)| (format!("src/{relative}"), text)));
    let cited = |text: &str| -> Vec<String> {
        let mut paths = Vec::new();
        for prefix in ["docs/", "src/", "tests/", "migrations/", "proto/", "examples/", "helm/"] {
            for (at, _) in text.match_indices(prefix) {
                if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '_' || c == '.') {
                    continue;
                }
                let path: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
                    .collect();
                let path = path.trim_end_matches('.').to_owned();
                if path.contains('.') && !path.contains('*') {
                    paths.push(path);
                }
            }
        }
        paths
    };
    assert_eq!(cited("see `docs/nowhere.md#x` and src/ledger/model.rs."), ["docs/nowhere.md", "src/ledger/model.rs"]);
    let mut missing = Vec::new();
    for (name, text) in &texts {
        for path in cited(text) {
            // A path relative to docs/ (docs/rules.md links to ../ARCHITECTURE.md) or to the root.
            if !root.join(&path).exists() {
                missing.push(format!("{name}: {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "references to files this repository does not have:\n{}", missing.join("\n"));
}
