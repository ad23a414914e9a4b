//! One place per setting: `config::settings::SETTINGS` holds every setting's name, default,
//! range, unit and meaning. These tests hold everything else that names settings to it — the
//! configuration's own fields and flags, the README's table, the Helm chart's values schema and
//! the defaults its values file shows.

use std::collections::BTreeSet;
use std::path::Path;

use credit_sidecar::config::settings::{Default, SETTINGS, Setting, markdown_table};
use credit_sidecar::config::{Settings, command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Settings a file may hold but no flag or variable can express.
const FILE_ONLY: [&str; 5] = ["categories", "price_book", "journal_categories", "fail_open_categories", "webhook_urls"];

fn names() -> BTreeSet<&'static str> {
    SETTINGS.iter().map(|setting| setting.name).collect()
}

fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|setting| setting.name == name)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative)).expect("a file of the repository")
}

#[test]
fn the_table_and_the_configuration_name_the_same_settings() {
    assert_eq!(names().len(), SETTINGS.len(), "a setting is listed twice");
    let fields = match serde_json::to_value(Settings::default()).unwrap() {
        serde_json::Value::Object(fields) => fields.keys().cloned().collect::<BTreeSet<_>>(),
        other => panic!("settings serialise as an object, not {other}"),
    };
    let table: BTreeSet<String> = names().into_iter().map(str::to_owned).collect();
    assert_eq!(fields, table, "the file's keys (config::Settings) and the table differ");
    let flags: BTreeSet<String> = command()
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !matches!(id.as_str(), "config" | "help" | "version"))
        .collect();
    let expressible: BTreeSet<String> =
        table.iter().filter(|name| !FILE_ONLY.contains(&name.as_str())).cloned().collect();
    assert_eq!(flags, expressible, "every setting but the file-only ones is a flag");
    for arg in command().get_arguments().filter(|arg| names().contains(arg.get_id().as_str())) {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(help.contains("[default: "), "--{}'s help comes from the table: {help}", arg.get_id());
    }
}

#[test]
fn numbers_have_a_unit_or_a_reason_and_defaults_inside_their_range() {
    for setting in &SETTINGS {
        if let (Default::Number(default), Some((min, max))) = (setting.default, setting.range) {
            assert!((min..=max).contains(&default), "{}: default {default} outside {min}..={max}", setting.name);
        }
        if setting.range.is_some() {
            assert!(matches!(setting.default, Default::Number(_)), "{}: a range needs a number", setting.name);
        }
        assert!(!setting.meaning.is_empty(), "{} says what it means", setting.name);
    }
}

#[test]
fn the_readme_shows_the_table() {
    let readme = read("README.md");
    let table = markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's configuration table must be config::settings::markdown_table(), which is now:\n{table}"
    );
}

/// The chart's values schema (`config` and `rules`) knows only settings of the table, with the
/// table's range for every number it bounds.
#[test]
fn the_charts_schema_follows_the_table() {
    let schema: serde_json::Value = serde_json::from_str(&read("helm/credit-sidecar/values.schema.json")).unwrap();
    let mut problems = Vec::new();
    for section in ["config", "rules"] {
        let properties = schema["properties"][section]["properties"].as_object().expect("a section of settings");
        for (name, property) in properties {
            let Some(setting) = setting(name) else {
                problems.push(format!("{section}.{name}: not a setting"));
                continue;
            };
            if let Some((min, max)) = setting.range {
                let bounds = (property["minimum"].as_i64(), property["maximum"].as_i64());
                if bounds != (Some(min), Some(max)) {
                    problems
                        .push(format!("{section}.{name}: minimum/maximum {bounds:?}, the table says {min}..={max}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "values.schema.json and the settings table differ:\n{}", problems.join("\n"));
}

/// The commented defaults in the chart's values file (`# name: value`) are the table's.
#[test]
fn the_charts_values_show_the_tables_defaults() {
    let values = read("helm/credit-sidecar/values.yaml");
    let mut shown = 0;
    for line in values.lines() {
        let Some((name, rest)) = line.trim_start().strip_prefix("# ").and_then(|line| line.split_once(": ")) else {
            continue;
        };
        let Some(setting) = setting(name) else { continue };
        let value = rest.split('#').next().unwrap_or_default().trim().trim_matches('"');
        let expected = match setting.default {
            Default::Number(number) => number.to_string(),
            Default::Text(text) => text.to_owned(),
            Default::Nothing(_) => continue,
        };
        assert_eq!(value, expected, "values.yaml shows {name}: {value}; its default is {expected}");
        shown += 1;
    }
    assert!(shown >= 20, "values.yaml shows only {shown} defaults: the pattern no longer matches");
}
