//! A proptest round on the loader: YAML-ish text, built from the format's own keys and
//! values and then damaged, must never panic, and every error must say where it is.

use proptest::prelude::*;

use super::*;

/// Keys of both formats, near misses, and junk.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "kcse_rate_limits",
            "endpoints",
            "name",
            "shortname",
            "shorname",
            "endpoint",
            "overall_limit",
            "unit",
            "unit_multiplier",
            "algorithm",
            "burst",
            "soft",
            "value",
            "step",
            "shadow_mode",
            "uri_prefixes",
            "url_prefixes",
            "prefix",
            "anon_value",
            "invokers",
            "client",
            "domain",
            "descriptors",
            "key",
            "rate_limit",
            "requests_per_unit",
            "unlimited",
            "replaces",
            "detailed_metric",
            "share_threshold",
            "envoyVersion",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
        Just("? complex".to_owned()),
        Just("\"quoted key\"".to_owned()),
    ]
}

/// Scalars a file could hold, and some it should not.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("4294967296".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        prop::sample::select(vec![
            "minute",
            "second",
            "hour",
            "day",
            "week",
            "month",
            "year",
            "minutes",
            "fortnight",
            "sliding_window",
            "token_bucket",
            "fixed_window",
            "true",
            "false",
            "null",
            "~",
            "/",
            "/auth",
            "/auth/admin/realms/API-TEST/",
            "/a%2Fb",
            "/a;x",
            "a",
            "",
            "1.5",
            "1e999",
            ".nan",
            "0x1F",
            "007",
            "*alias",
            "&anchor x",
            "!!binary AAAA",
            "[1, 2",
            "{a: 1",
            "'unterminated",
            "\"esc\\q\"",
            "|",
            ">",
            "- x",
            "\t",
            "é🙂",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,12}",
    ]
}

/// A YAML-ish value tree, rendered as text at an indentation.
#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    Map(Vec<(String, Tree)>),
    List(Vec<Tree>),
    Flow(String),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        scalar().prop_map(Tree::Scalar),
        scalar().prop_map(|s| Tree::Flow(format!("{{ value: {s}, unit: minute }}"))),
        scalar().prop_map(|s| Tree::Flow(format!("[{s}]"))),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((key(), inner.clone()), 0..6).prop_map(Tree::Map),
            prop::collection::vec(inner, 0..4).prop_map(Tree::List),
        ]
    })
}

fn render(t: &Tree, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match t {
        Tree::Scalar(s) | Tree::Flow(s) => {
            out.push(' ');
            out.push_str(s);
            out.push('\n');
        }
        Tree::Map(entries) => {
            out.push('\n');
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(k);
                out.push(':');
                render(v, indent + 2, out);
            }
        }
        Tree::List(items) => {
            out.push('\n');
            for v in items {
                out.push_str(&pad);
                out.push('-');
                render(v, indent + 2, out);
            }
        }
    }
}

/// A whole file: usually under `kcse_rate_limits`, sometimes another top level.
fn file() -> impl Strategy<Value = String> {
    (tree(), prop::bool::weighted(0.8)).prop_map(|(t, ours)| {
        let mut out = String::new();
        if ours {
            out.push_str("kcse_rate_limits:\n  endpoints:");
            render(&Tree::List(vec![t]), 4, &mut out);
        } else {
            out.push_str("root:");
            render(&t, 2, &mut out);
        }
        out
    })
}

/// An endpoint-format file close to a valid one: every endpoint has a name and a
/// shortname, fields take plausible values, so the checks past parsing get exercised.
fn endpoint_file() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec!["minute", "second", "hour", "day", "Minute", "minutes"]);
    let number = prop_oneof![
        Just(-1i64),
        Just(0),
        1i64..20,
        Just(4_294_967_295),
        Just(4_294_967_296)
    ];
    let algorithm = prop::sample::select(vec![
        "fixed_window",
        "sliding_window",
        "token_bucket",
        "leaky",
    ]);
    // Mostly a value of the field's own type; now and then one of another.
    let extra = prop_oneof![
        4 => (
            prop::sample::select(vec!["unit"]),
            unit.clone().prop_map(str::to_owned)
        ),
        4 => (
            prop::sample::select(vec!["value", "anon_value", "unit_multiplier", "burst"]),
            number.clone().prop_map(|n| n.to_string())
        ),
        4 => (
            prop::sample::select(vec!["algorithm"]),
            algorithm.clone().prop_map(str::to_owned)
        ),
        1 => (
            prop::sample::select(vec!["unit", "value", "algorithm", "burst"]),
            scalar()
        ),
    ];
    let invoker = (
        prop::sample::select(vec!["a", "b", "test_client", "007"]),
        prop::collection::vec(extra.clone(), 0..3),
    );
    let prefix = (
        prop::sample::select(vec![
            "/", "/auth", "/auth/", "/a/b", "/a//b", "/a%2Fb", "/a;x/b", "/%41", "x", "/a/../b",
        ]),
        prop::collection::vec(extra.clone(), 0..4),
        prop::collection::vec(invoker, 0..3),
    );
    let endpoint = (
        prop::sample::select(vec!["e1", "e2", "e3"]),
        prop::collection::vec(extra, 0..3),
        prop::option::of((0i64..5, -1i64..3)),
        prop::collection::vec(prefix, 0..4),
    );
    (
        prop::option::of(prop::sample::select(vec!["kcse", "other", "kcse", "\"\""])),
        prop::collection::vec(endpoint, 1..4),
    )
        .prop_map(|(domain, endpoints)| {
            let mut out = String::from("kcse_rate_limits:\n");
            if let Some(d) = domain {
                out.push_str(&format!("  domain: {d}\n"));
            }
            out.push_str("  endpoints:\n");
            for (short, fields, soft, prefixes) in endpoints {
                out.push_str(&format!("    - name: {short}\n      shortname: {short}\n"));
                let fields = fields
                    .into_iter()
                    .filter(|(k, _)| *k != "anon_value")
                    .map(|(k, v)| (if k == "value" { "overall_limit" } else { k }, v));
                for (k, v) in first_of_each(fields) {
                    out.push_str(&format!("      {k}: {v}\n"));
                }
                if let Some((value, step)) = soft {
                    out.push_str(&format!("      soft: {{ value: {value}, step: {step} }}\n"));
                }
                if !prefixes.is_empty() {
                    out.push_str("      uri_prefixes:\n");
                }
                for (p, fields, invokers) in prefixes {
                    out.push_str(&format!("        - prefix: \"{p}\"\n"));
                    for (k, v) in first_of_each(fields) {
                        out.push_str(&format!("          {k}: {v}\n"));
                    }
                    if !invokers.is_empty() {
                        out.push_str("          invokers:\n");
                    }
                    for (c, fields) in invokers {
                        out.push_str(&format!("            - client: \"{c}\"\n"));
                        for (k, v) in first_of_each(fields) {
                            out.push_str(&format!("              {k}: {v}\n"));
                        }
                    }
                }
            }
            out
        })
}

/// Keeps the first of each key: a repeated key is a YAML error the other generators already
/// produce plenty of.
fn first_of_each<'a>(
    fields: impl IntoIterator<Item = (&'a str, String)>,
) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for (k, v) in fields {
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k, v));
        }
    }
    out
}

/// The file, then damaged: a byte range cut out, text inserted, or a tab for spaces.
fn damaged() -> impl Strategy<Value = String> {
    (
        prop_oneof![file(), endpoint_file()],
        any::<prop::sample::Index>(),
        0usize..8,
        prop::sample::select(vec![
            "", ":", "-", "\t", "\n", "  ", "{", "[", "&a ", "*a", "#",
        ]),
    )
        .prop_map(|(text, at, cut, insert)| {
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            let end = (i + cut).min(chars.len());
            chars.splice(i..end, insert.chars());
            chars.into_iter().collect()
        })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match load_sources(&[Source {
        name: "fuzz.yaml".into(),
        text: text.to_owned(),
    }]) {
        Ok(loaded) => {
            // A loaded configuration compiles: the loader's checks are the compiler's
            // assumptions.
            let _ = crate::descriptor::RuleSet::compile(&loaded.config);
        }
        Err(e) => {
            let errors: Vec<&Diagnostic> = e
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            prop_assert!(!errors.is_empty(), "rejected without an error: {e}");
            for d in errors {
                prop_assert_eq!(&d.file, "fuzz.yaml");
                // Only a file with nothing in it has no position to point at.
                prop_assert!(
                    d.pos.is_some() || d.message == "file is empty",
                    "error without a position: {} in\n{}",
                    d,
                    text
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_yamlish_file_loads_or_says_where_it_is_wrong(text in prop_oneof![file(), endpoint_file(), damaged()]) {
        check(&text)?;
    }

    #[test]
    fn any_bytes_as_a_file_load_or_say_where_they_are_wrong(text in "(?s).{0,200}") {
        check(&text)?;
    }
}
